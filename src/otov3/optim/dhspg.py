"""DHSPG: Dual Half-Space Projected Gradient (spec §5.4, OTOv2 Algorithm 3) as a `torch.optim.Optimizer`."""

from __future__ import annotations

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

__all__ = ["DHSPG"]

RUN_KEY = "dhspg"


class DHSPG(BudgetMixin, HalfSpaceOptimizer):
    r"""Trains a network once and drives a target fraction of its groups (pruning-mode channels) to exact zero.

    The algorithm (spec §5.4), step ``t = 1, 2, …``; ``T_s`` = ``warmup_steps``::

        d_t = base_direction(x_t)                                        # §5.1: SGD / Adam / AdamW
        t ≤ T_s:       x ← x − α_t d_t                                   # plain training
        t = T_s (or 1): s = dhspg_score(x_t, d_t)  (one step, no EMA)     # §5.2
                        G_p = top K_p by s, K_p = int(N·min(ρ+δ, 0.999)) (erasing mode: the greedy walk that
                              keeps is_valid(G_p) true, as H2SPG)
                        (budget: G_p = the shortest prefix of the unlimited walk whose predicted sub-network
                              fits target_params / target_macs; K = K_p = its length, no tolerance)
        t > T_s, while fewer than K = int(N·min(ρ, 0.999)) groups are zero:
                        for g ∈ G_p, x_g ≠ 0:  x̃_g = x_g − α_t (d_g + λ_g x_g/‖x_g‖),  λ_g = lambda_rule(…)
                                               x_g ← 0 if ⟨x̃_g, x_g⟩ < ε‖x_g‖² else x̃_g
                        at most K zero groups in all (the highest-scored first); the others: plain steps
        afterwards:     plain steps; zero groups stay exactly 0 with their buffer rows

    Deadline (``hybrid_steps = D``): every one of the K groups is exactly zero after step ``T_s + D``. In the
    last ``ceil(deadline_window·D)`` steps the candidates narrow to the zero groups plus the best-scored
    non-zero ones up to K (``redundant_groups``); those shrink by ``(R−1)/R`` after their λ step, as in H2SPG,
    and the last factor is 0. ``hybrid_steps=None`` is the paper's behaviour (no guarantee).

    Symbols and arguments: as `otov3.optim.H2SPG` (``lr``, ``momentum``, ``dampening``, ``betas``,
    ``adam_eps``, ``weight_decay``, ``epsilon`` ε, ``lam`` λ, ``eta`` η, ``kappa`` κ, ``deadline_window``,
    ``score_weights``, ``official_adam_init``), plus ``tolerance`` δ (default 0.05, spec §5.4): the extra
    fraction of candidates penalised beyond the target. ``target_group_sparsity`` is ρ (a fraction of the groups)
    or the count K. ``lr`` and the other per-group options are read every step, so LR schedulers drive the base
    and λ steps alike (spec §5.7); everything mutable lives in ``state`` (``state['dhspg']``), so
    ``state_dict()`` resumes bit-identically.

    Args:
        params: every trainable parameter of the model, or param-group dicts.
        groups: the groups (pruning-mode channels, or GeZIGs).
        is_valid: validity of removing the groups with these indices (erasing mode); None: any set (pruning).
        target_group_sparsity: ρ, the fraction of the groups to zero, or the count K.
        target_params: instead of ρ, a parameter budget (fraction or count; `otov3.optim._budget`): the final
            zero set is exactly the shortest prefix of the score walk that fits it.
        target_macs: instead of ρ, a MAC budget (fraction or count).
        size_of: with a budget, ``(params, MACs)`` of the sub-network without the groups of these indices.
        reference_size: the super-network's ``(params, MACs)``; default ``size_of(frozenset())``.
        warmup_steps: ``T_s``, plain steps before the (one-step) scores select the candidates.
        hybrid_steps: ``D``, the deadline for the K groups to reach zero, counted after warm-up.

    Raises:
        ValueError: a hyper-parameter is out of range or not finite (the message names it), a step count is not
            whole, the groups hold a parameter that is not in ``params``, or a budget is combined with
            ``target_group_sparsity`` or below the smallest reachable size (the message says that size).
    """

    RUN_KEY = RUN_KEY
    NAME = "DHSPG"
    RUN_FIELDS = ("step", "scores", "candidates", "rejected", "zero", "forced", "groups")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        groups: Sequence[Group],
        is_valid: Callable[[frozenset[int]], bool] | None = None,
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
        tolerance: float = 0.05,
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
        check_number("tolerance", tolerance, 0.0, 1.0)
        if not groups:
            raise ValueError("groups is empty: DHSPG needs at least one prunable group")
        n = len(groups)
        budget = _budget.resolve_budget(target_group_sparsity=target_group_sparsity, target_params=target_params,
                                        target_macs=target_macs, size_of=size_of, reference_size=reference_size)
        k = k_p = None  # a budget decides both at the end of warm-up
        if budget is None:
            k = kernels.target_count(target_group_sparsity, n)
            k_p = int(n * min(target_group_sparsity + tolerance, 0.999)) \
                if isinstance(target_group_sparsity, float) else k + int(n * tolerance)
            k_p = max(k, min(k_p, n))
        self._is_valid = is_valid
        budget_run = self._init_budget(budget, size_of, groups, is_valid)
        self._setup(
            params, groups, **base, official_adam_init=official_adam_init, param_names=param_names,
            defaults={"target_group_sparsity": target_group_sparsity, "k": k, "k_p": k_p,
                      "warmup_steps": warmup_steps, "hybrid_steps": hybrid_steps, "epsilon": epsilon,
                      "tolerance": tolerance, "lam": lam, "eta": eta, "kappa": kappa,
                      "deadline_window": deadline_window, "score_weights": tuple(score_weights)},
            run={"step": 0, "scores": torch.zeros(n, dtype=torch.float64), "candidates": None, "rejected": [],
                 "zero": [], "forced": [], "groups": [g.name for g in groups], **budget_run},
        )

    # ----------------------------------------------------------------------------------------- introspection
    @property
    def candidate_groups(self) -> list[Group]:
        """``G_p``: the groups under the λ step, best-scored first (empty before the end of warm-up)."""
        return [self._groups[i] for i in self.state[RUN_KEY]["candidates"] or []]

    @property
    def redundant_groups(self) -> list[Group]:
        """The K groups that will be zero at the deadline: the zero ones, then the best-scored other candidates."""
        return [self._groups[i] for i in self._promised(self.state[RUN_KEY])]

    @property
    def redundancy_scores(self) -> Tensor:
        """A copy of the selection scores (one per group, larger = more redundant; zero before selection)."""
        return self.state[RUN_KEY]["scores"].clone()

    @property
    def phase(self) -> str:
        """Phase of the next step: ``"warmup"``, ``"hybrid"`` or ``"plain"``."""
        run = self.state[RUN_KEY]
        nxt = run["step"] + 1
        if nxt <= self.defaults["warmup_steps"]:
            return "warmup"
        if run["candidates"] is None:
            return "hybrid"
        return "hybrid" if bool(self._target_mask(run, nxt).any()) else "plain"

    def metrics(self) -> dict[str, float | int | str]:
        """Progress figures: step, phase, target K, candidates, zero groups, group sparsity."""
        run = self.state[RUN_KEY]
        return {"step": run["step"], "phase": self.phase, "target_k": self.defaults["k"],
                "n_groups": len(self._groups), "n_candidates": len(run["candidates"] or []),
                "n_zero_groups": len(run["zero"]), "group_sparsity": len(run["zero"]) / len(self._groups)}

    # ---------------------------------------------------------------------------------------------- policy
    def _promised(self, run: dict[str, Any]) -> list[int]:
        if run["candidates"] is None:
            return []
        zero = set(run["zero"])
        rest = [g for g in run["candidates"] if g not in zero]
        return list(run["zero"]) + rest[: max(0, self.defaults["k"] - len(zero))]

    def _target_mask(self, run: dict[str, Any], n: int) -> Tensor:
        """The groups under the λ step at step ``n``: none once K are zero or past the deadline; all non-zero
        candidates before the deadline window, the promised ones inside it."""
        k = self.defaults["k"]
        if len(run["zero"]) >= k or self._past_deadline(n) or n <= self.defaults["warmup_steps"]:
            return torch.zeros(len(self._groups), dtype=torch.bool)
        window = self._in_window(n)
        key = ("targets", self._loads, len(run["zero"]), window)
        if key not in self._caches:
            pool = self._promised(run) if window else run["candidates"]
            self._caches = {k_: v for k_, v in self._caches.items() if k_[0] != "targets"}
            self._caches[key] = self._mask(pool) & ~self._mask(run["zero"])
        return self._caches[key]

    def _selecting(self, run: dict[str, Any], n: int) -> bool:
        return run["candidates"] is None and n >= self.defaults["warmup_steps"]

    _budget_selects = _selecting

    def _set_k(self, k: int | None) -> None:
        self.defaults["k"] = self.defaults["k_p"] = k  # budget: the candidates are exactly the fitting prefix

    def _plan(self, run: dict[str, Any], n: int) -> tuple[Tensor | None, bool]:
        hybrid = n > self.defaults["warmup_steps"]
        if self._selecting(run, n):  # one-step scores over all groups
            return torch.ones(len(self._groups), dtype=torch.bool), hybrid
        if run["candidates"] is None or not hybrid:
            return None, False
        targets = self._target_mask(run, n)
        return (targets, True) if bool(targets.any()) else (None, False)

    def _decide(self, run: dict[str, Any], n: int, per_group: Tensor | None) -> Decision | None:
        if per_group is None:
            return None
        if self._selecting(run, n):
            cfg = self.defaults
            run["scores"] = kernels.dhspg_scores(per_group[:, 1], per_group[:, 0], per_group[:, 2],
                                                 self._layout.group_numel, weights=cfg["score_weights"])
            if self._budget is not None:
                chosen = self._fit(run, run["scores"].tolist())
            else:
                chosen = kernels.greedy_select(run["scores"].tolist(), [g.macs for g in self._groups], cfg["k_p"],
                                               self._is_valid, node_of=self._node_of)
            run["candidates"], run["rejected"] = list(chosen.selected), list(chosen.rejected)
            if len(chosen.selected) < cfg["k"]:
                warnings.warn(f"DHSPG: only {len(chosen.selected)} of K={cfg['k']} groups can be removed while the "
                              "network stays valid; training continues with those", UserWarning, stacklevel=5)
        targets = self._target_mask(run, n)
        if not bool(targets.any()):
            return None
        room = self.defaults["k"] - len(run["zero"])
        return self._halfspace(run, n, per_group, targets, room=room, priority=run["scores"])

    def _check_run(self, run: Any) -> None:
        where = _checks.check_run_common(run, self, self.RUN_FIELDS, "groups")
        k = self._check_budget(where, run)
        k_p = self.defaults["k_p"] if self._budget is None else k
        n, names, noun = len(self._groups), [g.name for g in self._groups], self.NOUN
        _checks.check_scores(where, "scores", run["scores"], n)
        cand = None if run["candidates"] is None else _checks.index_list(where, "candidates", run["candidates"], n,
                                                                        noun)
        rejected = _checks.index_list(where, "rejected", run["rejected"], n, noun)
        zero = _checks.index_list(where, "zero", run["zero"], n, noun)
        forced = _checks.index_list(where, "forced", run["forced"], n, noun)
        if cand is not None:
            if k_p is None or len(cand) > k_p:
                raise ValueError(f"{where}['candidates'] holds {len(cand)} groups, more than K_p={k_p}")
            if not self._valid(cand):
                raise ValueError(f"{where}['candidates'] is not a valid removal; the state dict was edited or "
                                 "belongs to another model")
        if len(zero) > (k or 0):
            raise ValueError(f"{where}['zero'] holds {len(zero)} groups, more than K={k}")
        _checks.check_subsets(where, names, [("zero", zero, set(cand or []), "candidates"),
                                             ("forced", forced, set(zero), "zero"),
                                             ("rejected", rejected, set(range(n)) - set(cand or []), "not candidates")])
        _checks.check_zero_weights(where, zero, self._groups, noun)
