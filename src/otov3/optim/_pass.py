"""The per-step pass over the parameters: base directions (spec §5.1) and the per-row group reductions.

`DirectionPass` is the half of `GroupOptimizer` that touches every parameter once per step. On the CPU the fused C
kernels step each param group in one call (`_nativepass`). Without them (GPU, no compiler), large parameters take
the cache-blocked passes of `_reduce` (buffers, reductions and, unless deferred, the update in one trip through
memory) and small ones step as flat vectors (`_flatpass`). The rest (rows along dim ≥ 1, half precision, a pack
that cannot step) take torch.optim-style foreach directions, applied after the policy's decision. `_reduce` turns
the per-row reductions into ``(G, 6)`` per-group sums, refusing NaN/Inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from otov3.errors import OptimizerError
from otov3.optim import _layout, _native
from otov3.optim._base import adam_directions, sgd_directions
from otov3.optim._flat import FlatPack
from otov3.optim._flatpass import FlatPass
from otov3.optim._nativepass import NativePass
from otov3.optim._reduce import adam_finish, adam_pass, fusable, reduce_rest, sgd_finish, sgd_pass

if TYPE_CHECKING:
    from otov3.optim._engine import Decision


# The per-group columns ‖x‖², ⟨x,d⟩, ‖d‖², ‖x‖², ‖x‖², ⟨x,d⟩ that `_reduce` scales into its six sums.
_COLUMNS = torch.tensor([0, 1, 2, 0, 0, 1])


class DirectionPass(NativePass, FlatPass):
    """Mixed into `GroupOptimizer` (uses its `_layout`, `_flat_params`, `state`, `defaults`, `_caches`)."""

    def _directions(self, watch: frozenset[int], frozen: frozenset[int], zero_rows: dict[int, Tensor],
                    all_grads: list[Tensor | None], *, defer: bool, inline: Decision | None = None,
                    observed: Tensor | None = None) -> StepWork:
        """Base directions of every param group (spec §5.1); foreach and flat updates are returned, not yet
        applied. ``zero_rows`` (rows of zero groups per parameter) get no gradient, so they stay exactly zero.
        ``inline``: a decision taken before the pass; the cache-blocked passes apply its row factors in place."""
        variant, lay = self.defaults["variant"], self._layout
        work = StepWork(len(self._flat_params))
        native = _native.available()
        if native and defer and observed is not None:  # the kernels' other rows of a held parameter need not wait
            work.held_rows = self._held_rows(observed)
        first = 0
        for group in self.param_groups:
            n = len(group["params"])
            work.lr_of[first:first + n] = [group["lr"]] * n
            work.decay_of[first:first + n] = [group["lr"] * group["weight_decay"] if variant == "adamw" else 0.0] * n
            first += n
        hit: frozenset[int] = frozenset()
        if inline is not None:
            self._row_factors(inline, work, pre=inline.c is not None)
            mask = torch.zeros(lay.n_groups, dtype=torch.bool)
            if inline.m is not None:
                mask |= inline.m != 1
            if inline.c is not None:
                mask |= inline.c != 0
            hit = frozenset(self._params_of(mask))
        first = 0
        for gi, group in enumerate(self.param_groups):
            lr, momentum, dampening, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            n = len(group["params"])
            if native and group["params"] and group["params"][0].device.type == "cpu":
                todo = self._native_group(group, range(first, first + n), work, watch, frozen, all_grads,
                                          defer=defer, hit=hit)
                others = ()
            else:
                packs, others = self._packs_of(gi, first)
                todo = list(others)
                for pack in packs:
                    if not self._pack_step(pack, group, work, watch, frozen, zero_rows, all_grads):
                        todo += [(pos, self._flat_params[pos]) for pos in pack.positions]
            first += n
            params, grads, states, want, positions = [], [], [], [], []
            for pos, p in sorted(todo, key=lambda item: item[0]) if len(todo) > len(others) else todo:
                g = p.grad
                if g is None or pos in frozen:
                    if pos in watch:
                        work.rest.append((pos, p, torch.zeros_like(p)))
                    continue
                if g.is_sparse:
                    raise OptimizerError(f"{self.NAME} does not support sparse gradients")
                state = self.state[p]
                zkeep = self._zero_keep(pos) if pos in zero_rows else None  # a pass masks those rows in cache
                rows = lay.rows.get(pos)
                hold, sink = defer and pos in watch, work.sink if pos in watch else None
                if variant == "sgd" and fusable(p, g, rows, *((state.get("momentum_buffer"),) if momentum else ())):
                    buf = state.get("momentum_buffer") if momentum else None
                    if sink is not None:
                        work.sink_rows.append(pos)
                    factors = None
                    if pos in hit:
                        factors = (None if work.a_is_1 else self._view("ma", pos), self._view("m", pos))
                        work.deferred_pos.add(pos)  # scaled here, not after
                    sgd_pass(p, g, buf, lay.pieces(pos), sink, self._scratch(p), momentum=momentum,
                             dampening=dampening, weight_decay=wd, lr=lr, update_x=not hold, factors=factors,
                             zero_keep=zkeep)
                    if hold:  # d = b, or without momentum d = ∇f + wd·x (∇f stays as it is)
                        work.defer(pos, partial(sgd_finish, p, g if buf is None else buf, lay.pieces(pos), lr=lr,
                                                x_in_d=wd if buf is None else 0.0))
                elif variant != "sgd" and fusable(p, g, rows, state.get("exp_avg"), state.get("exp_avg_sq")):
                    state["step"] += 1
                    beta1, beta2 = group["betas"]
                    if sink is not None:
                        work.sink_rows.append(pos)
                    keep = None
                    if hold:  # u waits for the decision in a buffer reused across steps
                        keep = self._u_buffers.get(pos)
                        keep = torch.empty_like(p) if keep is None or keep.shape != p.shape else keep
                        work.u_buffers[pos] = keep
                    factors = None
                    if pos in hit and keep is None:
                        factors = (None if work.a_is_1 else self._view("ma", pos), self._view("m", pos))
                        work.deferred_pos.add(pos)  # scaled here, not after
                    sigma = adam_pass(p, g, state["exp_avg"], state["exp_avg_sq"], lay.pieces(pos), sink,
                                      self._scratch(p), betas=group["betas"], eps=group["adam_eps"], lr=lr,
                                      weight_decay=wd, decoupled=variant == "adamw", bias1=1 - beta1 ** state["step"],
                                      bias2_sqrt=math.sqrt(1 - beta2 ** state["step"]), keep=keep, factors=factors,
                                      zero_keep=zkeep)
                    work.scale[pos] = sigma
                    if keep is not None:
                        work.defer(pos, partial(adam_finish, p, keep, lay.pieces(pos), lr=lr, sigma=sigma))
                else:  # small (`fusable` says no below FUSE_MIN), or not passable: foreach
                    if zkeep is not None:
                        g.index_fill_(lay.rows[pos].dim, zero_rows[pos], 0)
                    params.append(p)
                    grads.append(g)
                    states.append(state)
                    want.append(pos in watch)
                    positions.append(pos)
            if not params:
                continue
            if variant == "sgd":
                out = sgd_directions(params, grads, states, want, lr=lr, momentum=momentum, dampening=dampening,
                                     weight_decay=wd)
            else:
                out = adam_directions(params, grads, states, want, lr=lr, betas=group["betas"],
                                      eps=group["adam_eps"], weight_decay=wd, decoupled=variant == "adamw",
                                      official_init=self.defaults["official_adam_init"])
            work.foreach.update(positions)
            for i, p, d, sc in zip(positions, params, out.wanted, out.scale, strict=True):
                work.scale[i] = sc
                if d is not None:
                    work.rest.append((i, p, d))
            work.updates.append(out.apply)
        return work

    def _reduce(self, work: StepWork, watch: frozenset[int], observed: Tensor, n: int) -> Tensor:
        """``(G, 6)`` float64 per-group sums of ``‖x‖², ⟨x,d⟩, ‖d‖², (1−α·wd)‖x‖², α‖x‖², α⟨x,d⟩``."""
        lay = self._layout
        out = work.all_sums(lay)
        if work.sink_rows:
            key = ("sink", tuple(work.sink_rows))
            if key not in self._caches:
                rows = [lay.piece_rows(pos) for pos in work.sink_rows]
                self._caches[key] = (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
            single, block = self._caches[key]
            if work.sink[0]:
                out.index_add_(0, single, _stack(work.sink[0]).view(-1, 3).to(out.device, torch.float64))
            if work.sink[1]:
                norms = _stack(work.sink[1], cat=True).to(out.device, torch.float64)
                norms[:, 0::2] **= 2  # the blocks' row norms ‖x‖, ‖d‖
                out.index_add_(0, block, norms)
        for pack, sums in work.pack_sums:
            if pack.rows.numel():
                out.index_add_(0, pack.rows, sums.to(out.device, torch.float64))
        if work.rest:
            reduce_rest(out, [(lay.rows[pos], x, d) for pos, x, d in work.rest], self._caches)
        one_sigma = len(set(work.scale)) == 1
        sgd = self.defaults["variant"] == "sgd"
        if _native.available() and len(set(work.lr_of)) == 1 and len(set(work.decay_of)) == 1 and (sgd or one_sigma):
            sigma, lr, keep = 1.0 if sgd else work.scale[0], work.lr_of[0], 1 - work.decay_of[0]
            sums = _native.group_sums(lay.row_group, out, lay.n_groups,
                                      (1.0, sigma, sigma * sigma, keep, lr, lr * sigma))
            if sums is not None:  # else a row is NaN/Inf: refused below
                return sums
        if not math.isfinite(float(out.sum())):
            self._refuse(out, observed, n)
        if self.defaults["variant"] != "sgd" and not one_sigma:  # d = σ·u, u reduced; σ per parameter
            sigma = torch.tensor(work.scale, dtype=torch.float64)[lay.row_param]
            out[:, 1] *= sigma
            out[:, 2] *= sigma * sigma
        if len(set(work.lr_of)) == 1 and len(set(work.decay_of)) == 1:  # one α for all: per-group sums first
            sums = torch.zeros(lay.n_groups + 1, 3, dtype=torch.float64).index_add_(0, lay.row_group, out)[:-1]
            sigma = work.scale[0] if self.defaults["variant"] != "sgd" and one_sigma else 1.0
            lr, keep = work.lr_of[0], 1 - work.decay_of[0]
            factors = torch.tensor([1.0, sigma, sigma * sigma, keep, lr, lr * sigma], dtype=torch.float64)
            return torch.index_select(sums, 1, _COLUMNS).mul_(factors)
        if self.defaults["variant"] != "sgd" and one_sigma:
            out[:, 1] *= work.scale[0]
            out[:, 2] *= work.scale[0] ** 2
        alpha, keep = self._rows_of(work.lr_of, work.decay_of)
        x_sq, xd = out[:, 0], out[:, 1]
        cols = torch.stack((x_sq, xd, out[:, 2], keep * x_sq, alpha * x_sq, alpha * xd), dim=1)
        per_group = torch.zeros(lay.n_groups + 1, 6, dtype=torch.float64).index_add_(0, lay.row_group, cols)
        return per_group[:-1]

    def _rows_of(self, lr_of: list[float], decay_of: list[float]) -> tuple[Tensor, Tensor]:
        """Per row: ``α`` and ``1 − α·wd_AdamW`` of its parameter (cached while the options stay the same)."""
        key = ("rows", tuple(lr_of), tuple(decay_of))
        if key not in self._caches:
            self._caches = {k: v for k, v in self._caches.items() if k[0] != "rows"}
            lay = self._layout
            self._caches[key] = (torch.tensor(lr_of, dtype=torch.float64)[lay.row_param],
                                 1 - torch.tensor(decay_of, dtype=torch.float64)[lay.row_param])
        return self._caches[key]

    def _refuse(self, out: Tensor, observed: Tensor, n: int) -> None:
        """A reduction is NaN/Inf: names the parameter and group of the first such row, and raises."""
        lay = self._layout
        owned = lay.row_group < lay.n_groups
        bad_rows = owned & ~torch.isfinite(out).all(dim=1)
        watched = bad_rows & torch.cat((observed, torch.zeros(1, dtype=torch.bool)))[lay.row_group]
        rows = (watched if bool(watched.any()) else bad_rows).nonzero().flatten()
        if rows.numel():
            r = int(rows[0])
            pos, g = int(lay.row_param[r]), int(lay.row_group[r])
            raise OptimizerError(
                f"non-finite gradient (or value) in parameter {self._param_names[pos]!r} of {self.NOUN} "
                f"{self._groups[g].name!r} at step {n}; {self.NAME} did not select or project any group. Lower the "
                "learning rate or skip such steps (e.g. torch.amp.GradScaler), and reload the last checkpoint: "
                "this step was abandoned"
            )

    def _scratch(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Three chunk-sized work buffers per dtype/device for the passes (not state: nothing to save)."""
        key = (p.dtype, p.device)
        if key not in self._scratch_buffers:
            self._scratch_buffers[key] = tuple(p.new_empty(_layout.CHUNK) for _ in range(3))
        return self._scratch_buffers[key]


