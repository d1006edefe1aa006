"""Per-row reductions ``‖x‖², ⟨x,d⟩, ‖d‖²`` and the cache-blocked passes that yield them cheaply.

Large parameters whose optimizer buffers exist go through `sgd_pass` / `adam_pass`: chunk by chunk
(`_layout.CHUNK`, whole rows per chunk), the buffer update, the three row-wise dot products and, when allowed,
the parameter update all run while the chunk is in cache. That is one trip through memory where
torch.optim.SGD's foreach step makes four (and allocates ``∇f + wd·x``), which is how scores and λ steps fit in
the time of a plain step. Other parameters (small, non-contiguous, cut along dim ≥ 1, first step) use foreach
directions; their reductions are batched in `reduce_rest`. Parameters whose rows wait for a decision finish
their step in `sgd_finish` / `adam_finish` with per-row factors ``x ← m·(a·x − α·s·d)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from otov3.optim._flat import sqrt_floor
from otov3.optim._layout import Piece, Rows

# Below this size a tensor is cheap to handle with foreach ops or by concatenation: no chunking.
FUSE_MIN = 16384


def fusable(x: Tensor, g: Tensor, rows: Rows | None, *buffers: Tensor | None) -> bool:
    """Whether a parameter can take a cache-blocked pass (buffers exist, everything contiguous, rows on dim 0)."""
    return (
        x.numel() >= FUSE_MIN
        and (rows is None or rows.dim in (None, 0))
        and x.is_contiguous()
        and g.is_contiguous()
        and g.dtype == x.dtype
        and all(b is not None and b.is_contiguous() and b.dtype == x.dtype for b in buffers)
    )


# (three 0-d dots ‖x‖², ⟨x,d⟩, ‖d‖² per one-row piece, one (rows, 3) tensor ‖x‖, ⟨x,d⟩, ‖d‖ per block)
Sink = tuple[list[Tensor], list[Tensor]]


def _reduce_piece(xc: Tensor, dc: Tensor, p: Piece, scratch: Tensor, sink: Sink) -> None:
    n = p.r1 - p.r0
    if n == 1:  # part of a row, or a single row: three BLAS dots, stacked once per step by the engine
        sink[0].extend((torch.dot(xc, xc), torch.dot(xc, dc), torch.dot(dc, dc)))
        return
    # row norms need no scratch pass (squared by the engine, once per step): 4 passes over the chunk instead of 6
    xv, dv, s = xc.view(n, -1), dc.view(n, -1), scratch[: xc.numel()].view(n, -1)
    sink[1].append(torch.stack((torch.linalg.vector_norm(xv, dim=1), torch.mul(xv, dv, out=s).sum(1),
                                torch.linalg.vector_norm(dv, dim=1)), dim=1))


def sgd_pass(
    x: Tensor, g: Tensor, b: Tensor | None, pieces: Sequence[Piece], sink: Sink | None,
    scratch: tuple[Tensor, Tensor, Tensor], *, momentum: float, dampening: float, weight_decay: float, lr: float,
    update_x: bool, factors: tuple[Tensor | None, Tensor] | None = None, zero_keep: Tensor | None = None,
) -> None:
    """One SGD pass over a parameter, chunk by chunk, with the row reductions the groups need.

    With momentum ``d = b ← μb + (1−τ)(∇f + wd·x)``; without (``b`` None) ``d = ∇f + wd·x`` is formed in a
    chunk-sized scratch (or is ``∇f`` itself). An owned piece appends its reductions to ``sink`` (when
    given); then, if ``update_x``, ``x ← x − αd``, or with per-row ``factors = (m·a, m)`` already decided,
    ``x ← m·(a·x − αd)``. ``zero_keep``: 0/1 per row, 0 on rows of zero groups, whose gradient is dropped in
    the pass (the gradient of a parameter without momentum is masked in place). The reductions see ``x`` before
    its update.
    """
    xf, gf = x.view(-1), g.view(-1)
    bf = None if b is None else b.view(-1)
    for p in pieces:
        xc, gc = xf[p.lo:p.hi], gf[p.lo:p.hi]
        if bf is None:
            if zero_keep is not None:
                _mask_rows(gc, p, zero_keep)
            dc = gc if weight_decay == 0 else torch.add(gc, xc, alpha=weight_decay, out=scratch[1][: p.hi - p.lo])
        else:
            dc = bf[p.lo:p.hi]
            if dampening == 0:
                torch.add(gc, dc, alpha=momentum, out=dc)
            else:
                dc.mul_(momentum).add_(gc, alpha=1 - dampening)
            if zero_keep is not None:  # rows of zero groups: b and x are 0 there and stay 0
                _mask_rows(dc, p, zero_keep)
            if weight_decay != 0:
                dc.add_(xc, alpha=weight_decay * (1 - dampening))
        if sink is not None and p.owned:
            _reduce_piece(xc, dc, p, scratch[0], sink)
        if factors is not None:
            _scale_piece(xc, dc, p, factors, -lr)
        elif update_x:
            xc.add_(dc, alpha=-lr)


def adam_pass(
    x: Tensor, g: Tensor, m: Tensor, v: Tensor, pieces: Sequence[Piece], sink: Sink | None,
    scratch: tuple[Tensor, Tensor, Tensor], *, betas: tuple[float, float], eps: float, lr: float, weight_decay: float,
    decoupled: bool, bias1: float, bias2_sqrt: float, keep: Tensor | None,
    factors: tuple[Tensor | None, Tensor] | None = None, zero_keep: Tensor | None = None,
) -> float:
    """One Adam/AdamW pass over a parameter, chunk by chunk, with the row reductions (spec §5.1).

    ``m ← β1 m + (1−β1) g'``, ``v ← β2 v + (1−β2) g'²``, ``u = m / (sqrt(v) + eps·sqrt(1−β2^t))``, so that
    ``d = σ·u`` with ``σ = sqrt(1−β2^t)/(1−β1^t)``; an owned piece appends ``‖x‖², ⟨x,u⟩, ‖u‖²`` per row.
    Then either AdamW's decay and ``x ← x − α σ u`` right away, or, when ``keep`` (shaped like ``x``) is given,
    ``u`` is written there for `adam_finish`, or with per-row ``factors = (m·a, m)`` already decided
    ``x ← m·a·x − α σ m u``. Returns ``σ``.
    """
    sigma = bias2_sqrt / bias1
    eps_hat = eps * bias2_sqrt
    floor = sqrt_floor(eps_hat, x.dtype)
    xf, gf, mf, vf = x.view(-1), g.view(-1), m.view(-1), v.view(-1)
    kf = None if keep is None else keep.view(-1)
    beta1, beta2 = betas
    for p in pieces:
        lo, hi = p.lo, p.hi
        xc, gc, mc, vc = xf[lo:hi], gf[lo:hi], mf[lo:hi], vf[lo:hi]
        if weight_decay != 0 and not decoupled:
            gc = torch.add(gc, xc, alpha=weight_decay, out=scratch[1][: hi - lo])
        if zero_keep is not None:  # rows of zero groups: moments and x are 0 there and stay 0
            _mask_rows(gc, p, zero_keep)
        mc.lerp_(gc, 1 - beta1)
        vc.mul_(beta2).addcmul_(gc, gc, value=1 - beta2)
        u = scratch[2][: hi - lo] if kf is None else kf[lo:hi]
        if floor is None:
            torch.sqrt(vc, out=u).add_(eps_hat)
        else:  # zeros (moments of zero groups) and denormals are slow in sqrt; below `floor` they change nothing
            torch.clamp(vc, min=floor, out=u).sqrt_().add_(eps_hat)
        torch.div(mc, u, out=u)
        if sink is not None and p.owned:
            _reduce_piece(xc, u, p, scratch[0], sink)
        if factors is not None:  # m·a holds AdamW's decay
            _scale_piece(xc, u, p, factors, -lr * sigma)
        elif kf is None:
            if decoupled and weight_decay != 0:
                xc.mul_(1 - lr * weight_decay)
            xc.add_(u, alpha=-lr * sigma)
    return sigma


def _mask_rows(t: Tensor, p: Piece, keep: Tensor) -> None:
    """Multiplies the rows of piece ``p`` of ``t`` by their 0/1 ``keep`` (zero groups' rows get no gradient)."""
    n = 1 if p.partial else p.r1 - p.r0
    t.view(n, -1).mul_(keep[p.r0:p.r1, None])


def _scale_piece(xc: Tensor, dc: Tensor, p: Piece, factors: tuple[Tensor | None, Tensor], step: float) -> None:
    """``x ← ma·x + step·m·d`` on one piece (in cache), rows' factors ``(ma, m)``; ``ma`` None: ``a = 1``, so
    ``x ← m·(x + step·d)`` (the plain step, then the rows' multipliers)."""
    n = 1 if p.partial else p.r1 - p.r0
    ma, m = factors
    if ma is None:
        xc.add_(dc, alpha=step).view(n, -1).mul_(m[p.r0:p.r1, None])
    else:
        xc.view(n, -1).mul_(ma[p.r0:p.r1, None]).addcmul_(dc.view(n, -1), m[p.r0:p.r1, None], value=step)


def _finish(x: Tensor, src: Tensor, pieces: Sequence[Piece], a: Tensor, m: Tensor | None, step: float) -> None:
    """``x ← a·x + step·m·src`` row-wise over the pieces: ``a`` already holds ``m·a`` (per-row factors of this
    parameter; ``m`` None: all 1), so that each piece takes two in-place ops."""
    xf, sf = x.view(-1), src.view(-1)
    for p in pieces:
        n = 1 if p.partial else p.r1 - p.r0
        xv, sv = xf[p.lo:p.hi].view(n, -1), sf[p.lo:p.hi].view(n, -1)
        if m is None:
            xv.mul_(a[p.r0:p.r1, None]).add_(sv, alpha=step)
        else:
            xv.mul_(a[p.r0:p.r1, None]).addcmul_(sv, m[p.r0:p.r1, None], value=step)


def sgd_finish(x: Tensor, source: Tensor, pieces: Sequence[Piece], *, lr: float, x_in_d: float, a: Tensor,
               m: Tensor | None) -> None:
    """The deferred SGD update ``x ← m·(a·x − α d)`` with ``d = source + x_in_d·x`` (the momentum buffer, or the
    gradient with the coupled decay); ``a`` is given as ``m·a``."""
    if x_in_d:
        a = a - lr * x_in_d * (1 if m is None else m)
    _finish(x, source, pieces, a, m, -lr)


def adam_finish(x: Tensor, u: Tensor, pieces: Sequence[Piece], *, lr: float, sigma: float, a: Tensor,
                m: Tensor | None) -> None:
    """The deferred Adam update ``x ← m·(a·x − α σ u)`` from the ``u`` kept by `adam_pass` (``a`` given as
    ``m·a``, AdamW's decay included)."""
    _finish(x, u, pieces, a, m, -lr * sigma)


def reduce_rest(out: Tensor, items: Sequence[tuple[Rows, Tensor, Tensor]], cache: dict) -> None:
    """Adds ``‖x‖², ⟨x,d⟩, ‖d‖²`` of each row of the non-chunked parameters into ``out`` (global rows × 3).

    One-row parameters (whole-parameter slices): two foreach norms and a BLAS dot each. Parameters cut into rows
    along dim 0: rows of equal width from all such parameters are concatenated into one matrix per width and
    reduced with three row sums, a few tensor calls per distinct width however many parameters and rows there
    are. Rows along another dimension (ConvTranspose channels) are reduced per parameter.
    """
    whole: dict[torch.device, list[tuple[Rows, Tensor, Tensor]]] = {}
    rowed: dict[tuple[torch.device, int], list[tuple[Rows, Tensor, Tensor]]] = {}
    for it in items:
        rows, x, d = it
        if rows.n == 1:
            whole.setdefault(x.device, []).append(it)
        elif rows.dim == 0 and x.is_contiguous() and d.is_contiguous():
            rowed.setdefault((x.device, x.numel() // rows.n), []).append(it)
        else:
            dim = rows.dim or 0
            xv, dv = x.movedim(dim, 0).reshape(rows.n, -1), d.movedim(dim, 0).reshape(rows.n, -1)
            vals = torch.stack(((xv * xv).sum(1), (xv * dv).sum(1), (dv * dv).sum(1)), dim=1)
            out[rows.offset:rows.offset + rows.n] += vals.to(out.device, out.dtype)
    for group in whole.values():
        xs, ds = [x for _, x, _ in group], [d for _, _, d in group]
        vals = torch.stack([*torch._foreach_norm(xs), *torch._foreach_norm(ds),
                            *(torch.dot(x.reshape(-1), d.reshape(-1)) for x, d in zip(xs, ds, strict=True))])
        vals = vals.to(out.device, out.dtype).view(3, -1)
        out.index_add_(0, _rows_index(cache, group), torch.stack((vals[0] ** 2, vals[2], vals[1] ** 2), dim=1))
    for (_, width), group in rowed.items():
        xm = torch.cat([x.reshape(-1) for _, x, _ in group]).view(-1, width)
        dm = torch.cat([d.reshape(-1) for _, _, d in group]).view(-1, width)
        vals = torch.stack(((xm * xm).sum(1), (xm * dm).sum(1), (dm * dm).sum(1)), dim=1)
        out.index_add_(0, _rows_index(cache, group), vals.to(out.device, out.dtype))


def _rows_index(cache: dict, group: Sequence[tuple[Rows, Tensor, Tensor]]) -> Tensor:
    """Global rows of a list of parameters, in order (cached per list)."""
    key = ("rowidx", tuple(r.pos for r, _, _ in group))
    if key not in cache:
        cache[key] = torch.cat([torch.arange(r.n) + r.offset for r, _, _ in group])
    return cache[key]
