"""H2SPG: Hierarchical Half-Space Projected Gradient (spec §5.5) as a `torch.optim.Optimizer`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.optim import _budget, _checks, kernels
from otov3.optim._budget import BudgetMixin, SizeOf
from otov3.optim._checks import check_number
from otov3.optim._engine import Decision, preset
from otov3.optim._halfspace import HalfSpaceOptimizer
from otov3.space import Group

__all__ = ["H2SPG"]

RUN_KEY = "h2spg"  # the optimizer-level entry of `state` (string keys survive state_dict as they are)


class H2SPG(BudgetMixin, HalfSpaceOptimizer):
    r"""Trains a super-network once and drives exactly K GeZIGs to exact zero while the graph stays valid.

    The algorithm (spec §5.5, paper Algorithm 3), step ``t = 1, 2, …``::

        d_t = base_direction(x_t)                                    # §5.1: SGD / Adam / AdamW
        warm-up (t ≤ T_w):  x ← x − α_t d_t                          # every parameter
                            s ← ω s + (1−ω) s_t(G_GeZIG, x_t, d_t)    # §5.2 DHSPG score, EMA
        end of warm-up:     G_r = greedy walk of the GeZIGs by descending s (ties: fewer MACs),
                                  g admitted iff is_valid(G_r ∪ {g}), until |G_r| = K
                            (budget: the shortest prefix of the unlimited walk whose predicted
                                  sub-network fits target_params / target_macs; K = its length)
        hybrid (t > T_w):   x_g ← x_g − α_t d_g                       for g ∉ G_r (complementary included)
                            for g ∈ G_r with x_g ≠ 0:
                                λ_g = lambda_rule(x_g, d_g; λ, η, κ)  # §5.4
                                x̃_g = x_g − α_t (d_g + λ_g x_g/‖x_g‖)
                                x_g ← 0 if ⟨x̃_g, x_g⟩ < ε‖x_g‖² else x̃_g   # §5.3 half-space projection
                                x_g ← x_g · (R−1)/R  inside the deadline window (below)
                            zero groups of G_r stay exactly 0, with their buffer slices

    Deadline schedule (``hybrid_steps = D`` given): every group of G_r is exactly zero after step
    ``T_w + D``. The λ step and the projection work as in the paper for the whole hybrid phase; in its last
    ``F = ceil(deadline_window·D)`` steps each still non-zero redundant group is, after its λ step, multiplied by
    ``(R−1)/R`` with ``R = T_w + D − t + 1`` steps left (HESSO's factor, spec §5.6). The factors compound to
    ``(R−1)/F``: the group decays linearly over the window and the last factor, at ``t = T_w + D``, is exactly
    0 — no sudden jump from full size. After the deadline (or once all of G_r is zero) the steps are plain
    SGD/Adam on the remaining network. ``hybrid_steps=None`` is the paper's behaviour: no deadline, groups that
    never meet the half-space test stay non-zero.

    Symbols and arguments:

    ================  ==========================  ====================================================
    symbol            argument                    default (source)
    ================  ==========================  ====================================================
    ``α_t``           ``lr`` (per param group)    1e-3 for every variant (spec §5.1; torch.optim.SGD)
    ``μ``, ``τ``      ``momentum``, ``dampening`` 0, 0 (spec §5.1)
    ``β1``, ``β2``    ``betas``                   (0.9, 0.999) (spec §5.1)
    Adam ε            ``adam_eps``                1e-8 (spec §5.1)
    ``wd``            ``weight_decay``            0 (sgd, adam), 1e-2 (adamw) (spec §5.1)
    ``K``             ``target_group_sparsity``   int K, or float ρ: K = int(N·min(ρ, 0.999)); or a budget:
                      ``target_params``,          a fraction of the super-network in (0, 1) or a count >= 1
                      ``target_macs``             (one of the three; `otov3.optim._budget`)
    ``T_w``           ``warmup_steps``            required (spec §5.5 suggests 10 % of training)
    ``D``             ``hybrid_steps``            None: no deadline (paper)
    ``F/D``           ``deadline_window``         0.5 (our choice, documented above)
    ``ω``             ``score_momentum``          0.9 (spec §5.2, inferred)
    ``ε``             ``epsilon``                 0.95 (spec §5.3, issue #27 and tutorials)
    ``λ``             ``lam``                     1e-3 (sgd), 1e-2 (adam, adamw) (spec §5.4)
    ``η``             ``eta``                     2 (sgd), 20 (adam, adamw) (spec §5.4)
    ``κ``             ``kappa``                   10 (sgd), 1e3 (adam, adamw) (spec §5.4)
    ``(w_c, w_r)``    ``score_weights``           (0.5, 0.5) (spec §5.2)
    —                 ``official_adam_init``      False: textbook Adam (spec §5.1)
    ================  ==========================  ====================================================

    ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``betas`` and ``adam_eps`` are per param group and
    are read every step, so any ``torch.optim.lr_scheduler`` drives the base step and the λ term alike
    (spec §5.7). The other settings are global (``self.defaults``). Everything mutable (buffers, step counters,
    scores, the redundant set, the zero groups) lives in ``state``, so ``state_dict()`` resumes bit-identically.

    Implementation: the engine shared with DHSPG and HESSO (`otov3.optim._engine`). Large parameters take one
    cache-blocked pass per step that updates the optimizer buffers, computes the per-row reductions
    ``‖x‖², ⟨x,d⟩, ‖d‖²`` and (unless the λ decision must come first) the parameter; the rest uses foreach ops
    like torch.optim. Per-group maths is batched over all groups; the trial point ``x̃`` is never materialised
    (``⟨x̃,x⟩`` follows from the reductions). Parameters made entirely of zero groups are skipped from then on.

    Never silent: a step whose gradients hold NaN/Inf anywhere raises `OptimizerError` naming the parameter before
    anything moves; hyper-parameters must be finite; `load_state_dict` checks the whole saved state first.

    Args:
        params: every trainable parameter of the model, or param-group dicts.
        gezigs: the removable groups; their members are whole parameters or dim-0 slices of them.
        is_valid: whether removing the GeZIGs with these indices keeps the network valid (spec §3.3).
        target_group_sparsity: K, or the fraction ρ of the GeZIGs to remove.
        target_params: instead of K, a parameter budget for the sub-network (fraction or absolute count).
        target_macs: instead of K, a MAC budget for the sub-network (fraction or absolute count).
        size_of: with a budget, ``(params, MACs)`` of the sub-network without the GeZIGs of these indices.
        reference_size: the super-network's ``(params, MACs)`` that fractions refer to (default
            ``size_of(frozenset())``).
        warmup_steps: ``T_w``, steps of plain training that average the scores before the selection.
        hybrid_steps: ``D``, the deadline for the redundant groups to reach zero, counted after warm-up.
        variant: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate ``α``.
        momentum: heavy-ball momentum ``μ`` (sgd).
        dampening: momentum dampening ``τ`` (sgd).
        weight_decay: coupled L2 decay (sgd, adam) or decoupled decay (adamw).
        betas: Adam's ``(β1, β2)``.
        adam_eps: Adam's denominator term.
        epsilon: half-space projection threshold ``ε`` in [0, 1).
        score_momentum: score EMA factor ``ω`` in [0, 1].
        lam: base group-lasso coefficient ``λ``.
        eta: λ amplifier ``η``.
        kappa: λ cap factor ``κ``.
        deadline_window: fraction of ``hybrid_steps`` at the end that shrinks still non-zero groups.
        score_weights: weights of the cosine and inverse-magnitude score terms.
        official_adam_init: start Adam's moments at ``g'``/``g'²`` like the official code.
        param_names: names of the parameters in ``param_groups`` order, for messages (default: GeZIG slice names,
            else ``param_groups[i][j]``).

    Raises:
        ValueError: a hyper-parameter is out of range or not finite (the message names it and its value), a step
            count is not whole, the GeZIGs hold a parameter that is not in ``params``, or a budget is combined
            with ``target_group_sparsity`` or below the smallest reachable size (the message says that size).

    Example:
        >>> opt = H2SPG(model.parameters(), gezigs, is_valid, target_group_sparsity=3,
        ...             warmup_steps=500, hybrid_steps=2000, lr=0.1, momentum=0.9)  # doctest: +SKIP
    """

    RUN_KEY = RUN_KEY
    NAME = "H2SPG"
    NOUN = "GeZIG"
    RUN_FIELDS = ("step", "scores", "redundant", "rejected", "zero", "forced", "gezigs")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        gezigs: Sequence[Group],
        is_valid: Callable[[frozenset[int]], bool],
        *,
        target_group_sparsity: int | float | None = None,
        warmup_steps: int,
        hybrid_steps: int | None = None,
        target_params: int | float | None = None,
        target_macs: int | float | None = None,
        size_of: SizeOf | None = None,
        reference_size: tuple[int, int] | None = None,
        variant: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        epsilon: float = 0.95,
        score_momentum: float = 0.9,
        lam: float | None = None,
        eta: float | None = None,
        kappa: float | None = None,
        deadline_window: float = 0.5,
        score_weights: tuple[float, float] = (0.5, 0.5),
        official_adam_init: bool = False,
        param_names: Sequence[str] | None = None,
    ) -> None:
        base = preset(variant, lr, momentum, dampening, weight_decay, betas, adam_eps)
        lam, eta, kappa, warmup_steps, hybrid_steps = self._halfspace_settings(
            variant, epsilon=epsilon, lam=lam, eta=eta, kappa=kappa, deadline_window=deadline_window,
            score_weights=score_weights, warmup_steps=warmup_steps, hybrid_steps=hybrid_steps)
        check_number("score_momentum", score_momentum, 0.0, 1.0)
        if not gezigs:
            raise ValueError("gezigs is empty: H2SPG needs at least one removable group")
        budget = _budget.resolve_budget(target_group_sparsity=target_group_sparsity, target_params=target_params,
                                        target_macs=target_macs, size_of=size_of, reference_size=reference_size)
        k = None if budget else kernels.target_count(target_group_sparsity, len(gezigs))
        self._is_valid = is_valid
        extra = self._init_budget(budget, size_of, gezigs, is_valid)
        self._setup(
            params, gezigs, **base, official_adam_init=official_adam_init, param_names=param_names,
            defaults={"target_group_sparsity": target_group_sparsity, "k": k, "warmup_steps": warmup_steps,
                      "hybrid_steps": hybrid_steps, "epsilon": epsilon, "score_momentum": score_momentum,
                      "lam": lam, "eta": eta, "kappa": kappa, "deadline_window": deadline_window,
                      "score_weights": tuple(score_weights)},
            run={"step": 0, "scores": torch.zeros(len(gezigs), dtype=torch.float64), "redundant": None,
                 "rejected": [], "zero": [], "forced": [], "gezigs": [g.name for g in gezigs], **extra},
        )

    @property
    def _gezigs(self) -> tuple[Group, ...]:
        return self._groups

    # ----------------------------------------------------------------------------------------- introspection
    @property
    def redundant_groups(self) -> list[Group]:
        """The redundant set ``G_r`` in acceptance order (empty before the end of warm-up)."""
        return [self._groups[i] for i in self.state[RUN_KEY]["redundant"] or []]

    @property
    def rejected_groups(self) -> list[Group]:
        """GeZIGs the hierarchical search examined and refused because removing them breaks validity."""
        return [self._groups[i] for i in self.state[RUN_KEY]["rejected"]]

    @property
    def redundancy_scores(self) -> Tensor:
        """A copy of the averaged scores ``s`` (one per GeZIG, larger = more redundant)."""
        return self.state[RUN_KEY]["scores"].clone()

    @property
    def phase(self) -> str:
        """Phase of the next step: ``"warmup"``, ``"hybrid"`` or ``"plain"``."""
        run = self.state[RUN_KEY]
        nxt = run["step"] + 1
        if run["redundant"] is None:
            return "warmup" if nxt <= self.defaults["warmup_steps"] else "hybrid"
        return "hybrid" if self._targets(run) and not self._past_deadline(nxt) else "plain"

    def metrics(self) -> dict[str, float | int | str]:
        """Progress figures: step, phase, group sparsity, norms of the important and redundant GeZIGs."""
        run = self.state[RUN_KEY]
        redundant = set(run["redundant"] or [])
        norms = [g.norm() for g in self._groups]
        return {
            "step": run["step"],
            "phase": self.phase,
            "target_k": self.defaults["k"],
            "n_gezigs": len(self._groups),
            "n_redundant": len(redundant),
            "n_zero_groups": len(run["zero"]),
            "group_sparsity": len(run["zero"]) / len(self._groups),
            "redundant_norm": math.sqrt(sum(norms[i] ** 2 for i in redundant)),
            "important_norm": math.sqrt(sum(v**2 for i, v in enumerate(norms) if i not in redundant)),
        }

    # ---------------------------------------------------------------------------------------------- policy
    def _targets(self, run: dict[str, Any]) -> list[int]:
        zero = set(run["zero"])
        return [g for g in run["redundant"] or [] if g not in zero]

    def _target_mask(self, run: dict[str, Any]) -> Tensor:
        return self._mask_of("redundant", run["redundant"]) & ~self._mask_of("zero", run["zero"])

    def _plan(self, run: dict[str, Any], n: int) -> tuple[Tensor | None, bool]:
        hybrid = n > self.defaults["warmup_steps"]
        if run["redundant"] is None:  # spec §5.5: scores over all GeZIGs
            return torch.ones(len(self._groups), dtype=torch.bool), hybrid
        if not hybrid or self._past_deadline(n) or len(run["zero"]) == len(run["redundant"]):
            return None, False
        return self._target_mask(run), True

    def _decide(self, run: dict[str, Any], n: int, per_group: Tensor | None) -> Decision | None:
        if per_group is None:
            return None
        cfg = self.defaults
        if run["redundant"] is None:
            x_sq, xd, d_sq = per_group[:, 0], per_group[:, 1], per_group[:, 2]
            step = kernels.dhspg_scores(xd, x_sq, d_sq, self._layout.group_numel, weights=cfg["score_weights"])
            omega = cfg["score_momentum"]
            run["scores"] = omega * run["scores"] + (1 - omega) * step  # spec §5.5 EMA
            if n >= cfg["warmup_steps"]:
                self._select(run)
        if n <= cfg["warmup_steps"] or self._past_deadline(n):
            return None
        targets = self._target_mask(run)
        return self._halfspace(run, n, per_group, targets) if bool(targets.any()) else None

    def _budget_selects(self, run: dict[str, Any], n: int) -> bool:
        return run["redundant"] is None and n >= self.defaults["warmup_steps"]

    def _select(self, run: dict[str, Any]) -> None:
        """spec §5.5: the redundant set is chosen once, after warm-up, and then fixed (by K, or by the budget:
        the shortest fitting prefix of the walk, `_budget`)."""
        if self._budget is not None:
            chosen = self._fit(run, run["scores"].tolist())
            run["redundant"], run["rejected"] = list(chosen.selected), list(chosen.rejected)
            return
        k = self.defaults["k"]
        chosen = kernels.greedy_select(run["scores"].tolist(), [g.macs for g in self._groups], k, self._is_valid,
                                       node_of=self._node_of)
        run["redundant"] = list(chosen.selected)
        run["rejected"] = list(chosen.rejected)
        if len(chosen.selected) < k:
            warnings.warn(
                f"H2SPG: only {len(chosen.selected)} of K={k} GeZIGs can be removed while the network stays "
                "valid; training continues with that redundant set",
                UserWarning,
                stacklevel=5,
            )

    def _check_run(self, run: Any) -> None:
        """The optimizer-level entry of a state dict: types, ranges, agreement with the weights and validity."""
        where = _checks.check_run_common(run, self, self.RUN_FIELDS, "gezigs")
        k = self._check_budget(where, run)
        n, names, noun = len(self._groups), [g.name for g in self._groups], self.NOUN
        _checks.check_scores(where, "scores", run["scores"], n)
        redundant = None if run["redundant"] is None else _checks.index_list(where, "redundant", run["redundant"],
                                                                            n, noun)
        rejected = _checks.index_list(where, "rejected", run["rejected"], n, noun)
        zero = _checks.index_list(where, "zero", run["zero"], n, noun)
        forced = _checks.index_list(where, "forced", run["forced"], n, noun)
        chosen = set(redundant or [])
        if redundant is not None:
            if k is None or len(redundant) > k:
                raise ValueError(f"{where}['redundant'] holds {len(redundant)} GeZIGs, more than K={k}")
            if not self._valid(redundant):
                raise ValueError(
                    f"{where}['redundant'] = {[names[i] for i in redundant]} is not a valid removal (it would "
                    "disconnect the network); the state dict was edited or belongs to another model"
                )
        if chosen & set(rejected):
            raise ValueError(f"{where}: GeZIGs {sorted(chosen & set(rejected))} are both redundant and rejected")
        _checks.check_subsets(where, names, [("zero", zero, chosen, "redundant"),
                                             ("forced", forced, set(zero), "zero")])
        _checks.check_zero_weights(where, zero, self._groups, noun)
