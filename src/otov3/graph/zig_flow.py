"""Follow channels through the trace graph (spec §4.1 steps 1-5, §4.2): one pass in topological order.

Stems open spaces; per-channel and element-wise ops carry layouts; Adds, gates and shared weights merge spaces
(union-find); concats place their operands' blocks at offsets (auxiliary members, spec §4.2); flattens and
head splits rescale positions; whatever cannot be followed blocks the spaces it carries, with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otov3.graph.types import IN, OUT, TraceGraph
from otov3.graph.zig_layout import Layout, Seg, Spaces, block_layout, need_blocks, reshape_layout, unify
from otov3.graph.zig_ops import ChannelKind, ChannelOp

K = ChannelKind


@dataclass
class Flow:
    """What the pass found: layouts per tensor and where channels are written, carried and read."""

    spaces: Spaces = field(default_factory=Spaces)
    layouts: dict[str, Layout | None] = field(default_factory=dict)
    stems: list[tuple[str, int]] = field(default_factory=list)  # (vertex, space it writes)
    carried: list[tuple[str, Layout]] = field(default_factory=list)  # (per-channel vertex, its layout)
    consumers: list[tuple[str, Layout]] = field(default_factory=list)  # (stem, layout of the input it reads)
    contractions: list[str] = field(default_factory=list)  # matmuls/attentions contracting a group's channels


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _label(trace: TraceGraph, v: str) -> str:
    return f"'{v}' ({trace.vertices[v].op})"


def follow_channels(trace: TraceGraph, ops: dict[str, ChannelOp]) -> Flow:
    """Run the pass; `ops` has one record per trace vertex (missing ones are opaque)."""
    flow = Flow()
    for name, v in trace.vertices.items():
        op = ops.get(name) or ChannelOp(K.OPAQUE, reason="otov3 does not know how it treats channels")
        ins = [flow.layouts.get(i) if i != IN else None for i in v.inputs]
        shapes = list(v.in_shapes)
        where = _label(trace, name)
        try:
            out = _step(flow, name, op, ins, shapes, v.out_shape, where)
        except (IndexError, TypeError, ZeroDivisionError):  # a shape the rules did not expect: never guess
            out = None
            for lay in ins:
                block_layout(flow.spaces, lay, f"otov3 cannot follow channels through {where}")
        if out is not None:
            for s in out.segs:
                if s.space is not None and s.scale.denominator > 1:
                    flow.spaces.need_unit(s.space, s.scale.denominator)
        flow.layouts[name] = out
    for p in trace.predecessors(OUT):
        block_layout(flow.spaces, flow.layouts.get(p), "its channels reach the model output")
    return flow


def _others_blocked(flow: Flow, ins: list[Layout | None], keep: set[int], where: str) -> None:
    for i, lay in enumerate(ins):
        if i not in keep:
            block_layout(flow.spaces, lay, f"{where} reads these channels as a secondary operand")


def _step(flow: Flow, name: str, op: ChannelOp, ins: list[Layout | None], shapes: list, out_shape, where: str
          ) -> Layout | None:
    sp = flow.spaces
    first = ins[0] if ins else None
    if op.kind is K.OPAQUE:
        for lay in ins:
            block_layout(sp, lay, f"{where} stops them: {op.reason}")
        return None
    if op.kind is K.STEM:
        _others_blocked(flow, ins, {0}, where)
        if first is not None:
            if op.reason or not op.in_cols or first.axis != _norm(op.in_axis, len(shapes[0])):
                block_layout(sp, first, f"{where} reads them in a way otov3 cannot cut"
                             + (f" ({op.reason})" if op.reason else ""))
            else:
                flow.consumers.append((name, first))
        axis = _norm(op.axis, len(out_shape))
        sid = sp.new(out_shape[axis])
        if op.reason:
            sp.block(sid, f"{where}: {op.reason}")
        flow.stems.append((name, sid))
        return Layout(axis, (Seg(sid, 0, out_shape[axis]),))
    if first is None and all(lay is None for lay in ins):
        return None
    if op.kind is K.PER_CHANNEL:
        _others_blocked(flow, ins, {0}, where)
        if first is None:
            return None
        if first.axis != _norm(op.axis, len(shapes[0])) or not need_blocks(sp, first, op.block, where):
            block_layout(sp, first, f"{where} normalises or scales along another axis")
            return None
        flow.carried.append((name, first))
        return first
    if op.kind is K.ELEMENTWISE:
        return _elementwise(flow, ins, shapes, out_shape, op.side_shapes, where)
    if op.kind in (K.LOCAL, K.RESHAPE, K.PERMUTE, K.REDUCE):
        _others_blocked(flow, ins, {0}, where)
        if first is None:
            return None
        out = _unary(op, first, shapes[0], out_shape)
        if out is None:
            block_layout(sp, first, f"{where} mixes channels (or moves them where otov3 cannot follow)")
        return out
    if op.kind is K.CAT:
        return _cat(flow, ins, shapes, out_shape, op.dims[0], where)
    if op.kind is K.MATMUL:
        return _matmul(flow, name, ins, shapes, out_shape, where)
    return _attention(flow, name, ins, shapes, out_shape, where)


def _unary(op: ChannelOp, lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    a = lay.axis
    if op.kind is K.LOCAL:
        dims = {_norm(d, len(src)) for d in op.dims}
        ok = a not in dims and len(out) == len(src) and out[a] == src[a]
        return lay if ok else None
    if op.kind is K.PERMUTE:
        perm = [_norm(d, len(src)) for d in op.dims]
        return Layout(perm.index(a), lay.segs) if a in perm else None
    if op.kind is K.REDUCE:
        dims = {_norm(d, len(src)) for d in op.dims}
        if a in dims:
            return None
        return Layout(a if op.keepdim else a - sum(1 for d in dims if d < a), lay.segs)
    new, _ = reshape_layout(lay, tuple(src), tuple(out))
    return new


def _elementwise(flow: Flow, ins, shapes, out_shape, side_shapes, where: str) -> Layout | None:
    sp, r = flow.spaces, len(out_shape)
    axes = {lay.axis + r - len(s) for lay, s in zip(ins, shapes, strict=True) if lay is not None}
    tracked = [lay for lay in ins if lay is not None]
    if len(axes) != 1:
        for lay in tracked:
            block_layout(sp, lay, f"{where} combines channels on different axes")
        return None
    axis = axes.pop()
    size = out_shape[axis]
    for lay, s in zip(ins, shapes, strict=True):
        k = axis - (r - len(s))
        own = s[k] if 0 <= k < len(s) else 1
        if (lay is None and own > 1) or (lay is not None and own != size):
            for t in tracked:
                block_layout(sp, t, f"{where} combines these channels with channels no group owns (or broadcasts)")
            return None
    for s in side_shapes:
        k = axis - (r - len(s))
        if 0 <= k < len(s) and s[k] > 1:
            for t in tracked:
                block_layout(sp, t, f"{where} combines them with a parameter or constant that is not cut")
            return None
    return unify(sp, tracked, axis, where)


def _cat(flow: Flow, ins, shapes, out_shape, dim: int, where: str) -> Layout | None:
    sp = flow.spaces
    d = _norm(dim, len(out_shape))
    tracked = [lay for lay in ins if lay is not None]
    if any(lay.axis == d for lay in tracked):
        segs: list[Seg] = []
        base = 0
        for lay, s in zip(ins, shapes, strict=True):
            if lay is not None and lay.axis != d:
                block_layout(sp, lay, f"{where} concatenates along another axis than these channels")
                lay = None
            segs.extend(lay.shifted(base) if lay is not None else (Seg(None, base, s[d]),))
            base += s[d]
        return Layout(d, tuple(segs))
    return _elementwise(flow, ins, shapes, out_shape, (), where)


def _pair(flow: Flow, name: str, a: Layout | None, b: Layout | None, where: str) -> None:
    """Channels contracted against each other (q·k): both sides must be the same channels, removed together."""
    if a is None or b is None:
        block_layout(flow.spaces, a or b, f"{where} contracts them against channels no group owns")
        return
    if unify(flow.spaces, [a, b], a.axis, where) is not None:
        flow.contractions.append(name)


def _matmul(flow: Flow, name: str, ins, shapes, out_shape, where: str) -> Layout | None:
    if len(ins) != 2 or min(len(shapes[0]), len(shapes[1])) < 2:
        for lay in ins:
            block_layout(flow.spaces, lay, f"{where} multiplies them in a way otov3 does not follow")
        return None
    (a, b), (sa, sb), r = ins, shapes, len(out_shape)
    ax = _norm(-1, len(sa)) if a is not None else None
    bx = _norm(-2, len(sb)) if b is not None else None
    contracted_a, contracted_b = a is not None and a.axis == ax, b is not None and b.axis == bx
    if contracted_a or contracted_b:
        _pair(flow, name, a if contracted_a else None, b if contracted_b else None, where)
    carried = []
    if a is not None and not contracted_a:
        carried.append(Layout(a.axis + r - len(sa), a.segs))
    if b is not None and not contracted_b:
        carried.append(Layout(b.axis + r - len(sb), b.segs))
    return _carry(flow, carried, ins, shapes, where, batch_limit=r - 2)


def _carry(flow: Flow, carried: list, ins, shapes, where: str, batch_limit: int) -> Layout | None:
    """The one layout a product's output carries; batch axes (heads) of both operands must agree."""
    if any(c is None for c in carried) or len({c.axis for c in carried}) > 1:
        for lay in ins:
            block_layout(flow.spaces, lay, f"{where} mixes these channels with others")
        return None
    if not carried:
        return None
    axis, r = carried[0].axis, batch_limit + 2
    for lay, s in zip(ins, shapes, strict=False):
        k = axis - (r - len(s))
        if axis < batch_limit and lay is None and 0 <= k < len(s) and s[k] > 1:
            for t in ins:
                block_layout(flow.spaces, t, f"{where} pairs these heads with heads no group owns")
            return None
    if len(carried) > 1 and carried[0].axis >= batch_limit:
        for lay in ins:
            block_layout(flow.spaces, lay, f"{where} produces channels of two groups on one axis")
        return None
    return unify(flow.spaces, carried, carried[0].axis, where)


