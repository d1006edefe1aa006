"""Small parameters stepped as one flat vector: their optimizer state lives in one buffer per kind.

A small tensor costs a torch call or more per operation, whatever its size: on an 80-parameter network of
small convolutions and norms, torch.optim.SGD's loop (about 10 µs per parameter) and our foreach ops (1–2 µs per
tensor per op) are dominated by per-tensor overhead, and the per-row reductions ``‖x‖², ⟨x,d⟩, ‖d‖²`` would add
three more calls per tensor. A `FlatPack` keeps the momentum / Adam moments of the small parameters of one param
group and one (dtype, device) in one flat buffer; ``state[p]`` holds views of it shaped like ``p``, so
``state_dict()`` saves per-parameter tensors that torch.optim can load. Each step copies the gradients (and the
parameters, when needed) into flat scratch with one foreach copy, runs the base direction of spec §5.1 as a few
flat ops, reduces the rows (laid out so that rows of equal width are adjacent: one ``sum`` per distinct width),
and writes the update back with one foreach call. The parameters themselves stay the user's tensors, so
``p.data = …``, ``model.to()``, DDP and deep copies work as with torch.optim; state loaded from a state dict
(or made by the per-tensor path) is adopted into the buffer at the next step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.optim._layout import RowLayout

SGD_KEYS = ("momentum_buffer",)
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


class FlatPack:
    """The flat layout of some small parameters (positions ``positions`` among the optimizer's parameters).

    Members are ordered by the width of their rows (parameters no group owns last), so that the rows of one width
    form one ``(R, w)`` block of the flat vector; ``rows`` are the global row numbers of the blocks' rows in order.
    """

    def __init__(self, positions: Sequence[int], params: Sequence[Tensor], layout: RowLayout) -> None:
        def width(i: int) -> float:
            rows = layout.rows.get(positions[i])
            return math.inf if rows is None else params[i].numel() // rows.n

        order = sorted(range(len(positions)), key=lambda i: (width(i), positions[i]))
        self.positions = tuple(positions[i] for i in order)
        self.params = [params[i] for i in order]
        self.shapes = [p.shape for p in self.params]
        p0 = self.params[0]
        self.dtype, self.device = p0.dtype, p0.device
        self.numel = sum(p.numel() for p in self.params)
        self.blocks: list[tuple[int, int, int]] = []  # (lo, hi, w) of rows of width w
        rows, elem_rows, lo = [], [], 0
        for p, pos in zip(self.params, self.positions, strict=True):
            r, hi = layout.rows.get(pos), lo + p.numel()
            if r is not None:
                w = p.numel() // r.n
                if self.blocks and self.blocks[-1][2] == w and self.blocks[-1][1] == lo:
                    self.blocks[-1] = (self.blocks[-1][0], hi, w)
                else:
                    self.blocks.append((lo, hi, w))
                rows.append(torch.arange(r.n) + r.offset)
                elem_rows.append((torch.arange(r.n) + r.offset).repeat_interleave(w))
            lo = hi
        self.rowed = sum(e.numel() for e in elem_rows)  # members with rows come first: elements [0, rowed)
        self.rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        self.elem_rows = torch.cat(elem_rows).to(self.device) if elem_rows else self.rows  # element -> global row
        self.buffers: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        for name in ("x", "g", "u"):  # scratch: the gathered parameters, gradients, a direction
            self._new(name)
        self.prod = torch.empty(3, self.numel, dtype=self.dtype, device=self.device)
        self.zero_key: Any = None
        self.keep: Tensor | None = None  # 0/1 per element: 0 on rows of zero groups (their gradient is dropped)

    def _new(self, name: str, fill: Tensor | None = None) -> list[Tensor]:
        flat = torch.empty(self.numel, dtype=self.dtype, device=self.device) if fill is None else fill
        views, lo = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            views.append(flat[lo:lo + n].view(shape))
            lo += n
        self.buffers[name] = flat
        self.views[name] = views
        return views

    # ------------------------------------------------------------------------------------------------ state
    def bind(self, states: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
        """Whether ``states`` hold this pack's buffers: ``"bound"``, ``"fresh"`` (no member has state yet, buffers
        start now), ``"adopted"`` (every member had its own tensors; copied into the buffer, ``state`` now holds
        views) or ``"mixed"`` (some members have state, some not, or Adam step counts differ: the caller takes
        the per-tensor path this step)."""
        first = keys[0]
        views = self.views.get(first)
        if views is not None and all(st.get(first) is v for st, v in zip(states, views, strict=True)) and \
                all(st.get(k) is v for k in keys[1:] for st, v in zip(states, self.views[k], strict=True)):
            return "bound" if "exp_avg" not in keys or _same(st["step"] for st in states) else "mixed"
        have = [all(k in st for k in keys) for st in states]
        if not any(have) and not any(k in st for st in states for k in keys):
            return "fresh"
        if not all(have) or ("exp_avg" in keys and not _same(st.get("step") for st in states)):
            return "mixed"
        for k in keys:
            if any(st[k].shape != shape for st, shape in zip(states, self.shapes, strict=True)):
                return "mixed"
            flat = torch.cat([st[k].detach().reshape(-1).to(self.dtype) for st in states]).to(self.device)
            for st, v in zip(states, self._new(k, flat), strict=True):
                st[k] = v
        return "adopted"

    def start(self, states: Sequence[dict[str, Any]], keys: Sequence[str], values: dict[str, Tensor]) -> None:
        """Fresh state: buffers filled from flat ``values``, members' ``state`` set to views of them."""
        for k in keys:
            for st, v in zip(states, self._new(k, values[k]), strict=True):
                st[k] = v

    def zero_mask(self, key: Any, zero_rows: dict[int, Tensor], frozen: frozenset[int]) -> Tensor | None:
        """0/1 per element, 0 on the rows of zero groups (cached per ``key``); None when there are none."""
        if key != self.zero_key:
            self.zero_key = key
            keep = torch.ones(self.numel, dtype=self.dtype, device=self.device)
            hit = False
            for pos, v in zip(self.positions, self.views["x"], strict=True):
                lo = v.storage_offset() - self.buffers["x"].storage_offset()
                if pos in frozen:
                    keep[lo:lo + v.numel()] = 0
                    hit = True
                elif pos in zero_rows:
                    keep[lo:lo + v.numel()].view(v.shape[0] if v.dim() else 1, -1)[zero_rows[pos].cpu()] = 0
                    hit = True
            self.keep = keep if hit else None
        return self.keep

    # ------------------------------------------------------------------------------------------------ maths
    def reduce(self, d: Tensor) -> Tensor:
        """``(S, 3)`` ``‖x‖², ⟨x,d⟩, ‖d‖²`` of the rows `rows` (``x`` is the gathered `x`): three flat products,
        then one row sum per block of equal width."""
        x, prod = self.buffers["x"], self.prod
        torch.mul(x, x, out=prod[0])
        torch.mul(x, d, out=prod[1])
        torch.mul(d, d, out=prod[2])
        sums = [prod[:, lo:hi].view(3, (hi - lo) // w, w).sum(2) for lo, hi, w in self.blocks]
        return (torch.cat(sums, dim=1) if len(sums) > 1 else sums[0]).t()

    def scale_rows(self, x: Tensor, d: Tensor, ma: Tensor | None, m: Tensor, keep: float, step: float) -> None:
        """``x ← ma·x + step·m·d`` per element from per-row factors of the global rows (``ma = m·a``, None when
        ``a = 1``; elements of no row: ``x ← keep·x + step·d``), in place on the flat ``x``."""
        r = self.rowed
        if r and ma is None:  # a = 1: x ← m·(x + step·d)
            x[:r].add_(d[:r], alpha=step).mul_(torch.index_select(m, 0, self.elem_rows, out=self.prod[0, :r]))
        elif r:
            idx, scratch = self.elem_rows, self.prod
            x[:r].mul_(torch.index_select(ma, 0, idx, out=scratch[0, :r]))
            x[:r].addcmul_(d[:r], torch.index_select(m, 0, idx, out=scratch[1, :r]), value=step)
        if r < self.numel:
            if keep != 1.0:
                x[r:].mul_(keep)
            x[r:].add_(d[r:], alpha=step)

    def views_of(self, flat: Tensor) -> list[Tensor]:
        """The per-member views of one of this pack's flat buffers."""
        for name, buf in self.buffers.items():
            if buf is flat:
                return self.views[name]
        raise KeyError("not a buffer of this pack")


def _same(values: Any) -> bool:
    it = iter(values)
    first = next(it, None)
    return first is not None and all(v == first for v in it)


def sgd_step(pack: FlatPack, grads: Sequence[Tensor], states: Sequence[dict[str, Any]], *, momentum: float,
             dampening: float, weight_decay: float, need_x: bool) -> Tensor | None:
    """The SGD direction of spec §5.1 for the pack (torch.optim.SGD's op order, so values equal the foreach
    path's bit for bit): ``d = b ← μb + (1−τ)(∇f + wd·x)`` (``b ← ∇f + wd·x`` at first), or ``∇f + wd·x``
    without momentum. Returns the flat ``d``, or None when the members' state is mixed (take the per-tensor
    path). ``need_x``: gather the parameters into ``pack.x`` (reductions, row factors)."""
    if momentum != 0:
        status = pack.bind(states, SGD_KEYS)
        if status == "mixed":
            return None
    g = pack.buffers["g"]
    torch._foreach_copy_(pack.views["g"], grads)
    if pack.keep is not None:
        g.mul_(pack.keep)
    x = pack.buffers["x"]
    if need_x or weight_decay != 0:
        torch._foreach_copy_(pack.views["x"], pack.params)
    if momentum == 0:
        return torch.add(g, x, alpha=weight_decay, out=pack.buffers["u"]) if weight_decay != 0 else g
    if status == "fresh":
        b = g.clone()
        if weight_decay != 0:
            b.add_(x, alpha=weight_decay)
        pack.start(states, SGD_KEYS, {"momentum_buffer": b})
        return b
    b = pack.buffers["momentum_buffer"]
    b.mul_(momentum).add_(g, alpha=1 - dampening)
    if weight_decay != 0:
        b.add_(x, alpha=weight_decay * (1 - dampening))
    return b


def adam_step(pack: FlatPack, grads: Sequence[Tensor], states: Sequence[dict[str, Any]], *,
              betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool, official_init: bool,
              need_x: bool) -> tuple[Tensor, float] | None:
    """The Adam/AdamW moments of spec §5.1 for the pack, updated in place with torch.optim.Adam's ops, and its
    denominator ``sqrt(v)/sqrt(1−β2^t) + eps`` in ``pack.u``, so that ``d = m / denom / (1−β1^t)``. Returns
    ``(denom, 1/(1−β1^t))``, or None when the members' state is mixed (take the per-tensor path)."""
    status = pack.bind(states, ADAM_KEYS)
    if status == "mixed":
        return None
    g, x = pack.buffers["g"], pack.buffers["x"]
    torch._foreach_copy_(pack.views["g"], grads)
    if pack.keep is not None:
        g.mul_(pack.keep)
    if need_x or weight_decay != 0:
        torch._foreach_copy_(pack.views["x"], pack.params)
    if weight_decay != 0 and not decoupled:
        g.add_(x, alpha=weight_decay)
    beta1, beta2 = betas
    if status == "fresh":
        for st in states:
            st["step"] = 0
        if official_init:
            pack.start(states, ADAM_KEYS, {"exp_avg": g.clone(), "exp_avg_sq": g * g})
        else:
            pack.start(states, ADAM_KEYS, {k: torch.zeros_like(g) for k in ADAM_KEYS})
    m, v = pack.buffers["exp_avg"], pack.buffers["exp_avg_sq"]
    if status != "fresh" or not official_init:
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    for st in states:
        st["step"] += 1
    t = states[0]["step"]
    bias1, bias2_sqrt = 1 - beta1 ** t, math.sqrt(1 - beta2 ** t)
    denom = pack.buffers["u"]
    floor = sqrt_floor(eps, pack.dtype, scale=bias2_sqrt)
    if floor is None:
        torch.sqrt(v, out=denom)
    else:
        torch.clamp(v, min=floor, out=denom).sqrt_()
    denom.div_(bias2_sqrt).add_(eps)
    return denom, 1 / bias1


def sqrt_floor(eps: float, dtype: torch.dtype, *, scale: float = 1.0) -> float | None:
    """A floor for ``v`` below which ``sqrt(v)/scale + eps`` rounds to ``eps`` in ``dtype`` (``sqrt(v)/scale``
    under an eighth of eps's ulp), as a power of two, or None. Clamping ``v`` to it leaves the Adam denominator
    unchanged bit for bit and keeps exact zeros (the moments of zero groups) and denormals out of ``sqrt``,
    which is 6× (zeros) to 35× (denormals) slower on them than on normal values on this x86 CPU."""
    if not dtype.is_floating_point or not 0 < scale <= 1:
        return None
    info = torch.finfo(dtype)
    if not math.isfinite(eps) or eps < info.tiny:
        return None
    # exponents from the float64 values: the dtype's rounding can only raise eps's (a larger ulp), and the
    # power of two below ``scale`` keeps ``sqrt(floor)/scale`` under the bound
    ulp = 2.0 ** (math.frexp(eps)[1] - 1) * info.eps
    root = ulp / 8 * 2.0 ** (math.frexp(scale)[1] - 1)
    floor = root * root
    return floor if floor >= info.tiny else None
