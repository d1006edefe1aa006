"""Row-wise factors of a step: ``x ← m_g·(a·x − α d)`` applied to the rows of the groups a decision touches.

`RowOps` is mixed into `GroupOptimizer`. Per-group decisions (``c_g = λ_g/‖x_g‖``, multipliers ``m_g``) expand
to per-row factors with one gather; they are written into persistent per-dtype buffers whose per-parameter views
are cached, so deferred parameters read them chunk by chunk (`_reduce._finish`) and the others are scaled with
one foreach call (parameters mostly hit) or on their hit rows only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from otov3.optim import _native

if TYPE_CHECKING:
    from otov3.optim._engine import Decision
    from otov3.optim._pass import StepWork


class RowOps:
    """Mixed into `GroupOptimizer` (uses its `_layout`, `_flat_params`, `_caches`, `_factor_bufs`, `_views`)."""

    def _row_factors(self, decision: Decision | None, work: StepWork, *, pre: bool = False) -> None:
        """Per-row ``m = m_g``, ``m·a`` with ``a = 1 − α·wd_AdamW − α·c_g`` and the λ pre-scale
        ``1 − α c_g/(1 − α·wd)`` (when foreach-held rows need it), written into persistent per-dtype buffers
        whose per-parameter views are cached (`_view`)."""
        lay = self._layout
        work.a_is_1 = (decision is None or decision.c is None) and not any(work.decay_of) and not work.deferred \
            and not work.native_held  # x ← m·(x − α d): "ma" would equal "m"; the passes multiply by m after the step
        c = None if decision is None else decision.c
        m = None if decision is None else decision.m
        if _native.available() and self._native_kinds and not (c is not None and (work.foreach or pre)):
            alpha, keep = self._rows_of(work.lr_of, work.decay_of)
            c64, m64 = (None if t is None else t.to(torch.float64).contiguous() for t in (c, m))
            for kind in self._row_kinds:  # one call per kind instead of a dozen small tensor ops
                _native.row_factors(lay.row_group, lay.n_groups, c64, m64, alpha, keep, self._factor_buf("m", kind),
                                    None if work.a_is_1 else self._factor_buf("ma", kind))
        else:
            ext = torch.zeros(lay.n_groups + 1, dtype=torch.float64)
            m_rows = (ext + 1 if m is None else torch.cat((m, ext[:1] + 1)))[lay.row_group]
            self._fill("m", m_rows)
            if not work.a_is_1:
                alpha, keep = self._rows_of(work.lr_of, work.decay_of)
                c_rows = (ext if c is None else torch.cat((c, ext[:1])))[lay.row_group]
                self._fill("ma", m_rows * (keep - alpha * c_rows))
                if c is not None and (work.foreach or pre):  # for foreach-held rows
                    self._fill("pre", 1 - alpha * c_rows / keep)
        if m is not None and work.deferred:
            work.m_params = frozenset(self._params_of(m != 1))

    @property
    def _native_kinds(self) -> bool:
        """Whether every kind of row factor buffer is one the C kernels write (float32/float64 on the CPU)."""
        return all(dev.type == "cpu" and dt in _native.DTYPES for dt, dev in self._row_kinds)

    def _factor_buf(self, name: str, kind: tuple[torch.dtype, torch.device]) -> Tensor:
        bufs = self._factor_bufs.setdefault(name, {})
        if kind not in bufs:
            bufs[kind] = torch.empty(self._layout.n_rows, dtype=kind[0], device=kind[1])
        return bufs[kind]

    def _fill(self, name: str, values: Tensor) -> None:
        for kind in self._row_kinds:
            self._factor_buf(name, kind).copy_(values)

    def _view(self, name: str, pos: int, *, broadcast: bool = False) -> Tensor:
        """Parameter ``pos``'s rows of factor buffer ``name`` (1-D, or shaped to broadcast against it)."""
        key = (name, pos, broadcast)
        view = self._views.get(key)
        if view is None:
            rows, p = self._layout.rows[pos], self._flat_params[pos]
            view = self._factor_bufs[name][p.dtype, p.device][rows.offset:rows.offset + rows.n]
            view = view.view(rows.shape_for(p)) if broadcast else view
            self._views[key] = view
        return view

    def _zero_keep(self, pos: int) -> Tensor:
        """Parameter ``pos``'s rows as 0/1 (0: a zero group's row), in its dtype; cached per zero list."""
        bufs, views = self._zero_keep_bufs()
        if pos not in views:
            rows, p = self._layout.rows[pos], self._flat_params[pos]
            views[pos] = bufs[p.dtype, p.device][rows.offset:rows.offset + rows.n]
        return views[pos]

    def _zero_keep_all(self, kind: tuple[torch.dtype, torch.device]) -> Tensor | None:
        """Every row as 0/1 (0: a zero group's row) in one dtype and device, or None while no group is zero."""
        if not self.state[self.RUN_KEY]["zero"]:
            return None
        return self._zero_keep_bufs()[0].get(kind)

    def _zero_keep_bufs(self) -> tuple[dict[tuple[torch.dtype, torch.device], Tensor], dict[int, Tensor]]:
        zero = self.state[self.RUN_KEY]["zero"]
        key = ("zkeep", self._loads, len(zero))
        if key not in self._caches:
            self._caches = {k: v for k, v in self._caches.items() if k[0] != "zkeep"}
            lay = self._layout
            dead = torch.cat((self._mask(zero), torch.zeros(1, dtype=torch.bool)))[lay.row_group]
            keep = (~dead).to(torch.float64)
            self._caches[key] = ({(dt, dev): keep.to(dev, dt) for dt, dev in self._row_kinds}, {})
        return self._caches[key]

    def _held_rows(self, observed: Tensor) -> Tensor:
        """uint8 per global row, 1 on the rows of the ``observed`` groups (cached per mask)."""
        key = ("held", hash(observed.numpy().tobytes()))
        if key not in self._caches:
            self._caches = {k: v for k, v in self._caches.items() if k[0] != "held"}
            ext = torch.cat((observed, torch.zeros(1, dtype=torch.bool)))
            self._caches[key] = ext[self._layout.row_group].to(torch.uint8)
        return self._caches[key]

    def _params_of(self, mask: Tensor) -> list[int]:
        """`RowLayout.params_of`, cached per group mask."""
        key = ("params", hash(mask.numpy().tobytes()))
        if key not in self._caches:
            if len([k for k in self._caches if k[0] == "params"]) > 16:
                self._caches = {k: v for k, v in self._caches.items() if k[0] != "params"}
            self._caches[key] = self._layout.params_of(mask)
        return self._caches[key]

    def _scale(self, work: StepWork, name: str, hit: Tensor, *, foreach_only: bool) -> None:
        """Multiplies the rows of the ``hit`` groups by factor buffer ``name``, except in the deferred
        parameters (`_finish` scales those): parameters mostly hit with one foreach call over whole tensors
        (rows with factor 1 are unchanged), the others on the hit rows only (gather, multiply, scatter)."""
        full, sparse = self._scale_plan(hit)
        keep = [pos for pos in full if pos not in work.deferred_pos and (not foreach_only or pos in work.foreach)]
        if keep:
            torch._foreach_mul_([self._flat_params[pos] for pos in keep],
                                [self._view(name, pos, broadcast=True) for pos in keep])
        for pos, local, rows_at, shape in sparse:
            if pos in work.deferred_pos or (foreach_only and pos not in work.foreach):
                continue
            p, dim = self._flat_params[pos], self._layout.rows[pos].dim
            factors = self._factor_bufs[name][p.dtype, p.device][rows_at].view(shape)
            p.index_copy_(dim, local, p.index_select(dim, local).mul_(factors))

    def _scale_plan(self, hit: Tensor) -> tuple[list[int], list[tuple[int, Tensor, Tensor, list[int]]]]:
        """For a group mask: the parameters to scale whole, and (position, local rows, global rows, shape) of
        those where under a quarter of the rows are hit (cached per mask)."""
        key = ("plan", hash(hit.numpy().tobytes()))
        if key not in self._caches:
            if len([k for k in self._caches if k[0] == "plan"]) > 16:
                self._caches = {k: v for k, v in self._caches.items() if k[0] != "plan"}
            lay, full, sparse = self._layout, [], []
            marked = torch.cat((hit, torch.zeros(1, dtype=torch.bool)))
            for pos in self._params_of(hit):
                rows = lay.rows[pos]
                local = marked[rows.group].nonzero().flatten()
                if rows.dim is None or 4 * local.numel() >= rows.n:
                    full.append(pos)
                else:
                    shape = rows.shape_for(self._flat_params[pos])
                    shape[rows.dim] = local.numel()
                    device = self._flat_params[pos].device
                    sparse.append((pos, local.to(device), (local + rows.offset).to(device), shape))
            self._caches[key] = (full, sparse)
        return self._caches[key]