class StepWork:
    """What one step has computed so far: directions, pending updates, chunk reductions."""

    def __init__(self, n_params: int) -> None:
        self.scale = [1.0] * n_params  # d = scale·u for the reduced u
        self.lr_of = [0.0] * n_params
        self.decay_of = [0.0] * n_params  # α·wd of AdamW's decoupled decay
        self.updates: list[Callable[[], None]] = []  # plain foreach steps, applied after the decision
        self.rest: list[tuple[int, Tensor, Tensor]] = []  # (pos, x, u) of watched foreach parameters
        self.sink: tuple[list[Tensor], list[Tensor]] = ([], [])  # chunk reductions of the cache-blocked passes
        self.sink_rows: list[int] = []  # the parameters that filled `sink`, in order
        self.foreach: set[int] = set()
        self.deferred: list[tuple[int, Callable[..., None]]] = []  # updates waiting for the row factors
        self.deferred_pos: set[int] = set()
        self.u_buffers: dict[int, Tensor] = {}  # Adam directions of the deferred parameters
        self.m_params: frozenset[int] = frozenset()  # parameters with a row whose multiplier m is not 1
        self.pack_sums: list[tuple[FlatPack, Tensor]] = []  # (pack, its rows' reductions)
        self.packs: list[Callable[..., None]] = []  # flat updates, applied after the decision
        self.a_is_1 = False  # the row factors have a = 1 everywhere: only "m" was filled
        self.native_held: list[tuple[int, Tensor, Tensor, float, float]] = []  # (pos, x, source, step, adj)
        self.sums: Tensor | None = None  # (global rows, 3) float64 row reductions
        self.held_rows: Tensor | None = None  # uint8 per global row: the rows whose update waits (C kernels)

    def all_sums(self, lay: _layout.RowLayout) -> Tensor:
        """The step's ``(rows, 3)`` row reductions ``‖x‖², ⟨x,d⟩, ‖d‖²`` (zero where nothing was reduced)."""
        if self.sums is None:
            self.sums = torch.zeros(lay.n_rows, 3, dtype=torch.float64)
        return self.sums

    def defer(self, pos: int, finish: Callable[..., None]) -> None:
        self.deferred_pos.add(pos)
        self.deferred.append((pos, finish))


def _stack(tensors: list[Tensor], *, cat: bool = False) -> Tensor:
    """Stacks (or concatenates) reductions that may live on several devices (a model split over GPUs)."""
    if len({t.device for t in tensors}) > 1:
        tensors = [t.cpu() for t in tensors]
    return torch.cat(tensors) if cat else torch.stack(tensors)
