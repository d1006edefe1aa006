"""Validity of a set of removed segments (spec §3.3): the hierarchy check of H2SPG."""

from __future__ import annotations

from collections.abc import Iterable

from otov3.graph.segments import VIRTUAL, DependencyGraph


def _reachable_from_in(dep: DependencyGraph, removed: frozenset[int]) -> set[int]:
    seen: set[int] = set()
    stack = [s.id for s in dep.segments if VIRTUAL in dep.pred[s.id] and s.id not in removed]
    seen.update(stack)
    while stack:
        u = stack.pop()
        for w in dep.succ[u]:
            if w != VIRTUAL and w not in removed and w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def _reaching_out(dep: DependencyGraph, removed: frozenset[int]) -> set[int]:
    seen: set[int] = {o for o in dep.outputs if o not in removed}
    stack = list(seen)
    while stack:
        u = stack.pop()
        for w in dep.pred[u]:
            if w != VIRTUAL and w not in removed and w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def valid_basic(dep: DependencyGraph, removed: Iterable[int]) -> bool:
    """Every output segment is still reachable from `IN` once `removed` (segment ids) is gone.

    Monotone: if a set is invalid, so is every superset.
    """
    removed = frozenset(removed)
    reach = _reachable_from_in(dep, removed)
    return all(o in reach for o in dep.outputs)


def starved_segments(dep: DependencyGraph, removed: Iterable[int]) -> set[int]:
    """Live segments (they still reach an output) that lost every data path from `IN`."""
    removed = frozenset(removed)
    reach = _reachable_from_in(dep, removed)
    live = _reaching_out(dep, removed)
    return live - reach


def valid_strict(dep: DependencyGraph, removed: Iterable[int]) -> bool:
    """`valid_basic` and no starved live segment (spec §3.3). Not monotone."""
    removed = frozenset(removed)
    return valid_basic(dep, removed) and not starved_segments(dep, removed)
