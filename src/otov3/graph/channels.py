"""Following a removed Concat operand's channel interval downstream (spec §3.2 rule 2/4, §6.1 pass 2)."""

from __future__ import annotations

from dataclasses import dataclass

from otov3.graph.types import OUT, ChannelRule, JointRule, TraceGraph


@dataclass(frozen=True)
class ChannelPath:
    """Where a Concat's channels go before they meet stems.

    Attributes:
        passes: vertices the interval passes through (per-channel ops, flattens, nested concats), in BFS order.
        consumers: stems whose input channels absorb the interval.
        blocked: why the interval cannot be followed, or None when every path ends in a stem.
    """

    passes: tuple[str, ...]
    consumers: tuple[str, ...]
    blocked: str | None


def follow_channels(trace: TraceGraph, concat: str) -> ChannelPath:
    """Walk forward from `concat` through channel-preserving ops until every path reaches a stem."""
    passes: list[str] = []
    consumers: list[str] = []
    seen: set[str] = {concat}
    frontier = list(trace.successors(concat))
    while frontier:
        v = frontier.pop(0)
        if v in seen:
            continue
        seen.add(v)
        if v == OUT:
            return ChannelPath(tuple(passes), tuple(consumers), f"the channels of '{concat}' reach the model output")
        vert = trace.vertices[v]
        rule = vert.traits.channel
        if rule is ChannelRule.CONSUME:
            consumers.append(v)
            continue
        nested_cat = vert.traits.joint is JointRule.CAT
        if rule in (ChannelRule.PASS, ChannelRule.FLATTEN) or nested_cat:
            if not (vert.traits.zero_preserving or vert.traits.per_channel_params):
                return ChannelPath(
                    tuple(passes), tuple(consumers),
                    f"the channels of '{concat}' pass '{v}' ({vert.op}), which does not map zero to zero",
                )
            if not nested_cat and trace.data_in_degree(v) > 1:
                return ChannelPath(
                    tuple(passes), tuple(consumers),
                    f"the channels of '{concat}' meet '{v}' ({vert.op}), which mixes several inputs",
                )
            passes.append(v)
            frontier.extend(trace.successors(v))
            continue
        return ChannelPath(
            tuple(passes), tuple(consumers),
            f"the channels of '{concat}' meet '{v}' ({vert.op}) before any conv/linear can absorb them",
        )
    return ChannelPath(tuple(passes), tuple(consumers), None)


def operand_channels(trace: TraceGraph, concat: str, operand: str) -> dict[str, list[tuple[int, int]]]:
    """Channel intervals that `operand`'s block of `concat` occupies at every vertex downstream.

    Nested concats shift the block by the widths of the operands before it; flattens scale it by the spatial
    factor. Only vertices on the `follow_channels` path are included.
    """
    path = follow_channels(trace, concat)
    on_path = set(path.passes)
    at: dict[str, list[tuple[int, int]]] = {concat: _offsets(trace, concat, operand, [(0, None)])}
    for name in trace.vertices:  # topological order
        if name not in on_path:
            continue
        v = trace.vertices[name]
        sources = [i for i in dict.fromkeys(v.inputs) if i in at]
        if not sources:
            continue
        if v.traits.joint is JointRule.CAT:
            found: list[tuple[int, int]] = []
            for src in sources:
                found.extend(_offsets(trace, name, src, at[src]))
            at[name] = found
        elif v.traits.channel is ChannelRule.FLATTEN:
            width = v.in_shapes[0][1] if v.in_shapes and v.in_shapes[0] else 1
            factor = v.out_shape[1] // width if v.out_shape and width else 1
            at[name] = [(a * factor, b * factor) for a, b in at[sources[0]]]
        else:
            at[name] = list(at[sources[0]])
    return at


def _offsets(trace: TraceGraph, cat: str, operand: str, inner: list[tuple[int, int | None]]) -> list[tuple[int, int]]:
    """Place intervals of `operand` (None as stop = the operand's full width) into the output of `cat`."""
    vert = trace.vertices[cat]
    out, offset = [], 0
    for inp, shape in zip(vert.inputs, vert.in_shapes, strict=True):
        width = shape[1] if shape is not None and len(shape) > 1 else 0
        if inp == operand:
            out.extend((offset + a, offset + (width if b is None else b)) for a, b in inner)
        offset += width
    return out


def cat_cut_blocked(trace: TraceGraph, concat: str, dropped: set[str] | frozenset[str]) -> str | None:
    """Why the operands `dropped` of `concat` cannot be cut out downstream, or None when they can.

    When they cannot, the sub-network feeds `concat` a zero block instead (exact, since the super-network's
    block was zero too): the branch's operations are still gone, only the downstream channels stay.
    """
    path = follow_channels(trace, concat)
    if path.blocked:
        return path.blocked
    for v in (*path.passes, *path.consumers):
        vert = trace.vertices[v]
        cuts = vert.traits.per_channel_params or vert.traits.channel is ChannelRule.CONSUME
        if vert.shared and cuts:
            return f"the channels of '{concat}' reach '{v}' ({vert.op}), whose weights are also used elsewhere"
    blocks = {v: trace.vertices[v].traits.channel_block for v in path.passes}
    if any(b > 1 for b in blocks.values()):
        for operand in dropped:
            spans = operand_channels(trace, concat, operand)
            for v, block in blocks.items():
                if block > 1 and any(a % block or b % block for a, b in spans.get(v, [])):
                    return f"the channels of '{concat}' cover part of a group of '{v}' ({trace.vertices[v].op})"
    return None
