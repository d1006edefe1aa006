"""Both modes in one sub-network: remove the zero GeZIGs, then slim what stays by its zero channel groups.

Construction runs the two exact surgeries one after the other. Erasing first gives a network without the removed
operations (`subnet.plan` / `subnet.surgery`); a fresh channel analysis of that network (spec §4) then finds its
node groups, and every channel group whose scalars are all zero is sliced away (`prune_space`). Removing
operations only drops channel ties, so each zero channel group the optimizer produced in the super-network is
zero in the erased network too; re-analysing instead of translating names keeps the second surgery exactly the
pruning mode's, with its checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx

from otov3.errors import ConstructionError
from otov3.graph.validity import valid_basic, valid_strict
from otov3.search_space import SearchSpace, build_search_space
from otov3.space import Group


@dataclass(frozen=True)
class BothResult:
    """The two stages of a both-modes construction: after removal, and the final (slimmed) network."""

    erased: torch.fx.GraphModule
    subnet: torch.fx.GraphModule
    slimmed_groups: int


def is_valid_both(space: SearchSpace, channels: Sequence[Group], chosen: Sequence[Group], *, strict: bool) -> bool:
    """The GeZIGs pass the hierarchy check (spec §3.3) and no node group loses every channel group that lies
    outside the removed GeZIGs (spec §4: keep one)."""
    gezigs = [g for g in chosen if g.is_gezig]
    segments = {s for g in gezigs for s in g.segments}
    if not (valid_strict if strict else valid_basic)(space.dependency, segments):
        return False
    removed = {id(s.param) for g in gezigs for s in g.slices}
    survives = lambda g: any(id(s.param) not in removed for s in g.slices)  # noqa: E731
    size: dict[int, int] = defaultdict(int)
    for g in channels:
        if survives(g):
            size[g.node_group] += 1
    used: dict[int, int] = defaultdict(int)
    for g in chosen:
        if not g.is_gezig and survives(g):
            used[g.node_group] += 1
    return all(used[n] < size[n] for n in used)


def build_both_subnet(space: SearchSpace, zero: Sequence[Group], *, group_divisible: int) -> BothResult:
    """Erase the zero GeZIGs of `zero`, then slim the result by every all-zero channel group it has."""
    from otov3.prune_space import build_channel_subnet, build_prune_space
    from otov3.subnet.plan import plan_subnet
    from otov3.subnet.surgery import apply_plan

    segments = {s for g in zero if g.is_gezig for s in g.segments}
    if not valid_basic(space.dependency, segments):
        raise ConstructionError(
            "The zero GeZIGs disconnect the network (no path from input to output would remain): "
            + ", ".join(g.name for g in zero if g.is_gezig))
    erased = apply_plan(space.captured, space.trace, plan_subnet(space.trace, space.dependency, segments))
    cap = space.captured
    example = dict(cap.kwargs) if cap.kwargs else tuple(cap.args)
    erased_space = build_search_space(erased, example, capture="auto")
    prune = build_prune_space(erased_space, erased, group_divisible=group_divisible)
    slim = _keep_one(prune, [g for g in prune.groups if g.is_zero()])
    if not slim:
        return BothResult(erased, erased, 0)
    return BothResult(erased, build_channel_subnet(erased_space, prune, slim), len(slim))


def _keep_one(prune, zero: list[Group]) -> list[Group]:
    """Drops one zero channel group of every node group that would lose all of them (keeping a zero channel is
    exact, emptying a node group is not possible)."""
    sizes = {g.id: g.num_groups for g in prune.node_groups}
    by_node: dict[int, list[Group]] = defaultdict(list)
    for g in zero:
        by_node[g.node_group].append(g)
    out = []
    for node, found in by_node.items():
        out.extend(found[1:] if len(found) >= sizes[node] else found)
    return out


def build_both_without(space: SearchSpace, groups: Sequence[Group], *, group_divisible: int) -> torch.fx.GraphModule:
    """The both-modes sub-network without `groups` before they are zero (size prediction for budgets): their
    scalars are zeroed in place for the build and restored bit for bit afterwards, so that the slimming stage
    sees exactly the channels the optimizer will zero."""
    saved = [(s, s.view().clone()) for g in groups for s in g.slices]
    try:
        with torch.no_grad():
            for s, _ in saved:
                s.view().zero_()
        return build_both_subnet(space, groups, group_divisible=group_divisible).subnet
    finally:
        with torch.no_grad():
            for s, value in reversed(saved):
                s.view().copy_(value)
