"""The step engine of H2SPG: base directions, reductions, scores, the λ decision, zero groups.

`StepEngine` is H2SPG's implementation half (a mixin): `otov3.optim.h2spg` holds the public optimizer, its
hyper-parameters, introspection and state dict; this module does one step. Data flow of a step (spec §5.5):
`_directions` computes every parameter's base direction (spec §5.1) and, for large parameters, the reductions
of the GeZIG slices in the same cache-blocked pass (`_reduce` module); `_reduce` assembles them per slice and
group and refuses non-finite values; warm-up updates the scores, the hybrid phase asks `_decide` for λ_g and
the half-space verdict; deferred updates then run, projected groups are recorded, and zero groups stay zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from otov3.errors import OptimizerError
from otov3.optim import _layout, kernels
from otov3.optim._base import BUFFER_KEYS, adam_directions, sgd_directions
from otov3.optim._decide import Settings, decide_batched, decide_scalar
from otov3.optim._layout import ActiveSet
from otov3.optim._reduce import adam_finish, adam_pass, fusable, gather, gather_scalar, sgd_finish, sgd_pass

# Up to this many active slices the per-group maths runs on Python floats (`_decide`): cheaper than tensor ops.
_SCALAR_SLICES = 256
RUN_KEY = "h2spg"  # the optimizer-level entry of `state` (string keys survive state_dict as they are)


class StepEngine:
    """One H2SPG step; mixed into `H2SPG`, whose attributes (`_layout`, `_gezigs`, `_flat_params`, ...) it uses."""

    def _step(self) -> None:
        run = self.state[RUN_KEY]
        cfg = self.defaults
        n = run["step"] + 1
        selecting = run["redundant"] is None
        hybrid = n > cfg["warmup_steps"]
        if selecting:
            active_groups = tuple(range(len(self._gezigs)))  # spec §5.5: scores over all GeZIGs
        else:
            active_groups = tuple(self._targets(run)) if hybrid and not self._past_deadline(n) else ()
        active = self._layout.active(active_groups) if active_groups else None
        # Parameters made entirely of zero groups are skipped: no step, no buffers, nothing to re-zero.
        frozen = self._frozen(run["zero"])
        # In the hybrid phase the parameters holding redundant slices wait for the λ decisions.
        work = self._directions(active, frozen, defer=hybrid)

        decision = None
        if active is not None:
            reduced = self._reduce(active, work, n)
            if selecting:
                self._update_scores(run, reduced)
                if n >= cfg["warmup_steps"]:
                    self._select(run)
            if hybrid:
                decision = self._decide(run, n, active, reduced, work)
        for apply in work.updates:
            apply()
        for finish in work.deferred:
            finish(scale=decision.fused if decision else {})
        if decision is not None:
            self._finish(run, active, decision)
        self._keep_zero(run["zero"], frozen)
        self._u_buffers = work.u_buffers  # buffers of parameters no longer deferred are released
        run["step"] = n

    def _directions(self, active: ActiveSet | None, frozen: frozenset[int], *, defer: bool) -> _StepWork:
        """Base directions of every param group (spec §5.1); foreach updates are returned, not yet applied."""
        variant = self.defaults["variant"]
        lay = self._layout
        wanted = active.param_positions if active else frozenset()
        work = _StepWork(len(self._flat_params))
        pos = 0
        for group in self.param_groups:
            params, grads, states, want, positions = [], [], [], [], []
            lr, momentum, dampening, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                work.lr_of[pos] = lr
                g = p.grad
                if g is not None and pos not in frozen:
                    if g.is_sparse:
                        raise OptimizerError("H2SPG does not support sparse gradients")
                    state = self.state[p]
                    buffers = (state.get("momentum_buffer"),) if momentum != 0 else ()
                    if variant == "sgd" and fusable(p, g, *buffers):
                        hold = defer and pos in wanted
                        pieces = active.pieces[pos] if pos in wanted else lay.plain_pieces[pos]
                        buf = buffers[0] if buffers else None
                        sgd_pass(p, g, buf, pieces, work.marks, work.dots, self._scratch(p)[0], momentum=momentum,
                                 dampening=dampening, weight_decay=wd, lr=lr, update_x=not hold)
                        work.fused_positions.add(pos)
                        if hold:  # d = b, or without momentum d = ∇f + wd·x (∇f stays as it is)
                            work.deferred.append(partial(sgd_finish, p, g if buf is None else buf, pieces, lr=lr,
                                                         x_in_d=wd if buf is None else 0.0))
                    elif variant != "sgd" and fusable(p, g, state.get("exp_avg"), state.get("exp_avg_sq")):
                        hold = defer and pos in wanted
                        pieces = active.pieces[pos] if pos in wanted else lay.plain_pieces[pos]
                        m, v, scratch = state["exp_avg"], state["exp_avg_sq"], self._scratch(p)
                        state["step"] += 1
                        beta1, beta2 = group["betas"]
                        bias1, bias2_sqrt = 1 - beta1 ** state["step"], math.sqrt(1 - beta2 ** state["step"])
                        keep = None
                        if hold:  # u waits for the λ decision in a buffer reused across the hybrid steps
                            keep = self._u_buffers.get(pos)
                            keep = torch.empty_like(p) if keep is None or keep.shape != p.shape else keep
                            work.u_buffers[pos] = keep
                        sigma = adam_pass(p, g, m, v, pieces, work.marks, work.dots, scratch, betas=group["betas"],
                                  eps=group["adam_eps"], lr=lr, weight_decay=wd, decoupled=variant == "adamw",
                                  bias1=bias1, bias2_sqrt=bias2_sqrt, keep=keep)
                        work.fused_positions.add(pos)
                        work.scale[pos] = sigma
                        if keep is not None:
                            work.deferred.append(partial(adam_finish, p, keep, pieces, lr=lr, sigma=sigma,
                                                         decay=lr * wd if variant == "adamw" else 0.0))
                    else:
                        params.append(p)
                        grads.append(g)
                        states.append(state)
                        want.append(pos in wanted)
                        positions.append(pos)
                pos += 1
            if variant == "adamw":
                for i in range(pos - len(group["params"]), pos):
                    work.decay_of[i] = lr * wd
            if not params:
                continue
            if variant == "sgd":
                out = sgd_directions(params, grads, states, want, lr=lr, momentum=momentum, dampening=dampening,
                                     weight_decay=wd)
            else:
                out = adam_directions(params, grads, states, want, lr=lr, betas=group["betas"],
                                      eps=group["adam_eps"], weight_decay=wd, decoupled=variant == "adamw",
                                      official_init=self.defaults["official_adam_init"])
            for i, d, sc in zip(positions, out.wanted, out.scale, strict=True):
                work.dirs[i], work.scale[i] = d, sc
            work.updates.append(out.apply)
        return work

    def _reduce(self, active: ActiveSet, work: _StepWork, n: int) -> _Reduced:
        """``(‖x‖², ⟨x,d⟩, ‖d‖²)`` per active slice and per active group; raises on non-finite values."""
        lay = self._layout
        rest = []
        for k, i in enumerate(active.slices):
            pos = lay.slice_pos[i]
            if pos not in work.fused_positions:
                d = work.dirs[pos]
                rest.append((k, lay.view(i, self._flat_params[pos]), None if d is None else lay.view(i, d)))
        adam = self.defaults["variant"] != "sgd"  # d = u/(1−β1^t), u materialised
        if len(active.slices) <= _SCALAR_SLICES:
            per_slice = gather_scalar(len(active.slices), work.marks, work.dots, rest)
            if adam:
                for i, row in zip(active.slices, per_slice, strict=True):
                    f = work.scale[lay.slice_pos[i]]
                    row[1] *= f
                    row[2] *= f * f
            bad = next((k for k, row in enumerate(per_slice) if not all(map(math.isfinite, row))), None)
            per_group = [[0.0, 0.0, 0.0] for _ in active.groups]
            for g, row in zip(active.local_list, per_slice, strict=True):
                acc = per_group[g]
                acc[0] += row[0]
                acc[1] += row[1]
                acc[2] += row[2]
            reduced = _Reduced(False, per_slice, per_group)
        else:
            per_slice = gather(len(active.slices), work.marks, work.dots, rest, self._index_cache)
            if adam:
                factor = torch.tensor([work.scale[lay.slice_pos[i]] for i in active.slices], dtype=torch.float64)
                per_slice[:, 1] *= factor
                per_slice[:, 2] *= factor**2
            finite = torch.isfinite(per_slice).all(dim=1)
            bad = None if bool(finite.all()) else int((~finite).nonzero()[0, 0])
            per_group = torch.zeros(len(active.groups), 3, dtype=torch.float64)
            reduced = _Reduced(True, per_slice, per_group.index_add_(0, active.local_group, per_slice))
        if bad is not None:
            i = active.slices[bad]
            raise OptimizerError(
                f"non-finite gradient (or value) in parameter {lay.slice_name[i]!r} of GeZIG "
                f"{self._gezigs[lay.slice_group[i]].name!r} at step {n}; H2SPG did not select or project any "
                "group. Lower the learning rate or skip such steps (e.g. torch.amp.GradScaler), and reload the "
                "last checkpoint: this step was abandoned"
            )
        return reduced

    def _update_scores(self, run: dict[str, Any], reduced: _Reduced) -> None:
        cfg = self.defaults
        omega = cfg["score_momentum"]
        if reduced.batched:
            x_sq, xd, d_sq = reduced.per_group.unbind(1)
            step = kernels.dhspg_scores(xd, x_sq, d_sq, self._layout.group_numel, weights=cfg["score_weights"])
            run["scores"] = omega * run["scores"] + (1 - omega) * step  # spec §5.5 EMA
        else:
            x_sq, xd, d_sq = zip(*reduced.per_group, strict=True)
            step = kernels.dhspg_scores_scalar(xd, x_sq, d_sq, self._layout.group_numel_list,
                                               weights=cfg["score_weights"])
            old = run["scores"].tolist()
            run["scores"] = torch.tensor([omega * a + (1 - omega) * b for a, b in zip(old, step, strict=True)],
                                         dtype=torch.float64)

    def _decide(self, run, n, active: ActiveSet, reduced: _Reduced, work: _StepWork) -> _Decision:
        """λ rule and half-space test of the redundant groups (spec §5.3–§5.5, `_decide`).

        Pre-scales the survivors held by foreach parameters in place; chunked ones are scaled by `sgd_finish`.
        """
        cfg, lay = self.defaults, self._layout
        settings = Settings(cfg["lam"], cfg["eta"], cfg["kappa"], cfg["epsilon"])
        targets = set(self._targets(run))
        positions = [lay.slice_pos[i] for i in active.slices]
        alpha = [work.lr_of[p] for p in positions]
        decay = [work.decay_of[p] for p in positions]
        is_target = [g in targets for g in active.groups]
        post = self._forcing(n)
        if reduced.batched:
            verdict = decide_batched(active.local_group, reduced.per_slice, reduced.per_group,
                                     torch.tensor(alpha, dtype=torch.float64), torch.tensor(decay, dtype=torch.float64),
                                     torch.tensor(is_target), settings, force=post == 0.0)
        else:
            verdict = decide_scalar(active.local_list, reduced.per_slice, reduced.per_group, alpha, decay,
                                    is_target, settings, force=post == 0.0)
        loose, fused = [], {}
        for k, f in verdict.pre:
            if positions[k] in work.fused_positions:
                fused[k] = (f * post, post)
            else:
                loose.append((k, f))
        if loose:
            views = [lay.view(active.slices[k], self._flat_params[positions[k]]) for k, _ in loose]
            torch._foreach_mul_(views, [f for _, f in loose])
        return _Decision(project=verdict.project, fused=fused, post=post, loose=[k for k, _ in loose])

    def _finish(self, run, active: ActiveSet, decision: _Decision) -> None:
        """Deadline shrink of the foreach-held survivors; records the projected groups (spec §5.5, §6.2)."""
        lay = self._layout
        if 0.0 < decision.post < 1.0 and decision.loose:
            views = [lay.view(active.slices[k], self._flat_params[lay.slice_pos[active.slices[k]]])
                     for k in decision.loose]
            torch._foreach_mul_(views, decision.post)
        for j in decision.project:
            g = active.groups[j]
            run["zero"].append(g)
            if decision.post == 0.0:
                run["forced"].append(g)
            for buffer in self._gezigs[g].reset_buffers:  # spec §6.2: non-affine norm running means
                buffer.zero_()

    def _scratch(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Two chunk-sized work buffers per dtype/device for `adam_pass` (not state: nothing to save)."""
        key = (p.dtype, p.device)
        if key not in self._scratch_buffers:
            self._scratch_buffers[key] = (p.new_empty(_layout.CHUNK), p.new_empty(_layout.CHUNK))
        return self._scratch_buffers[key]

    def _frozen(self, zero: list[int]) -> frozenset[int]:
        """Positions of the parameters whose every scalar belongs to a zero group."""
        key = tuple(zero)
        if self._frozen_cache[0] != key:
            lay = self._layout
            covered: dict[int, int] = {}
            for g in zero:
                for i in lay.group_slices[g]:
                    lo, hi = lay.slice_flat[i]
                    covered[lay.slice_pos[i]] = covered.get(lay.slice_pos[i], 0) + hi - lo
            self._frozen_cache = (key, frozenset(pos for pos, c in covered.items() if c == lay.numel[pos]))
        return self._frozen_cache[1]

    def _keep_zero(self, zero: list[int], frozen: frozenset[int]) -> None:
        """Zero groups stay exactly 0, and so do their momentum / moment buffer slices (spec §5.5, §5.7).

        Parameters in ``frozen`` were not touched by this step and are skipped.
        """
        if not zero:
            return
        lay = self._layout
        views = []
        for g in zero:
            for i in lay.group_slices[g]:
                pos = lay.slice_pos[i]
                if pos in frozen:
                    continue
                p = self._flat_params[pos]
                views.append(lay.view(i, p))
                state = self.state.get(p)
                if state:
                    views.extend(lay.view(i, state[key]) for key in BUFFER_KEYS if key in state)
        if views:
            torch._foreach_zero_(views)


