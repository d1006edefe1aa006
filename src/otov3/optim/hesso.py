"""HESSO: Hybrid Efficient Structured Sparse Optimizer (spec §5.6) as a `torch.optim.Optimizer`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.optim import _budget, _checks, kernels
from otov3.optim._budget import BudgetMixin, SizeOf
from otov3.optim._checks import require, whole_steps
from otov3.optim._engine import Decision, GroupOptimizer, preset
from otov3.space import Group

__all__ = ["HESSO"]

RUN_KEY = "hesso"


class HESSO(BudgetMixin, GroupOptimizer):
    r"""Trains a network once and shrinks a target fraction of its groups progressively to exact zero (no λ).

    The algorithm (spec §5.6), step ``n = 1, 2, …``; ``S`` = ``warmup_steps``, ``P`` = ``hybrid_steps``,
    ``Q`` = ``periods``, ``D = P // Q``, ``K = int(N·min(ρ, 0.999))``::

        d_n = base_direction(x_n);  x ← x − α_n d_n  for every group (AdamW decay first)   # §5.1
        period start (n = S+1, S+1+D, …, Q of them):
            importance over the groups not yet pruned (§5.2, larger = more important)
            active = the lowest-importance quota (K//Q; the last period takes the rest); in erasing mode a group
                     is admitted only if is_valid(pruned ∪ active ∪ {g}) (spec §5.6)
            budget (target_params / target_macs): K = the shortest prefix of the first period's unlimited walk
                     whose predicted sub-network fits; the quotas split K, and the last period admits along its
                     own order until the predicted size of everything chosen fits
        t = (n − S) mod D:   x_g ← x_g · (D − t − 1)/(D − t)  for active groups        # 0 at t = D − 1
        t = D − 1:          active → pruned (exact zeros, kept at zero with their buffer rows)

    The factors multiply to a linear decay that is exactly 0 after ``D − 1`` steps of the period (D = 1 zeroes at
    once), so all K groups are zero by step ``S + Q·D − 1 ≤ S + P``: the deadline ``warmup_steps +
    hybrid_steps`` holds by construction. HESSO has no λ, no ε and no projection; its shrink factor ignores
    ``α_n`` (spec §5.7) while the active groups' gradient steps follow the schedule.

    Symbols and arguments: ``lr``, ``momentum``, ``dampening``, ``betas``, ``adam_eps``, ``weight_decay``,
    ``official_adam_init`` as `otov3.optim.H2SPG`; ``periods`` Q (default 1, spec §5.6; the tutorials use 10);
    ``importance_weights``: weights of magnitude, average magnitude, cosine, first- and second-order Taylor
    (default 0.2 each). Everything mutable lives in ``state['hesso']``, so ``state_dict()`` resumes
    bit-identically; LR schedulers work as with torch.optim.

    Args:
        params: every trainable parameter of the model, or param-group dicts.
        groups: the groups (pruning-mode channels, or GeZIGs).
        is_valid: validity of removing the groups with these indices (erasing mode); None: any set (pruning).
        target_group_sparsity: ρ, the fraction of the groups to zero, or the count K.
        target_params: instead of ρ, a parameter budget (fraction or count; `otov3.optim._budget`).
        target_macs: instead of ρ, a MAC budget (fraction or count).
        size_of: with a budget, ``(params, MACs)`` of the sub-network without the groups of these indices.
        reference_size: the super-network's ``(params, MACs)``; default ``size_of(frozenset())``.
        warmup_steps: ``S``, plain steps before the first period.
        hybrid_steps: ``P``, the steps of the pruning phase; every target group is zero by ``S + P``.

    Raises:
        ValueError: a hyper-parameter is out of range or not finite (the message names it), ``hybrid_steps`` is
            smaller than ``periods``, the groups hold a parameter that is not in ``params``, or a budget is
            combined with ``target_group_sparsity`` or below the smallest reachable size (the message says it).
        OptimizerError: at the first or last period start, the importance order cannot reach the budget
            (nothing moved in that step).
    """

    RUN_KEY = RUN_KEY
    NAME = "HESSO"
    RUN_FIELDS = ("step", "period", "importance", "active", "zero", "rejected", "groups")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        groups: Sequence[Group],
        is_valid: Callable[[frozenset[int]], bool] | None = None,
        *,
        target_group_sparsity: int | float | None = None,
        warmup_steps: int,
        hybrid_steps: int,
        periods: int = 1,
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
        importance_weights: tuple[float, float, float, float, float] = (0.2, 0.2, 0.2, 0.2, 0.2),
        official_adam_init: bool = False,
        param_names: Sequence[str] | None = None,
    ) -> None:
        base = preset(variant, lr, momentum, dampening, weight_decay, betas, adam_eps)
        warmup_steps = whole_steps("warmup_steps", warmup_steps, 0)
        if hybrid_steps is None:
            raise ValueError("hybrid_steps=None: HESSO needs the length of its pruning phase (a whole number >= 1)")
        hybrid_steps = whole_steps("hybrid_steps", hybrid_steps, 1)
        periods = whole_steps("periods", periods, 1)
        require(periods <= hybrid_steps, "periods", periods, f"must be <= hybrid_steps={hybrid_steps} (D = P // Q)")
        require(len(importance_weights) == 5 and all(_checks._real(w) and w >= 0 for w in importance_weights)
                and sum(importance_weights) > 0, "importance_weights", importance_weights,
                "must be five finite non-negative weights, not all zero")
        if not groups:
            raise ValueError("groups is empty: HESSO needs at least one prunable group")
        budget = _budget.resolve_budget(target_group_sparsity=target_group_sparsity, target_params=target_params,
                                        target_macs=target_macs, size_of=size_of, reference_size=reference_size)
        k = None if budget else kernels.target_count(target_group_sparsity, len(groups))
        self._is_valid = is_valid
        budget_run = self._init_budget(budget, size_of, groups, is_valid)
        self._setup(
            params, groups, **base, official_adam_init=official_adam_init, param_names=param_names,
            defaults={"target_group_sparsity": target_group_sparsity, "k": k, "warmup_steps": warmup_steps,
                      "hybrid_steps": hybrid_steps, "periods": periods, "period_steps": hybrid_steps // periods,
                      "importance_weights": tuple(importance_weights)},
            run={"step": 0, "period": 0, "importance": torch.zeros(len(groups), dtype=torch.float64),
                 "active": [], "zero": [], "rejected": [], "groups": [g.name for g in groups], **budget_run},
        )

    # ----------------------------------------------------------------------------------------- introspection
    @property
    def redundant_groups(self) -> list[Group]:
        """The groups chosen so far: pruned (zero) ones, then the active (shrinking) ones."""
        run = self.state[RUN_KEY]
        return [self._groups[i] for i in [*run["zero"], *run["active"]]]

    @property
    def active_groups(self) -> list[Group]:
        """The groups shrinking in the current period."""
        return [self._groups[i] for i in self.state[RUN_KEY]["active"]]

    @property
    def importance_scores(self) -> Tensor:
        """A copy of the last importance scores (larger = more important; 0 for groups not scored)."""
        return self.state[RUN_KEY]["importance"].clone()

    @property
    def phase(self) -> str:
        """Phase of the next step: ``"warmup"``, ``"hybrid"`` (pruning periods) or ``"plain"``."""
        run, cfg = self.state[RUN_KEY], self.defaults
        nxt = run["step"] + 1
        if nxt <= cfg["warmup_steps"]:
            return "warmup"
        last = cfg["warmup_steps"] + cfg["periods"] * cfg["period_steps"]
        return "hybrid" if run["active"] or (nxt <= last and run["period"] < cfg["periods"]) or \
            self._period_start(run, nxt) else "plain"

    def metrics(self) -> dict[str, float | int | str]:
        """Progress figures: step, phase, period, target K, active and zero groups, group sparsity."""
        run = self.state[RUN_KEY]
        return {"step": run["step"], "phase": self.phase, "period": run["period"], "target_k": self.defaults["k"],
                "n_groups": len(self._groups), "n_active": len(run["active"]), "n_zero_groups": len(run["zero"]),
                "group_sparsity": len(run["zero"]) / len(self._groups)}

    # ---------------------------------------------------------------------------------------------- policy
    def _period_start(self, run: dict[str, Any], n: int) -> bool:
        cfg = self.defaults
        s, d = cfg["warmup_steps"], cfg["period_steps"]
        return n > s and run["period"] < cfg["periods"] and (n - s - 1) % d == 0

    def _budget_selects(self, run: dict[str, Any], n: int) -> bool:
        """The first period fixes K, the last one the final set: both may find the budget out of reach."""
        return self._period_start(run, n) and run["period"] in (0, self.defaults["periods"] - 1)

    def _plan(self, run: dict[str, Any], n: int) -> tuple[Tensor | None, bool]:
        if not self._period_start(run, n):
            return None, False
        eligible = ~self._mask([*run["zero"], *run["active"]])
        return eligible, False

    def _decide(self, run: dict[str, Any], n: int, per_group: Tensor | None) -> Decision | None:
        cfg = self.defaults
        if per_group is not None:
            self._choose(run, per_group)
        if not run["active"]:
            return None
        d = cfg["period_steps"]
        t = (n - cfg["warmup_steps"]) % d
        if t == 0 and d > 1:  # the idle step between periods (nothing is active then)
            return None
        factor = (d - t - 1) / (d - t)
        m = torch.ones(len(self._groups), dtype=torch.float64)
        m[run["active"]] = factor
        zeroed = []
        if factor == 0.0:  # t = D − 1: active → pruned
            zeroed, run["active"] = list(run["active"]), []
        return Decision(c=None, m=m, zeroed=zeroed)

    def _choose(self, run: dict[str, Any], per_group: Tensor) -> None:
        """A period starts: importance over the groups not yet chosen, the quota of the least important (with a
        budget, the first period's walk fixes K and the last period's walk stops where everything chosen fits)."""
        cfg = self.defaults
        taken = set(run["zero"]) | set(run["active"])
        eligible = [g for g in range(len(self._groups)) if g not in taken]
        idx = torch.tensor(eligible, dtype=torch.long)
        sub = per_group[idx]
        score = kernels.hesso_importance(sub[:, 1], sub[:, 0], sub[:, 2], self._layout.group_numel[idx],
                                         cfg["importance_weights"])
        importance = torch.zeros(len(self._groups), dtype=torch.float64)
        importance[idx] = score
        run["importance"] = importance
        run["period"] += 1
        q, order = cfg["periods"], (-importance).tolist()
        fit = self._budget is not None and run["period"] in (1, q)
        if fit:  # budget: the first period's walk fixes K, the last period's walk fits the final set
            chosen = self._fit(run, order, eligible=eligible, given=sorted(taken))
        if not fit or run["period"] < q:  # the period's quota of K
            k = cfg["k"]
            quota = k // q if run["period"] < q else k - len(taken)
            chosen = kernels.greedy_select(order, [g.macs for g in self._groups], max(quota, 0), self._is_valid,
                                           given=sorted(taken), eligible=eligible, node_of=self._node_of)
        run["active"] = list(chosen.selected)
        run["rejected"] = sorted(set(run["rejected"]) | set(chosen.rejected))
        if run["period"] == q and len(taken) + len(chosen.selected) < cfg["k"]:
            warnings.warn(f"HESSO: only {len(taken) + len(chosen.selected)} of K={cfg['k']} groups can be removed "
                          "while the network stays valid; training continues with those", UserWarning, stacklevel=5)

    def _check_run(self, run: Any) -> None:
        where = _checks.check_run_common(run, self, self.RUN_FIELDS, "groups")
        k = self._check_budget(where, run)
        n, names, noun, cfg = len(self._groups), [g.name for g in self._groups], self.NOUN, self.defaults
        _checks.check_scores(where, "importance", run["importance"], n)
        period = run["period"]
        if isinstance(period, bool) or not isinstance(period, int) or not 0 <= period <= cfg["periods"]:
            raise ValueError(f"{where}['period']={period!r} must be an int in 0..{cfg['periods']}")
        active = _checks.index_list(where, "active", run["active"], n, noun)
        zero = _checks.index_list(where, "zero", run["zero"], n, noun)
        _checks.index_list(where, "rejected", run["rejected"], n, noun)
        both = set(active) & set(zero)
        if both:
            raise ValueError(f"{where}: groups {[names[i] for i in sorted(both)]} are both active and zero")
        if len(active) + len(zero) > (k or 0):
            raise ValueError(f"{where}: {len(active) + len(zero)} active and zero groups, more than K={k}")
        chosen = frozenset(active) | frozenset(zero)
        if chosen and not self._valid(chosen):
            raise ValueError(f"{where}: the active and zero groups {[names[i] for i in sorted(chosen)]} are not a "
                             "valid removal; the state dict was edited or belongs to another model")
        _checks.check_zero_weights(where, zero, self._groups, noun)
