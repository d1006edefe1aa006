"""Pruning-mode construction plan (spec §4.4), on plain data only; `prune_surgery` carries it out.

Pass 1 keeps the surviving rows of every stem and the surviving entries of every per-channel tensor (auxiliary
blocks after concats included); pass 2 keeps the matching input columns of every stem that reads them (expanded
by flattens). Both read the positions straight from the tensors' layouts, so offsets and factors agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from otov3.graph.zig import ZigAnalysis
from otov3.graph.zig_layout import Layout


@dataclass(frozen=True)
class ChannelPlan:
    """The edits that slim the super-network.

    Attributes:
        cuts: (tensor path, dim) -> indices kept along that dim.
        widths: vertex -> (channel axis, old width, new width) of its output, where it changes.
        kept: node-group id -> kept channels.
    """

    cuts: dict[tuple[str, int], tuple[int, ...]]
    widths: dict[str, tuple[int, int, int]]
    kept: dict[int, tuple[int, ...]]


def kept_units(num_units: int, unit: int, removed: Iterable[int], divisible: int = 1) -> list[int]:
    """Units left after removing `removed`; with `divisible` q, zero units come back until the kept channel count
    is a multiple of q (or everything), lowest indices first (spec §4.2 group_divisible)."""
    gone = set(removed)
    keep = [u for u in range(num_units) if u not in gone]
    if divisible > 1:
        target = min(num_units * unit, math.ceil(len(keep) * unit / divisible) * divisible)
        for u in sorted(gone):
            if len(keep) * unit >= target:
                break
            keep.append(u)
    return sorted(keep)


def plan_channels(analysis: ZigAnalysis, removed: Mapping[int, Iterable[int]], *, divisible: int = 1
                  ) -> ChannelPlan:
    """Plan the sub-network without the channel groups `removed` (node-group id -> unit indices).

    Raises:
        ValueError: a node group would lose every channel, or one tensor would be cut two different ways.
    """
    flow, sp = analysis.flow, analysis.flow.spaces
    by_root: dict[int, tuple[int, list[int]]] = {}
    kept: dict[int, tuple[int, ...]] = {}
    for g in analysis.groups:
        gone = set(removed.get(g.id, ()))
        if not gone:
            continue
        units = kept_units(g.num_groups, g.unit, gone, divisible)
        if not units:
            raise ValueError(f"node group {g.id} would lose all of its {g.channels} channels; keep at least one")
        by_root[g.space] = (g.unit, units)
        kept[g.id] = tuple(u * g.unit + k for u in units for k in range(g.unit))

    def positions(lay: Layout) -> tuple[int, ...]:
        out: list[int] = []
        for s in lay.segs:
            root = sp.find(s.space) if s.space is not None else None
            if root not in by_root:
                out.extend(range(s.off, s.off + s.width))
                continue
            unit, units = by_root[root]
            per = unit * s.scale
            for u in units:
                start = s.off + u * per
                out.extend(range(int(start), int(start + per)))
        return tuple(out)

    cuts: dict[tuple[str, int], tuple[int, ...]] = {}

    def cut(tensors, lay: Layout) -> None:
        keep = positions(lay)
        if len(keep) == lay.width:
            return
        for path, dim in tensors:
            if cuts.setdefault((path, dim), keep) != keep:
                raise ValueError(f"'{path}' would need two different cuts along dim {dim}")

    ops = analysis.ops
    for v, _ in flow.stems:
        cut(ops[v].out_rows, flow.layouts[v])
    for v, lay in flow.carried:
        cut(ops[v].per_channel, lay)
    for v, lay in flow.consumers:
        cut(ops[v].in_cols, lay)
    widths = {}
    for v, lay in flow.layouts.items():
        if lay is not None:
            new = len(positions(lay))
            if new != lay.width:
                widths[v] = (lay.axis, lay.width, new)
    return ChannelPlan(cuts, widths, kept)
