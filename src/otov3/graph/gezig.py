"""GeZIG formation (Algorithm 2, lines 11-15, and the admission rules 1-6 of spec §3.2).

A removal structure grows from a parametric segment (its *seed*) whose own parameters can make its output
exactly zero. The zero travels forward through zero-preserving ops and through products, which are absorbing
in each operand (spec §2.2 "Products are not joints"); what then feeds only the zero ops (a gate's producers, a
pre-norm in front of an attention sublayer) is dead and goes with the structure. Every edge that leaves the
structure must enter an erasable joint that can drop it exactly. Overlapping structures (the gate, up and down
projections of one gated MLP) merge into one GeZIG, as do segments that share weights.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from otov3.graph.channels import cat_cut_blocked, operand_channels
from otov3.graph.segments import DependencyGraph, Segment
from otov3.graph.types import IN, OUT, JointRule, TraceGraph, VertexKind


@dataclass(frozen=True)
class SliceRef:
    """A trainable parameter by name, whole (`start is None`) or the block `[start, stop)` of dim 0."""

    param: str
    start: int | None = None
    stop: int | None = None

    @property
    def whole(self) -> bool:
        return self.start is None


@dataclass(frozen=True)
class GroupSpec:
    """One group of the partition, in names only.

    Attributes:
        segments: dependency-graph segments the group spans (its removal structure, or weight-sharing twins).
        vertices: their trace vertices.
        members: parameter slices the group owns.
        is_gezig: removable (all admission rules hold).
        reason: why a complementary group is not removable.
        reset_vertices: non-affine norms whose running mean must be zeroed when the group is.
    """

    segments: tuple[int, ...]
    vertices: tuple[str, ...]
    members: tuple[SliceRef, ...]
    is_gezig: bool
    reason: str | None = None
    reset_vertices: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Structure:
    """What removing one seed segment takes with it, or why it cannot be removed."""

    ok: bool
    reason: str | None = None
    segments: frozenset[int] = frozenset()
    aux: tuple[tuple[str, int, int], ...] = ()  # (param, start, stop) auxiliary slices
    resets: tuple[str, ...] = ()


def _segment_params(trace: TraceGraph, seg: Segment) -> list[str]:
    return list(dict.fromkeys(p for v in seg.vertices for p in trace.vertices[v].params))


def _live_vertices(trace: TraceGraph) -> set[str]:
    """Vertices with a data path to an output; the others are dead code in the super-network already."""
    live: set[str] = set()
    stack = [p for p in trace.predecessors(OUT) if p != IN]
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        stack.extend(p for p in trace.predecessors(v) if p != IN and p not in live)
    return live


def _seed_zero(trace: TraceGraph, seg: Segment, claimed: set[str]) -> tuple[str | None, list[str], list[str]]:
    """Rule 3 inside the seed: a zeroing op (whose parameters the seed owns whole) followed only by
    zero-preserving ops. Returns (reason, the chain's zero vertices, vertices to reset)."""
    last = -1
    for i, v in enumerate(seg.vertices):
        vert = trace.vertices[v]
        owned = not any(p in claimed for p in vert.params)
        if vert.traits.zeroing and vert.params and not vert.frozen_params and owned:
            last = i
    if last < 0:
        return "contains no op that outputs zero when its own trainable parameters are zero", [], []
    resets = []
    for v in seg.vertices[last + 1 :]:
        t = trace.vertices[v].traits
        if t.resettable:
            resets.append(v)
        elif not t.zero_preserving:
            return f"'{v}' ({trace.vertices[v].op}) after its last zeroing op does not map zero to zero", [], []
    return None, list(seg.vertices[last:]), resets


def _propagate(
    trace: TraceGraph, order: dict[str, int], zero: set[str], skip: set[str], live: set[str], resets: list[str]
) -> None:
    """Grow `zero` forward in topological order: zero-preserving ops fed only zeros, products with a zero operand.

    Only successors of zero vertices are visited, so the cost follows the structure, not the model. Erasable
    joints are never crossed: they are where a removal structure ends (a joint losing every input is a starved
    vertex, which the validity check of spec §3.3 handles).
    """
    heap = [(order[w], w) for v in zero for w in trace.successors(v) if w in order]
    heapq.heapify(heap)
    seen: set[str] = set()
    while heap:
        _, name = heapq.heappop(heap)
        if name in seen or name in zero or name in skip or name not in live:
            continue
        seen.add(name)
        v = trace.vertices[name]
        if any(i in zero for i in v.absorbing):
            zero.add(name)
        elif v.traits.joint is None and all(i in zero for i in v.inputs):
            if v.traits.zero_preserving:
                zero.add(name)
            elif v.traits.resettable:
                zero.add(name)
                resets.append(name)
        if name in zero:
            for w in trace.successors(name):
                if w in order:
                    heapq.heappush(heap, (order[w], w))


def _dead(
    trace: TraceGraph, order: dict[str, int], zero: set[str], live: set[str], barrier: set[str] | None
) -> set[str]:
    """Live vertices whose every consumer is zero or dead: a gate's producers, a norm in front of the structure.

    Visited backwards from the zero vertices in reverse topological order. An erasable joint is taken only when
    `barrier` is given and none of its inputs lies in it: `barrier` holds the removal structures of other seeds
    (DARTS edges into a node stay their own GeZIGs), while the Add of a rotary embedding, fed only by products of
    the query, goes with the attention sublayer.
    """
    dead: set[str] = set()
    heap = [(-order[p], p) for v in zero for p in trace.predecessors(v) if p in order]
    heapq.heapify(heap)
    seen: set[str] = set()
    while heap:
        _, name = heapq.heappop(heap)
        if name in seen or name in zero or name not in live:
            continue
        vert = trace.vertices[name]
        if vert.traits.joint is not None and (barrier is None or any(i in barrier for i in vert.inputs)):
            continue
        seen.add(name)
        consumers = [w for w in trace.successors(name) if w == OUT or w in live]
        if consumers and all(w in zero or w in dead for w in consumers):
            dead.add(name)
            for p in trace.predecessors(name):
                if p in order:
                    heapq.heappush(heap, (-order[p], p))
    return dead


def _dead_joints_closed(
    trace: TraceGraph, order: dict[str, int], own: set[str], live: set[str], barrier: set[str] | None
) -> set[str]:
    """`_dead`, keeping a joint only when all its inputs are dead too: a joint that merely combines this
    structure's own by-products (the rotary Add of q) goes with it, a joint with an input from elsewhere stays."""
    if barrier is None:
        return _dead(trace, order, own, live, None)
    blocked = barrier - own
    while True:
        dead = _dead(trace, order, own, live, blocked)
        partial = {v for v in dead if trace.vertices[v].traits.joint is not None
                   and not all(i in dead or i in own for i in trace.vertices[v].inputs)}
        if not partial:
            return dead
        blocked = blocked | {i for v in partial for i in trace.vertices[v].inputs}


def _boundary_reason(trace: TraceGraph, joint: str, dropped: set[str]) -> str | None:
    """Rule 2: dropping the inputs `dropped` of `joint` must be an exact rewrite; None when it is."""
    jv = trace.vertices[joint]
    rule = jv.traits.joint
    if rule is None:
        if jv.traits.kind is VertexKind.UNKNOWN:
            return f"feeds '{joint}' ({jv.op}), where dropping an input is not exact: {jv.traits.reason}"
        if jv.traits.kind is VertexKind.MERGE:
            return f"feeds '{joint}' ({jv.op}), where dropping an input is not exact"
        return f"feeds '{joint}' ({jv.op}), which is not a joint"
    remaining = [s for i, s in zip(jv.inputs, jv.in_shapes, strict=True) if i not in dropped]
    if not remaining:
        return f"is the only data input of '{joint}' ({jv.op})"
    if rule is JointRule.ADD and any(s != jv.out_shape for s in remaining):
        return f"'{joint}' ({jv.op}) broadcasts, so its output shape depends on this input"
    if rule is JointRule.SUB and jv.inputs[0] in dropped:
        return f"is the minuend of '{joint}' (only a subtrahend can be dropped)"
    return None


def _aux_slices(trace: TraceGraph, cat: str, dropped: set[str]) -> list[tuple[str, int, int]]:
    """Rule 4: per-channel slices downstream of a Concat operand; none when the concat is zero-filled instead."""
    if cat_cut_blocked(trace, cat, dropped):
        return []  # the sub-network feeds the concat a zero block: exact without cutting (spec §6.1)
    aux = []
    for operand in dropped:
        intervals = operand_channels(trace, cat, operand)
        for v, spans in intervals.items():
            vert = trace.vertices[v]
            if vert.traits.joint is JointRule.CAT:
                continue
            for start, stop in spans:
                aux.extend((p, start, stop) for p in vert.traits.per_channel_params if p in vert.params)
    return aux


def _grow(trace: TraceGraph, dep: DependencyGraph, seg: Segment, live: set[str], claimed: set[str],
          order: dict[str, int], barrier: set[str] | None) -> _Structure:
    reason, zero_chain, resets = _seed_zero(trace, seg, claimed)
    if reason:
        return _Structure(False, reason)
    zero = set(zero_chain)
    _propagate(trace, order, zero, set(seg.vertices), live, resets)
    own = zero | set(seg.vertices)
    removed = own | _dead_joints_closed(trace, order, own, live, barrier)
    if any(OUT in trace.successors(v) for v in removed):
        return _Structure(False, "feeds the model output")
    boundary: dict[str, set[str]] = defaultdict(set)
    for v in removed:
        for w in trace.successors(v):
            if w in live and w not in removed:
                boundary[w].add(v)
    if not boundary:  # nothing live consumes it: the super-network computes it and throws it away
        return _Structure(False, "never reaches the model output (its result is not used)")
    failures = [(w, r) for w, r in ((w, _boundary_reason(trace, w, d)) for w, d in boundary.items()) if r]
    if failures:
        outs = [w for w in trace.successors(seg.last) if w in live]
        if len(outs) > 1 and any(trace.vertices[w].traits.joint is None for w in outs):
            names = ", ".join(f"'{w}'" for w in outs[:4])
            return _Structure(False, f"feeds several operations ({names}); removing it would starve them")
        return _Structure(False, failures[0][1])
    segments = {dep.seg_of[v] for v in removed}
    partial = [s for s in segments if not set(dep.segments[s].vertices) <= removed]
    if partial:
        first = dep.segments[partial[0]].vertices[0]
        return _Structure(False, f"would remove only part of the operations around '{first}'")
    aux: list[tuple[str, int, int]] = []
    for w, dropped in boundary.items():
        if trace.vertices[w].traits.joint is JointRule.CAT:
            aux.extend(_aux_slices(trace, w, dropped))
    return _Structure(True, segments=frozenset(segments), aux=tuple(aux), resets=tuple(resets))


def _complement(param: str, size: int, claimed: list[tuple[int, int]]) -> list[SliceRef]:
    if not claimed:
        return [SliceRef(param)]
    out, pos = [], 0
    for start, stop in sorted(claimed):
        if start > pos:
            out.append(SliceRef(param, pos, start))
        pos = max(pos, stop)
    if pos < size:
        out.append(SliceRef(param, pos, size))
    return out


class _UnionFind:
    def __init__(self, items) -> None:
        self.parent = {i: i for i in items}

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(b)] = self.find(a)