class _StepWork:
    """What one step has computed so far: directions, pending updates, chunk reductions."""

    def __init__(self, n_params: int) -> None:
        self.dirs: list[Tensor | None] = [None] * n_params  # d = scale·dirs[pos] where requested
        self.scale = [1.0] * n_params
        self.lr_of = [0.0] * n_params
        self.decay_of = [0.0] * n_params  # α·wd of AdamW's decoupled decay
        self.updates: list[Callable[[], None]] = []  # plain foreach steps, applied after the decisions
        self.marks: list[int] = []  # sgd_pass chunk → active slice row
        self.dots: list[Tensor] = []  # sgd_pass chunk reductions, three per mark
        self.fused_positions: set[int] = set()
        self.deferred: list[Callable[..., None]] = []  # chunked updates waiting for the λ decision
        self.u_buffers: dict[int, Tensor] = {}  # Adam directions of the deferred parameters


@dataclass(frozen=True)
class _Reduced:
    """Reductions of the active slices and groups: Python lists (few slices) or float64 ``(n, 3)`` tensors."""

    batched: bool
    per_slice: Any
    per_group: Any


@dataclass(frozen=True)
class _Decision:
    """Outcome of the λ / half-space test: projected groups, survivor scalings, deadline shrink."""

    project: list[int]  # positions in the active set's groups
    fused: dict[int, tuple[float, float]]  # chunked survivor slice row -> (x factor, d factor) for sgd_finish
    post: float  # deadline shrink factor of this step (1: none)
    loose: list[int]  # survivors held by foreach parameters (pre-scaled already; shrunk after the step)
