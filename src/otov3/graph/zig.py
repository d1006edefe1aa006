"""Pruning mode: the ZIG partition of OTOv2 (spec §4). Node groups of stems sharing a channel axis, their
auxiliary members after concats, and for every node group either channel groups or the reason it is kept whole.

`follow_channels` (zig_flow) places channels; this module merges what shared weights tie together, checks
zero-invariance (a zero channel must be exactly zero wherever it is read by a stem, spec §4.4), and lists each
node group's members. No torch here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction

from otov3.graph.types import IN, TraceGraph
from otov3.graph.zig_flow import Flow, follow_channels
from otov3.graph.zig_layout import Layout, block_layout, unify
from otov3.graph.zig_ops import ChannelKind, ChannelOp


@dataclass(frozen=True)
class ChannelSlice:
    """Channel j of a node group is `[off + j*scale, off + (j+1)*scale)` of `param` along `dim`."""

    param: str
    dim: int
    off: int = 0
    scale: Fraction = Fraction(1)

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """Indices of channels `[first, stop)` (whole units, so the bounds are integral)."""
        return int(self.off + first * self.scale), int(self.off + stop * self.scale)


@dataclass(frozen=True)
class NodeGroupSpec:
    """One node group (spec §4.1 step 6).

    Attributes:
        id: position in the partition.
        space: its root space in `ZigAnalysis.flow`.
        stems: stems writing its channels; vertices: every op carrying them.
        channels: channel count; unit: channels removed together (1; a GroupNorm group; an attention head).
        members: parameter slices indexed by channel (stem rows, per-channel and auxiliary entries).
        resets: running means of non-affine norms, zeroed with the channel (spec §6.2).
        prunable: its channel groups may be removed; reason: why not.
    """

    id: int
    space: int
    stems: tuple[str, ...]
    vertices: tuple[str, ...]
    channels: int
    unit: int
    members: tuple[ChannelSlice, ...]
    resets: tuple[ChannelSlice, ...]
    prunable: bool
    reason: str | None = None

    @property
    def num_groups(self) -> int:
        return self.channels // self.unit if self.unit else 0


@dataclass(frozen=True)
class ZigAnalysis:
    """The partition plus what construction needs: every tensor's layout and the ops' records."""

    groups: tuple[NodeGroupSpec, ...]
    flow: Flow
    ops: dict[str, ChannelOp]


def _tie_shared(trace: TraceGraph, flow: Flow, ops: dict[str, ChannelOp]) -> None:
    """A tensor used at several places is cut once, so what it touches must be one set of channels (spec §4.2):
    every use must see the same layout, and a use whose channels no group owns keeps the others whole."""
    sp = flow.spaces
    rows: dict[str, list[int]] = defaultdict(list)
    carried: dict[str, list[Layout | None]] = defaultdict(list)
    cols: dict[str, list[Layout | None]] = defaultdict(list)
    for v, sid in flow.stems:
        for p, _ in ops[v].out_rows:
            rows[p].append(sid)
    for v, op in ops.items():
        if op.kind is ChannelKind.PER_CHANNEL:
            for p, _ in op.per_channel:
                carried[p].append(flow.layouts.get(v))
        elif op.kind is ChannelKind.STEM and v in trace.vertices and trace.vertices[v].inputs:
            src = trace.vertices[v].inputs[0]
            for p, _ in op.in_cols:
                cols[p].append(flow.layouts.get(src) if src != IN else None)
    dims: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for op in ops.values():
        dims_of = (("rows", op.out_rows), ("cols", op.in_cols)) if op.kind is ChannelKind.STEM else ()
        for role, pairs in dims_of:
            for p, d in pairs:
                dims[p].add((role, d))
    for p, sids in rows.items():
        for s in sids[1:]:
            sp.union(sids[0], s, f"shared '{p}'")
        row_dims = {d for role, d in dims[p] if role == "rows"}
        col_dims = {d for role, d in dims[p] if role == "cols"}
        if p in carried or len(row_dims) > 1 or len(col_dims) > 1 or row_dims & col_dims:
            sp.block(sids[0], f"'{p}' is shared by operations that index its channels differently")
    for table in (carried, cols):
        for p, lays in table.items():
            tracked = [lay for lay in lays if lay is not None]
            if len(tracked) < len(lays):
                for lay in tracked:
                    block_layout(sp, lay, f"'{p}' is also used where its channels are not followed")
            elif len(tracked) > 1:
                unify(sp, tracked, tracked[0].axis, f"shared '{p}'")


def _zero_states(trace: TraceGraph, flow: Flow, ops: dict[str, ChannelOp]) -> dict[str, dict[int, str | None]]:
    """For every tensor and root space: None when the space's zeroed channel is exactly zero there, else why not."""
    sp, state = flow.spaces, {}
    for name, v in trace.vertices.items():
        out = flow.layouts.get(name)
        if out is None:
            continue
        op = ops[name]
        here: dict[int, str | None] = {}
        for root in {sp.find(s) for s in out.spaces()}:
            ins = [state.get(i, {}).get(root, "no group") if i != IN else "no group" for i in v.inputs]
            if op.kind is ChannelKind.CAT and out.axis == op.dims[0] % len(v.out_shape):
                ins = [z for z in ins if z != "no group"]  # a concat's blocks come from the operands holding them
            if op.kind is ChannelKind.STEM:
                here[root] = None if op.zero_rows else f"'{name}' ({v.op}) holds parameters outside the group"
            elif op.kind is ChannelKind.PER_CHANNEL and v.traits.zeroing:
                here[root] = None
            elif any(ins[k] is None for k, i in enumerate(v.inputs) if i in v.absorbing):
                here[root] = None
            elif (v.traits.zero_preserving or v.traits.resettable or v.traits.joint) and ins:
                here[root] = next((r for r in ins if r is not None), None)
            else:
                here[root] = next((r for r in ins if r is not None and r != "no group"), None) or (
                    f"'{name}' ({v.op}) does not map zero to zero")
        state[name] = here
    return state