def _attention(flow: Flow, name: str, ins, shapes, out_shape, where: str) -> Layout | None:
    """softmax(q kᵀ) v per batch axis: heads (a batch axis) of q, k, v agree; q·k contract; v's columns pass."""
    if len(ins) < 3 or len(out_shape) < 3:
        for lay in ins:
            block_layout(flow.spaces, lay, f"{where} combines them in a way otov3 does not follow")
        return None
    q, k, v = ins[:3]
    block_layout(flow.spaces, ins[3] if len(ins) > 3 else None, f"{where} uses them as an attention mask")
    r = len(out_shape)
    last = [lay is not None and lay.axis == len(s) - 1 for lay, s in zip((q, k, v), shapes[:3], strict=True)]
    if last[0] or last[1]:
        _pair(flow, name, q if last[0] else None, k if last[1] else None, where)
    carried = []
    for lay, s, is_last, role in zip((q, k, v), shapes[:3], last, "qkv", strict=True):
        if lay is None or (is_last and role != "v"):
            continue
        if lay.axis == len(s) - 2:  # query/key positions: not channels of a group that the output keeps apart
            carried.append(None)
        else:
            carried.append(Layout(lay.axis + r - len(s), lay.segs))
    return _carry(flow, carried, ins, shapes, where, batch_limit=r - 2)
