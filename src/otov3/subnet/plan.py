"""Decide what the sub-network keeps (spec §6.1), on plain data only; `surgery` carries it out."""

from __future__ import annotations

from dataclasses import dataclass

from otov3.graph.channels import cat_cut_blocked
from otov3.graph.segments import DependencyGraph
from otov3.graph.types import IN, OUT, ChannelRule, JointRule, TraceGraph


@dataclass(frozen=True)
class SubnetPlan:
    """The edits that turn the super-network into the sub-network.

    Attributes:
        zero: vertices whose output is exactly zero (zero segments and what only they feed); all deleted.
        live: vertices that still contribute to an output; everything else is dead code.
        drop: joint -> zero inputs dropped from it (Add/Sub/Concat stay exact without them).
        zero_fill: vertex -> zero inputs replaced by a constant zero tensor (starved vertices, spec §6.1).
        out_keep: vertex -> kept channel indices of its output, where a Concat lost operands (pass 2).
        in_keep: stem -> kept input indices (channels, or flattened features) it must keep.
    """

    zero: frozenset[str]
    live: frozenset[str]
    drop: dict[str, frozenset[str]]
    zero_fill: dict[str, frozenset[str]]
    out_keep: dict[str, tuple[int, ...]]
    in_keep: dict[str, tuple[int, ...]]


def _zero_vertices(trace: TraceGraph, zero_vertices: set[str]) -> set[str]:
    """Propagate exact zeros forward through zero-preserving ops fed only by zeros."""
    zero = set(zero_vertices)
    for name, v in trace.vertices.items():  # topological order
        if name in zero or not v.inputs:
            continue
        if v.traits.zero_preserving and all(i in zero for i in v.inputs):
            zero.add(name)
        elif any(i in zero for i in v.absorbing):  # a product with a zero operand (spec §2.2)
            zero.add(name)
    return zero


def _live(trace: TraceGraph, zero: set[str]) -> set[str]:
    live: set[str] = set()
    stack = [p for p in trace.predecessors(OUT) if p != IN and p not in zero]
    live.update(stack)
    while stack:
        u = stack.pop()
        for p in trace.predecessors(u):
            if p != IN and p not in zero and p not in live:
                live.add(p)
                stack.append(p)
    return live


def _can_drop(trace: TraceGraph, name: str, zero_inputs: set[str]) -> bool:
    v = trace.vertices[name]
    rule = v.traits.joint
    remaining = [(i, s) for i, s in zip(v.inputs, v.in_shapes, strict=True) if i not in zero_inputs]
    if rule is None or not remaining:
        return False
    if rule is JointRule.ADD:
        return all(s == v.out_shape for _, s in remaining)
    if rule is JointRule.SUB:
        return v.inputs[0] not in zero_inputs
    return cat_cut_blocked(trace, name, zero_inputs) is None


def _width(shape: tuple[int, ...] | None) -> int:
    return shape[1] if shape is not None and len(shape) > 1 else 0


def plan_subnet(trace: TraceGraph, dep: DependencyGraph, zero_segments: set[int]) -> SubnetPlan:
    """Plan the sub-network for the GeZIG segments `zero_segments`, whose outputs are exactly zero."""
    seeds = {v for s in zero_segments for v in dep.segments[s].vertices}
    zero = _zero_vertices(trace, seeds)
    live = _live(trace, zero)

    drop: dict[str, frozenset[str]] = {}
    zero_fill: dict[str, frozenset[str]] = {}
    for name in live:
        zin = {i for i in trace.vertices[name].inputs if i in zero}
        if not zin:
            continue
        if _can_drop(trace, name, zin):
            drop[name] = frozenset(zin)
        else:
            zero_fill[name] = frozenset(zin)

    out_keep: dict[str, tuple[int, ...]] = {}
    in_keep: dict[str, tuple[int, ...]] = {}
    for name, v in trace.vertices.items():  # topological: producers first
        if name not in live:
            continue
        reduced_inputs = [i for i in v.inputs if i in out_keep]
        if v.traits.joint is JointRule.CAT and (name in drop or reduced_inputs):
            keep, offset = [], 0
            for i, shape in zip(v.inputs, v.in_shapes, strict=True):
                width = _width(shape)
                if i not in drop.get(name, ()):
                    keep.extend(offset + j for j in out_keep.get(i, range(width)))
                offset += width
            out_keep[name] = tuple(keep)
        elif reduced_inputs:
            src = out_keep[reduced_inputs[0]]
            if v.traits.channel is ChannelRule.PASS:
                out_keep[name] = src
            elif v.traits.channel is ChannelRule.FLATTEN:
                full = _width(v.in_shapes[0])
                factor = (v.out_shape[1] // full) if full else 1
                out_keep[name] = tuple(k * factor + j for k in src for j in range(factor))
            elif v.traits.channel is ChannelRule.CONSUME:
                in_keep[name] = src
    return SubnetPlan(frozenset(zero), frozenset(live), drop, zero_fill, out_keep, in_keep)
