"""The step of a param group through the fused C kernels (`_native`): one call per dtype for the directions, the
row reductions and every update that need not wait, and one call per dtype for the updates that waited for the
policy's decision. Parameters the kernels cannot take (no gradient, frozen, sparse, GPU, half precision,
non-contiguous, rows along dim ≥ 1, Adam's official first step) are handed back to the eager paths of `_pass`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from otov3.optim import _native
from otov3.optim._flat import sqrt_floor

if TYPE_CHECKING:
    from otov3.optim._pass import StepWork


class NativePass:
    """Mixed into `GroupOptimizer` (uses its `_layout`, `_flat_params`, `state`, `defaults`, `_factor_bufs`)."""

    def _native_group(self, group: dict[str, Any], positions: range, work: StepWork, watch: frozenset[int],
                      frozen: frozenset[int], grads: list[Tensor | None], *, defer: bool,
                      hit: frozenset[int]) -> list[tuple[int, Tensor]]:
        """Steps the parameters of ``group`` (at ``positions``) that the kernels take; returns the others as
        ``(position, parameter)``. ``hit``: parameters whose rows take an early decision's factors in the pass."""
        sgd = self.defaults["variant"] == "sgd"
        momentum = group["momentum"] if sgd else 0.0
        checked, states = self._native_checked, self._native_states()
        members, others = self._native_members(positions)
        others = list(others)
        batches: dict[torch.dtype, _Batch] = {}
        for pos, p, rows, width, row0 in members:
            g = grads[pos]
            if g is None or pos in frozen or g.is_sparse or not (
                    p.is_cpu and p.dtype in _native.DTYPES and p.is_contiguous() and g.is_contiguous()
                    and p.numel() == rows * width):
                others.append((pos, p))
                continue
            st = states.get(pos)
            if st is None:
                st = states[pos] = self.state[p]
            if sgd:
                bufs = (st.get("momentum_buffer"),) if momentum else ()
            elif "exp_avg" in st:
                bufs = (st["exp_avg"], st.get("exp_avg_sq"))
            elif self.defaults["official_adam_init"]:
                others.append((pos, p))  # the official first step sets the moments without moving
                continue
            else:
                bufs = (None, None)
            seen = checked.get(pos)
            if bufs and bufs[0] is not None and (seen is None or seen[0] is not bufs[0] or seen[-1] is not bufs[-1]) \
                    and not self._buffers_fit(pos, p, bufs):  # identity: a loaded state dict brings new tensors
                others.append((pos, p))
                continue
            watched = pos in watch
            hold = defer and watched
            flags = (_native.SUMS if watched else 0) | (
                _native.HOLD if hold else _native.FACTORS if pos in hit else _native.PLAIN)
            batch = batches.get(p.dtype)
            if batch is None:
                batch = batches[p.dtype] = _Batch()
            batch.xs.append(p)
            batch.gs.append(g)
            batch.meta += (rows, width, row0, flags)
            batch.sums |= watched
            if flags & _native.PLAIN == 0:
                batch.settled.append(pos)
                batch.factors |= not hold
            if sgd:
                if momentum:
                    b = bufs[0]
                    if b is None:
                        b = st["momentum_buffer"] = torch.zeros_like(p)  # read as μ·0 by the kernel
                        batch.meta[-1] |= _native.FRESH
                    batch.bs.append(b)
                if hold:
                    source, adj = (g, group["lr"] * group["weight_decay"]) if not momentum else (batch.bs[-1], 0.0)
                    work.native_held.append((pos, p, source, -group["lr"], adj))
            else:
                self._adam_member(st, p, pos, group, batch, work, hold)
        for dtype, batch in batches.items():
            self._run_batch(dtype, batch, group, work, sgd=sgd, momentum=momentum)
        return others

    def _native_members(self, positions: range) -> tuple[list[tuple[int, Tensor, int, int, int]],
                                                         list[tuple[int, Tensor]]]:
        """The parameters at ``positions`` whose layout the kernels take, as ``(position, parameter, rows, width,
        first global row or -1)``, and the others (rows along dim ≥ 1, empty); cached."""
        key = ("native", positions.start, positions.stop)
        if key not in self._caches:
            lay, members, others = self._layout, [], []
            for pos in positions:
                p, rows = self._flat_params[pos], self._layout.rows.get(pos)
                if (rows is not None and rows.dim not in (None, 0)) or not p.numel():
                    others.append((pos, p))
                    continue
                n = 1 if rows is None else rows.n
                members.append((pos, p, n, lay.numel[pos] // n, -1 if rows is None else rows.offset))
            self._caches[key] = (members, others)
        return self._caches[key]

    def _native_shapes(self) -> dict[int, tuple[int, int, int, int]]:
        """Per owned parameter position, its kernel meta ``(rows, width, first global row, 0)`` (cached)."""
        if ("native_shapes",) not in self._caches:
            lay = self._layout
            self._caches[("native_shapes",)] = {pos: (r.n, lay.numel[pos] // r.n, r.offset, 0)
                                             for pos, r in lay.rows.items()}
        return self._caches[("native_shapes",)]

    def _native_states(self) -> dict[int, dict[str, Any]]:
        """``state[p]`` by parameter position, filled as parameters step (hashing a tensor costs a Python call);
        a new ``state`` (a loaded state dict) starts it afresh."""
        if self._native_state_of is not self.state:
            self._native_state_of, self._native_state_by_pos = self.state, {}
        return self._native_state_by_pos

    def _buffers_fit(self, pos: int, p: Tensor, bufs: tuple[Tensor | None, ...]) -> bool:
        """Whether the optimizer buffers of ``p`` are laid out like it (checked once per buffer object)."""
        if any(b is None or b.dtype != p.dtype or b.shape != p.shape or not b.is_contiguous() or not b.is_cpu
               for b in bufs):
            return False
        self._native_checked[pos] = bufs
        return True

    def _adam_member(self, st: dict[str, Any], p: Tensor, pos: int, group: dict[str, Any], batch: _Batch,
                     work: StepWork, hold: bool) -> None:
        if "exp_avg" not in st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        beta1, beta2 = group["betas"]
        bias1, bias2_sqrt = 1 - beta1 ** st["step"], math.sqrt(1 - beta2 ** st["step"])
        sigma = bias2_sqrt / bias1
        eps_hat = group["adam_eps"] * bias2_sqrt
        batch.ms.append(st["exp_avg"])
        batch.vs.append(st["exp_avg_sq"])
        batch.dmeta += (eps_hat, sqrt_floor(eps_hat, p.dtype) or 0.0, -group["lr"] * sigma)
        work.scale[pos] = sigma
        u = None
        if hold:  # u waits for the decision in a buffer reused across steps
            u = self._u_buffers.get(pos)
            u = torch.empty_like(p) if u is None or u.shape != p.shape or u.dtype != p.dtype else u
            work.u_buffers[pos] = u
            work.native_held.append((pos, p, u, -group["lr"] * sigma, 0.0))
        batch.us.append(u)

    def _run_batch(self, dtype: torch.dtype, batch: _Batch, group: dict[str, Any], work: StepWork, *, sgd: bool,
                   momentum: float) -> None:
        kind = (dtype, torch.device("cpu"))
        sums = work.all_sums(self._layout) if batch.sums else None
        keep = self._zero_keep_all(kind)
        factors = self._factor_bufs if batch.factors else {}
        fa = None if work.a_is_1 or "ma" not in factors else factors["ma"].get(kind)
        fm = factors["m"].get(kind) if "m" in factors else None
        rows = {"keep": keep, "sums": sums, "fa": fa, "fm": fm, "held": work.held_rows}
        if sgd:
            _native.sgd(batch.xs, batch.gs, batch.bs if momentum else None, batch.meta, **rows, momentum=momentum,
                        dampening=group["dampening"], weight_decay=group["weight_decay"], lr=group["lr"])
        else:
            _native.adam(batch.xs, batch.gs, batch.ms, batch.vs, batch.us, batch.meta, batch.dmeta, **rows,
                         betas=tuple(group["betas"]), weight_decay=group["weight_decay"],
                         decoupled=self.defaults["variant"] == "adamw", lr=group["lr"])
        work.deferred_pos.update(batch.settled)  # their row factors are applied in a kernel, not by `_scale`

    def _native_finish(self, work: StepWork) -> None:
        """The held updates ``x ← m·(a·x − α d)`` of this step, one kernel call per dtype."""
        by_kind: dict[torch.dtype, tuple[list, list, list[int], list[float]]] = {}
        shape_of = self._native_shapes()
        for pos, p, src, step, adj in work.native_held:
            xs, srcs, meta, dmeta = by_kind.setdefault(p.dtype, ([], [], [], []))
            xs.append(p)
            srcs.append(src)
            meta += shape_of[pos]
            dmeta += (step, adj)
        for dtype, (xs, srcs, meta, dmeta) in by_kind.items():
            kind = (dtype, torch.device("cpu"))
            _native.finish(xs, srcs, meta, dmeta, fa=self._factor_bufs["ma"][kind], fm=self._factor_bufs["m"][kind],
                           held=work.held_rows)


class _Batch:
    """The tensors of one param group and dtype for one kernel call."""

    def __init__(self) -> None:
        self.xs: list[Tensor] = []
        self.gs: list[Tensor] = []
        self.bs: list[Tensor] = []
        self.ms: list[Tensor] = []
        self.vs: list[Tensor] = []
        self.us: list[Tensor | None] = []
        self.meta: list[int] = []
        self.dmeta: list[float] = []
        self.settled: list[int] = []  # positions held for `_native_finish` or scaled in the pass
        self.sums = self.factors = False