def _check_zero(trace: TraceGraph, flow: Flow, state: dict[str, dict[int, str | None]]) -> None:
    sp = flow.spaces
    for v, lay in flow.consumers:
        src = trace.vertices[v].inputs[0]
        for root in {sp.find(s) for s in lay.spaces()}:
            why = state.get(src, {}).get(root, "no group")
            if why is not None:
                sp.block(root, f"a zero channel reaches '{v}' ({trace.vertices[v].op}) non-zero: {why}")
    for v in flow.contractions:
        a, b = trace.vertices[v].inputs[:2]
        for root in {sp.find(s) for s in (flow.layouts.get(a) or Layout(0, ())).spaces()}:
            za, zb = state.get(a, {}).get(root, "no group"), state.get(b, {}).get(root, "no group")
            if za is not None and zb is not None:
                sp.block(root, f"the channels '{v}' contracts are not zero: {za}")


def partition_channels(trace: TraceGraph, ops: dict[str, ChannelOp], *, trainable: set[str],
                       frozen: set[str] = frozenset(), group_divisible: int = 1) -> ZigAnalysis:
    """Node groups of the trace (spec §4.1), each prunable or with the reason it is not (spec §4.2).

    `trainable`/`frozen` name the parameters (by the paths `ops` uses); everything else in `ops` is a buffer.
    """
    flow = follow_channels(trace, ops)
    _tie_shared(trace, flow, ops)
    _check_zero(trace, flow, _zero_states(trace, flow, ops))
    sp = flow.spaces
    members: dict[int, list[ChannelSlice]] = defaultdict(list)
    resets: dict[int, list[ChannelSlice]] = defaultdict(list)
    stems: dict[int, list[str]] = defaultdict(list)
    verts: dict[int, list[str]] = defaultdict(list)
    for v, sid in flow.stems:
        root = sp.find(sid)
        stems[root].append(v)
        members[root].extend(ChannelSlice(p, d) for p, d in ops[v].out_rows)
    for v, lay in flow.carried:
        for seg in lay.segs:
            if seg.space is None:
                continue
            root = sp.find(seg.space)
            members[root].extend(ChannelSlice(p, d, seg.off, seg.scale) for p, d in ops[v].per_channel)
            resets[root].extend(ChannelSlice(p, d, seg.off, seg.scale) for p, d in ops[v].per_channel
                                if p in ops[v].resets)
    for name in trace.vertices:
        lay = flow.layouts.get(name)
        for root in dict.fromkeys(sp.find(s) for s in (lay.spaces() if lay else ())):
            verts[root].append(name)
    groups = []
    for root, names in stems.items():
        mine = [m for m in dict.fromkeys(members[root]) if m.param in trainable or m.param in frozen]
        reason = sp.reason(root)
        stuck = [m.param for m in mine if m.param in frozen]
        if reason is None and stuck:
            reason = f"'{stuck[0]}' is frozen (requires_grad=False)"
        count = sp.width[root] // sp.unit[root] if sp.width[root] % sp.unit[root] == 0 else 0
        if reason is None and not mine:
            reason = "no trainable parameter writes these channels"
        if reason is None and count <= max(1, group_divisible):
            reason = (f"it has {count} channel group(s), not more than group_divisible={group_divisible}"
                      if group_divisible > 1 else "it has a single channel group")
        groups.append(NodeGroupSpec(len(groups), root, tuple(names), tuple(verts[root]), sp.width[root],
                                    sp.unit[root], tuple(mine), tuple(dict.fromkeys(resets[root])),
                                    reason is None, reason))
    return ZigAnalysis(tuple(groups), flow, dict(ops))
