"""GeZIG formation (Algorithm 2, lines 11-15, and the admission rules 1-6 of spec §3.2)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from otov3.graph.channels import follow_channels, operand_channels
from otov3.graph.segments import VIRTUAL, DependencyGraph, Segment
from otov3.graph.types import JointRule, TraceGraph


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
        segments: dependency-graph segments the group spans (several only under weight sharing).
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
class _Verdict:
    ok: bool
    reason: str | None = None
    aux: tuple[tuple[str, int, int], ...] = ()  # (param, start, stop) auxiliary slices
    resets: tuple[str, ...] = ()


def _segment_params(trace: TraceGraph, seg: Segment) -> list[str]:
    return list(dict.fromkeys(p for v in seg.vertices for p in trace.vertices[v].params))


def _zero_invariance(trace: TraceGraph, seg: Segment) -> tuple[str | None, tuple[str, ...]]:
    """Rule 3: a zeroing op followed only by zero-preserving ops. Returns (reason, vertices to reset)."""
    last = -1
    for i, v in enumerate(seg.vertices):
        vert = trace.vertices[v]
        if vert.traits.zeroing and vert.params and not vert.frozen_params:
            last = i
    if last < 0:
        return "contains no op that outputs zero when its own trainable parameters are zero", ()
    resets = []
    for v in seg.vertices[last + 1 :]:
        t = trace.vertices[v].traits
        if t.resettable:
            resets.append(v)
        elif not t.zero_preserving:
            op = trace.vertices[v].op
            return f"'{v}' ({op}) after its last zeroing op does not map zero to zero", ()
    return None, tuple(resets)


def _consumer_check(trace: TraceGraph, seg: Segment, joint: str, owner_is_gezig) -> _Verdict:
    """Rule 2: dropping `seg` from the joint `joint` must be an exact rewrite."""
    jv = trace.vertices[joint]
    rule = jv.traits.joint
    last = seg.last
    if rule is None:
        return _Verdict(False, f"feeds '{joint}' ({jv.op}), where dropping an input is not exact")
    remaining = [(i, s) for i, s in zip(jv.inputs, jv.in_shapes, strict=True) if i != last]
    if not remaining:
        return _Verdict(False, f"is the only data input of '{joint}' ({jv.op})")
    if rule is JointRule.ADD:
        if any(s != jv.out_shape for _, s in remaining):
            return _Verdict(False, f"'{joint}' ({jv.op}) broadcasts, so its output shape depends on this input")
        return _Verdict(True)
    if rule is JointRule.SUB:
        if jv.inputs[0] == last:
            return _Verdict(False, f"is the minuend of '{joint}' (only a subtrahend can be dropped)")
        return _Verdict(True)
    path = follow_channels(trace, joint)
    if path.blocked:
        return _Verdict(False, path.blocked)
    aux = []
    intervals = operand_channels(trace, joint, last)
    for v in path.passes:
        vert = trace.vertices[v]
        if vert.traits.joint is JointRule.CAT or not vert.traits.per_channel_params:
            continue
        if owner_is_gezig(v):
            return _Verdict(False, f"its channels pass through '{v}', which belongs to a removable group")
        for start, stop in intervals.get(v, []):
            for p in vert.traits.per_channel_params:
                if p in vert.params:
                    aux.append((p, start, stop))
    return _Verdict(True, aux=tuple(aux))


def _admission(trace: TraceGraph, dep: DependencyGraph, seg: Segment, owner_is_gezig) -> _Verdict:
    outs = dep.succ[seg.id]
    if not outs or VIRTUAL in outs:
        return _Verdict(False, "feeds the model output")
    non_joint = [s for s in outs if not dep.segments[s].is_joint]
    if non_joint and len(outs) > 1:
        names = ", ".join(f"'{dep.segments[s].vertices[0]}'" for s in outs[:4])
        return _Verdict(False, f"feeds several operations ({names}); removing it would starve them")
    if non_joint:
        first = dep.segments[non_joint[0]].vertices[0]
        return _Verdict(False, f"feeds '{first}' ({trace.vertices[first].op}), which is not a joint")
    reason, resets = _zero_invariance(trace, seg)
    if reason:
        return _Verdict(False, reason)
    aux: list[tuple[str, int, int]] = []
    for s in outs:
        joint = dep.segments[s].vertices[0]
        verdict = _consumer_check(trace, seg, joint, owner_is_gezig)
        if not verdict.ok:
            return verdict
        aux.extend(verdict.aux)
    return _Verdict(True, aux=tuple(aux), resets=resets)


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


def partition(trace: TraceGraph, dep: DependencyGraph) -> tuple[GroupSpec, ...]:
    """Split the trainable parameters into GeZIGs and complementary groups, each with a reason.

    Every trainable scalar that the trace reaches ends up in exactly one group.
    """
    parametric = [s for s in dep.segments if _segment_params(trace, s)]
    users: dict[str, list[int]] = defaultdict(list)
    for s in parametric:
        for p in _segment_params(trace, s):
            users[p].append(s.id)

    # First pass without auxiliary conflicts, to know which segments could be GeZIGs at all.
    plain = {s.id: _admission(trace, dep, s, lambda v: False) for s in parametric}
    provisional = {sid for sid, v in plain.items() if v.ok}
    verdicts = {
        s.id: _admission(trace, dep, s, lambda v: dep.seg_of[v] in provisional) if plain[s.id].ok else plain[s.id]
        for s in parametric
    }

    # Rule 5: segments sharing a parameter form one component (union-find).
    parent = {s.id: s.id for s in parametric}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for sids in users.values():
        for other in sids[1:]:
            parent[find(other)] = find(sids[0])
    components: dict[int, list[int]] = defaultdict(list)
    for s in parametric:
        components[find(s.id)].append(s.id)

    claimed: dict[str, list[tuple[int, int]]] = defaultdict(list)
    drafts = []
    for sids in components.values():
        ok = all(verdicts[i].ok for i in sids)
        reason = None
        if not ok:
            bad = next(i for i in sids if not verdicts[i].ok)
            reason = verdicts[bad].reason
            if len(sids) > 1:
                reason = f"shares parameters with segments {sorted(sids)}, not all removable: {reason}"
        aux = [a for i in sids for a in verdicts[i].aux] if ok else []
        for p, start, stop in aux:
            claimed[p].append((start, stop))
        drafts.append((sids, ok, reason, aux, [r for i in sids for r in verdicts[i].resets] if ok else []))

    groups = []
    for sids, ok, reason, aux, resets in sorted(drafts, key=lambda d: d[0][0]):
        verts = tuple(v for i in sids for v in dep.segments[i].vertices)
        params = list(dict.fromkeys(p for i in sids for p in _segment_params(trace, dep.segments[i])))
        members: list[SliceRef] = []
        for p in params:
            size = trace.param_sizes.get(p, (0,))
            members.extend(_complement(p, size[0] if size else 1, claimed.get(p, [])))
        members.extend(SliceRef(p, a, b) for p, a, b in aux)
        groups.append(GroupSpec(tuple(sids), verts, tuple(members), ok, None if ok else reason, tuple(resets)))
    return tuple(groups)
