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
