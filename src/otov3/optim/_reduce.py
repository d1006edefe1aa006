"""Per-slice reductions ``‖x‖²``, ``⟨x,d⟩``, ``‖d‖²`` and the cache-blocked passes that yield them cheaply.

Large parameters whose optimizer buffers exist go through `sgd_pass` / `adam_pass`: chunk by chunk
(`_layout.CHUNK`), the buffer update, the three dot products H2SPG needs and, when allowed, the parameter update
all run while the chunk is in cache. That is one trip through memory where torch.optim.SGD's foreach step makes
four (and allocates ``∇f + wd·x``), which is how scores and λ steps fit in the time of a plain step. Other
parameters (small, non-contiguous, first step, no momentum) use foreach ops; their reductions are batched in
`gather` / `gather_scalar`. Parameters holding redundant slices in the hybrid phase finish their step in
`sgd_finish` / `adam_finish`, once the λ decision is known."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Below this size a tensor is cheap to handle with foreach ops or by concatenation: no chunking.
FUSE_MIN = 16384

Piece = tuple[int, int, int]


def fusable(x: Tensor, g: Tensor, *buffers: Tensor | None) -> bool:
    """Whether a parameter can take a cache-blocked pass (its buffers exist and everything is contiguous)."""
    return (
        x.numel() >= FUSE_MIN
        and x.is_contiguous()
        and g.is_contiguous()
        and g.dtype == x.dtype
        and all(b is not None and b.is_contiguous() and b.dtype == x.dtype for b in buffers)
    )


def sgd_pass(
    x: Tensor,
    g: Tensor,
    b: Tensor | None,
    pieces: Sequence[Piece],
    marks: list[int],
    dots: list[Tensor],
    scratch: Tensor | None,
    *,
    momentum: float,
    dampening: float,
    weight_decay: float,
    lr: float,
    update_x: bool,
) -> None:
    """One SGD pass over a parameter, chunk by chunk, with the reductions H2SPG needs.

    With momentum ``d = b ← μb + (1−τ)(∇f + wd·x)``; without (``b`` None) ``d = ∇f + wd·x`` is formed in the
    chunk-sized ``scratch`` (or is ``∇f`` itself). A marked piece appends its mark to ``marks`` and
    ``‖x‖², ⟨x,d⟩, ‖d‖²`` to ``dots``; then, if ``update_x``, ``x ← x − αd``. The reductions see ``x`` before
    its update (spec §5.2, §5.4).
    """
    xf, gf = x.view(-1), g.view(-1)
    bf = None if b is None else b.view(-1)
    for lo, hi, mark in pieces:
        xc, gc = xf[lo:hi], gf[lo:hi]
        if bf is None:
            dc = gc if weight_decay == 0 else torch.add(gc, xc, alpha=weight_decay, out=scratch[: hi - lo])
        else:
            dc = bf[lo:hi]
            if dampening == 0:
                torch.add(gc, dc, alpha=momentum, out=dc)
            else:
                dc.mul_(momentum).add_(gc, alpha=1 - dampening)
            if weight_decay != 0:
                dc.add_(xc, alpha=weight_decay * (1 - dampening))
        if mark >= 0:
            marks.append(mark)
            dots += (torch.dot(xc, xc), torch.dot(xc, dc), torch.dot(dc, dc))
        if update_x:
            xc.add_(dc, alpha=-lr)


def sgd_finish(
    x: Tensor, source: Tensor, pieces: Sequence[Piece], *, lr: float, x_in_d: float,
    scale: dict[int, tuple[float, float]],
) -> None:
    """The deferred update of a parameter holding redundant slices (after H2SPG's λ decision).

    The direction is ``d = source + x_in_d·x``: the momentum buffer (``x_in_d = 0``), or without momentum the
    gradient with the coupled decay ``x_in_d = wd``. ``x ← a·x − α·s·d`` on a piece whose mark maps to
    ``(a, s)`` in ``scale``, ``x ← x − αd`` elsewhere.
    """
    xf, sf = x.view(-1), source.view(-1)
    for lo, hi, mark in pieces:
        xc = xf[lo:hi]
        a, s = scale.get(mark, (1.0, 1.0))
        factor = a - lr * s * x_in_d
        if factor != 1.0:
            xc.mul_(factor)
        xc.add_(sf[lo:hi], alpha=-lr * s)


def adam_pass(
    x: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    pieces: Sequence[Piece],
    marks: list[int],
    dots: list[Tensor],
    scratch: tuple[Tensor, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    lr: float,
    weight_decay: float,
    decoupled: bool,
    bias1: float,
    bias2_sqrt: float,
    keep: Tensor | None,
) -> float:
    """One Adam/AdamW pass over a parameter, chunk by chunk, with the reductions H2SPG needs (spec §5.1).

    ``m ← β1 m + (1−β1) g'``, ``v ← β2 v + (1−β2) g'²``, ``u = m / (sqrt(v) + eps·sqrt(1−β2^t))``, so that
    ``d = σ·u`` with ``σ = sqrt(1−β2^t)/(1−β1^t)`` (one division less per element than the textbook order);
    a marked piece appends ``‖x‖², ⟨x,u⟩, ‖u‖²``. Then either AdamW's decay and ``x ← x − α σ u`` right away,
    or, when ``keep`` (a tensor shaped like ``x``) is given, ``u`` is written there for `adam_finish`.
    ``scratch`` holds two chunk-sized buffers: no per-step allocation. Returns ``σ``.
    """
    sigma = bias2_sqrt / bias1
    eps_hat = eps * bias2_sqrt
    xf, gf, mf, vf = x.view(-1), g.view(-1), m.view(-1), v.view(-1)
    kf = None if keep is None else keep.view(-1)
    beta1, beta2 = betas
    for lo, hi, mark in pieces:
        xc, gc, mc, vc = xf[lo:hi], gf[lo:hi], mf[lo:hi], vf[lo:hi]
        if weight_decay != 0 and not decoupled:
            gc = torch.add(gc, xc, alpha=weight_decay, out=scratch[1][: hi - lo])
        mc.lerp_(gc, 1 - beta1)
        vc.mul_(beta2).addcmul_(gc, gc, value=1 - beta2)
        u = torch.sqrt(vc, out=scratch[0][: hi - lo] if kf is None else kf[lo:hi]).add_(eps_hat)
        torch.div(mc, u, out=u)
        if mark >= 0:
            marks.append(mark)
            dots += (torch.dot(xc, xc), torch.dot(xc, u), torch.dot(u, u))
        if kf is None:
            if decoupled and weight_decay != 0:
                xc.mul_(1 - lr * weight_decay)
            xc.add_(u, alpha=-lr * sigma)
    return sigma


def adam_finish(
    x: Tensor, u: Tensor, pieces: Sequence[Piece], *, lr: float, decay: float, sigma: float,
    scale: dict[int, tuple[float, float]],
) -> None:
    """The deferred Adam update (`sgd_finish` for Adam) from the ``u`` kept by `adam_pass`.

    ``x ← a·(1 − decay)·x − α·s·σ·u`` on pieces whose mark maps to ``(a, s)``, the plain step elsewhere.
    """
    xf, uf = x.view(-1), u.view(-1)
    for lo, hi, mark in pieces:
        xc = xf[lo:hi]
        a, s = scale.get(mark, (1.0, 1.0))
        if a != 1.0 or decay != 0:
            xc.mul_(a * (1 - decay))
        xc.add_(uf[lo:hi], alpha=-lr * s * sigma)


def gather(
    n_slices: int,
    marks: Sequence[int],
    dots: Sequence[Tensor],
    rest: Sequence[tuple[int, Tensor, Tensor | None]],
    index_cache: dict[tuple[int, ...], Tensor],
) -> Tensor:
    """Assembles the ``(n_slices, 3)`` float64 matrix of ``‖x‖², ⟨x,d⟩, ‖d‖²`` per slice.

    Args:
        n_slices: rows of the result.
        marks: slice row of each `sgd_pass` chunk (a slice may span several chunks: they add up).
        dots: the chunks' three dot products, flat.
        rest: ``(row, x, d)`` of the other slices: small ones are reduced together after one concatenation,
            larger ones with foreach norms and BLAS dots.
        index_cache: element-to-row index of a set of small slices, kept across steps.
    """
    small = [r for r in rest if r[1].numel() < FUSE_MIN]
    large = [r for r in rest if r[1].numel() >= FUSE_MIN]
    out = torch.zeros(n_slices, 3, dtype=torch.float64)
    if marks:
        out.index_add_(0, torch.tensor(marks), torch.stack(dots).view(-1, 3).double())
    if small:
        rows = tuple(r for r, _, _ in small)
        xs = [x.reshape(-1) for _, x, _ in small]
        ds = [torch.zeros_like(x) if d is None else d.reshape(-1) for x, (_, _, d) in zip(xs, small, strict=True)]
        index = index_cache.get(rows)
        if index is None:
            index = torch.repeat_interleave(torch.tensor(rows), torch.tensor([x.numel() for x in xs]))
            index_cache[rows] = index
        x, d = torch.cat(xs), torch.cat(ds)
        out.index_add_(0, index, torch.stack((x * x, x * d, d * d), dim=1).double())
    if large:
        xs = [x for _, x, _ in large]
        ds = [torch.zeros_like(x) if d is None else d for _, x, d in large]
        vals = torch.stack((*torch._foreach_norm(xs), *torch._foreach_norm(ds),
                            *(torch.dot(x.reshape(-1), d.reshape(-1)) for x, d in zip(xs, ds, strict=True))))
        vals = vals.double().view(3, -1)
        out[torch.tensor([r for r, _, _ in large])] = torch.stack((vals[0] ** 2, vals[2], vals[1] ** 2), dim=1)
    return out


def gather_scalar(
    n_slices: int,
    marks: Sequence[int],
    dots: Sequence[Tensor],
    rest: Sequence[tuple[int, Tensor, Tensor | None]],
) -> list[list[float]]:
    """`gather` for few slices: one stack and one ``tolist`` instead of a dozen small tensor ops.

    Returns ``[‖x‖², ⟨x,d⟩, ‖d‖²]`` per slice as Python floats.
    """
    xs = [x for _, x, _ in rest]
    with_d = [(x, d) for _, x, d in rest if d is not None]
    values: list[Tensor] = list(dots)
    if rest:
        values += torch._foreach_norm(xs + [d for _, d in with_d])
        values += [torch.dot(_flat(x), _flat(d)) for x, d in with_d]
    flat = torch.stack(values).tolist() if values else []
    out = [[0.0, 0.0, 0.0] for _ in range(n_slices)]
    for j, mark in enumerate(marks):
        row = out[mark]
        row[0] += flat[3 * j]
        row[1] += flat[3 * j + 1]
        row[2] += flat[3 * j + 2]
    at = len(dots)
    x_norms = flat[at:at + len(xs)]
    d_norms = iter(flat[at + len(xs):at + len(xs) + len(with_d)])
    rest_dots = iter(flat[at + len(xs) + len(with_d):])
    for (row, _, d), x_norm in zip(rest, x_norms, strict=True):
        out[row][0] = x_norm * x_norm
        if d is not None:
            d_norm = next(d_norms)
            out[row][1] = next(rest_dots)
            out[row][2] = d_norm * d_norm
    return out


def _flat(t: Tensor) -> Tensor:
    return t if t.dim() == 1 else t.reshape(-1)
