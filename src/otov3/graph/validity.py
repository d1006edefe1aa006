"""Validity of a set of removed segments (spec §3.3): the hierarchy check of H2SPG."""

from __future__ import annotations

from collections.abc import Iterable

from otov3.graph.segments import VIRTUAL, DependencyGraph


def _closure(starts: Iterable[int], neighbours: dict[int, tuple[int, ...]], removed: frozenset[int]) -> set[int]:
    """Segments reachable from `starts` along `neighbours`, never entering `removed` or the virtual IN/OUT."""
    seen = {s for s in starts if s not in removed}
    stack = list(seen)
    while stack:
        for w in neighbours[stack.pop()]:
            if w != VIRTUAL and w not in removed and w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def _reachable_from_in(dep: DependencyGraph, removed: frozenset[int]) -> set[int]:
    return _closure((s.id for s in dep.segments if VIRTUAL in dep.pred[s.id]), dep.succ, removed)


def _reaching_out(dep: DependencyGraph, removed: frozenset[int]) -> set[int]:
    return _closure(dep.outputs, dep.pred, removed)


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
