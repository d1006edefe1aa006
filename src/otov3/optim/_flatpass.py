"""The flat step of the small parameters: `FlatPass` (mixed into `GroupOptimizer`) builds the `FlatPack`s and
runs their base directions, reductions and updates (spec §5.1); parameters a pack cannot take this step fall back
to the per-tensor path of `_pass`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from otov3.optim import _reduce
from otov3.optim._flat import FlatPack, adam_step, sgd_step

if TYPE_CHECKING:
    from otov3.optim._pass import StepWork

# Packs hold at most this many scalars, so that the few flat ops of one pack's step run in cache.
PACK_SIZE = 1 << 18


class FlatPass:
    """Mixed into `GroupOptimizer` (uses its `_layout`, `_flat_params`, `param_groups`, `state`, `_caches`)."""

    def _packs_of(self, gi: int, first: int) -> tuple[list[FlatPack], list[tuple[int, Tensor]]]:
        """Param group ``gi``'s `FlatPack`s (small parameters, rows along dim 0 or whole; one per dtype and
        device) and its other parameters as ``(position, parameter)`` (cached per group)."""
        key = ("packs", gi, _reduce.FUSE_MIN)
        if key not in self._caches:
            lay, kinds, others = self._layout, {}, []
            for pos, p in enumerate(self.param_groups[gi]["params"], start=first):
                rows = lay.rows.get(pos)
                if lay.numel[pos] < _reduce.FUSE_MIN and (rows is None or rows.dim in (None, 0)) and \
                        p.dtype.is_floating_point:
                    kinds.setdefault((p.dtype, p.device), []).append((pos, p))
                else:
                    others.append((pos, p))
            packs = [FlatPack([pos for pos, _ in run], [p for _, p in run], lay)
                     for items in kinds.values() for run in _runs(items, lay)]
            self._caches[key] = (packs, others)
        return self._caches[key]

    def _pack_step(self, pack: FlatPack, group: dict[str, Any], work: StepWork, watch: frozenset[int],
                   frozen: frozenset[int], zero_rows: dict[int, Tensor], all_grads: list[Tensor | None]) -> bool:
        """The flat step of one pack (directions now; reductions and the update queued on ``work``). False when
        the pack cannot take it this step (a missing or sparse gradient, mixed state, a parameter moved to
        another dtype or device): its parameters then take the per-tensor path."""
        params = pack.params
        grads = [all_grads[i] for i in pack.positions]
        p0 = params[0]  # moving a model (`.to()`, `.half()`) moves every parameter
        if any(g is None for g in grads) or p0.dtype != pack.dtype or p0.device != pack.device:
            return False
        states = [self.state[p] for p in params]
        watched = not watch.isdisjoint(pack.positions)
        pack.zero_mask(("zero", self._loads, len(self.state[self.RUN_KEY]["zero"])), zero_rows, frozen)
        lr, wd, variant = group["lr"], group["weight_decay"], self.defaults["variant"]
        keep = 1 - lr * wd if variant == "adamw" else 1.0
        try:  # a sparse gradient, or one on another device, is refused by the copy before anything changes
            if variant == "sgd":
                d = sgd_step(pack, grads, states, momentum=group["momentum"], dampening=group["dampening"],
                             weight_decay=wd, need_x=watched)
            else:
                out = adam_step(pack, grads, states, betas=tuple(group["betas"]), eps=group["adam_eps"],
                                weight_decay=wd, decoupled=variant == "adamw",
                                official_init=self.defaults["official_adam_init"], need_x=watched)
        except RuntimeError:
            return False
        if variant == "sgd":
            if d is None:
                return False
            run = _PackRun(pack, d, None, 1.0, -lr, keep, x_fresh=watched or wd != 0)
        else:
            if out is None:
                return False
            denom, scale = out
            run = _PackRun(pack, None, denom, scale, -lr * scale, keep, x_fresh=watched or wd != 0)
            for pos in pack.positions:
                work.scale[pos] = scale
        if watched:  # reduced now, while the pack is in cache
            work.pack_sums.append((pack, pack.reduce(run.direction())))
        work.packs.append(run.finish)
        work.deferred_pos.update(pack.positions)
        return True


class _PackRun:
    """One step of a `FlatPack`: its direction ``d = scale·u`` (SGD: ``u`` = the flat ``d``; Adam: ``u = m/denom``,
    formed only when needed) and the update, applied after the policy's decision."""

    def __init__(self, pack: FlatPack, u: Tensor | None, denom: Tensor | None, scale: float, step: float,
                 keep: float, *, x_fresh: bool) -> None:
        self.pack, self.u, self.denom, self.step, self.keep, self.x_fresh = pack, u, denom, step, keep, x_fresh

    def direction(self) -> Tensor:
        if self.u is None:  # Adam: u = m / denom, in place of denom
            self.u = torch.div(self.pack.buffers["exp_avg"], self.denom, out=self.denom)
            self.denom = None
        return self.u

    def finish(self, factors: dict[str, dict[Any, Tensor]] | None, a_is_1: bool = False) -> None:
        """``x ← m·(a·x + step·u)`` with the step's per-row factor buffers; None: the plain step, with
        torch.optim's own ops (SGD ``x ← x − α d``; Adam ``x ← keep·x − α m/denom/(1−β1^t)``)."""
        pack = self.pack
        if factors is None or not pack.rows.numel():
            if self.denom is None and self.keep == 1.0:
                torch._foreach_add_(pack.params, pack.views_of(self.u), alpha=self.step)
                return
            x = self._x()
            if self.keep != 1.0:
                x.mul_(self.keep)
            if self.denom is not None:
                x.addcdiv_(pack.buffers["exp_avg"], self.denom, value=self.step)
            else:
                x.add_(self.u, alpha=self.step)
        else:
            kind = (pack.dtype, pack.device)
            u, x = self.direction(), self._x()
            ma = None if a_is_1 else factors["ma"][kind]
            pack.scale_rows(x, u, ma, factors["m"][kind], self.keep, self.step)
        torch._foreach_copy_(pack.params, pack.views["x"])

    def _x(self) -> Tensor:
        if not self.x_fresh:
            torch._foreach_copy_(self.pack.views["x"], self.pack.params)
        return self.pack.buffers["x"]


def _runs(items: list[tuple[int, Tensor]], lay: Any) -> list[list[tuple[int, Tensor]]]:
    """Members of one kind cut into packs of at most `PACK_SIZE` scalars, ordered by row width (so that each pack
    has few blocks of equal width): each pack's step then runs in cache."""
    def width(item: tuple[int, Tensor]) -> float:
        rows = lay.rows.get(item[0])
        return math.inf if rows is None else item[1].numel() // rows.n

    out: list[list[tuple[int, Tensor]]] = [[]]
    size = 0
    for item in sorted(items, key=lambda it: (width(it), it[0])):
        if out[-1] and size + item[1].numel() > PACK_SIZE:
            out.append([])
            size = 0
        out[-1].append(item)
        size += item[1].numel()
    return out