def _structures(trace: TraceGraph, dep: DependencyGraph, parametric: list[Segment]) -> dict[int, _Structure]:
    """Every seed's structure; a second pass withholds norm slices that other structures claim as auxiliary
    members (a DenseNet layer's leading BN over earlier layers' channels), so no group relies on them."""
    live = _live_vertices(trace)
    order = {v: i for i, v in enumerate(trace.vertices)}
    plain = {s.id: _grow(trace, dep, s, live, set(), order, None) for s in parametric}
    # Dead code may continue through a joint none of whose inputs belongs to another seed's structure.
    barrier = {v for st in plain.values() if st.ok for sid in st.segments for v in dep.segments[sid].vertices}
    first = {s.id: _grow(trace, dep, s, live, set(), order, barrier) for s in parametric}
    claimed = {p for st in first.values() if st.ok for p, _, _ in st.aux}
    if not claimed:
        return first
    return {s.id: _grow(trace, dep, s, live, claimed, order, barrier) for s in parametric}


def partition(trace: TraceGraph, dep: DependencyGraph) -> tuple[GroupSpec, ...]:
    """Split the trainable parameters into GeZIGs and complementary groups, each with a reason.

    Every trainable scalar that the trace reaches ends up in exactly one group.
    """
    parametric = [s for s in dep.segments if _segment_params(trace, s)]
    structures = _structures(trace, dep, parametric)

    # Components: overlapping removal structures (rule 5 generalised) and segments sharing a parameter.
    uf = _UnionFind(s.id for s in dep.segments)
    covered: set[int] = set()
    for sid, st in structures.items():
        if st.ok:
            covered |= st.segments
            for other in st.segments:
                uf.union(sid, other)
    users: dict[str, list[int]] = defaultdict(list)
    for s in parametric:
        for p in _segment_params(trace, s):
            users[p].append(s.id)
    for sids in users.values():
        for other in sids[1:]:
            uf.union(sids[0], other)
    components: dict[int, list[int]] = defaultdict(list)
    for s in dep.segments:
        components[uf.find(s.id)].append(s.id)

    claimed: dict[str, list[tuple[int, int]]] = defaultdict(list)
    drafts = []
    for sids in components.values():
        seeds = [i for i in sids if i in structures]
        if not seeds:
            continue  # parameter-free segments outside every structure belong to no group
        uncovered = [i for i in seeds if i not in covered]
        ok = not uncovered
        reason = None
        if not ok:
            reason = structures[uncovered[0]].reason
            if len(seeds) > 1:
                reason = f"shares parameters with segments {sorted(seeds)}, not all removable: {reason}"
        oks = [structures[i] for i in seeds if structures[i].ok] if ok else []
        aux = list(dict.fromkeys(a for st in oks for a in st.aux))
        for p, start, stop in aux:
            claimed[p].append((start, stop))
        resets = list(dict.fromkeys(r for st in oks for r in st.resets))
        drafts.append((sorted(sids) if ok else sorted(seeds), ok, reason, aux, resets))

    groups = []
    for sids, ok, reason, aux, resets in sorted(drafts, key=lambda d: d[0][0]):
        verts = tuple(v for i in sids for v in dep.segments[i].vertices)
        params = list(dict.fromkeys(p for v in verts for p in trace.vertices[v].params))
        members: list[SliceRef] = []
        for p in params:
            size = trace.param_sizes.get(p, (0,))
            members.extend(_complement(p, size[0] if size else 1, claimed.get(p, [])))
        members.extend(SliceRef(p, a, b) for p, a, b in aux)
        groups.append(GroupSpec(tuple(sids), verts, tuple(members), ok, None if ok else reason, tuple(resets)))
    return tuple(groups)
