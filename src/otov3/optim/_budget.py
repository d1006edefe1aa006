"""Budget targets (issue 13): a parameter or MAC budget instead of a number of groups.

``target_params=`` / ``target_macs=`` (a float in (0, 1): a fraction of the super-network; a number >= 1: an
absolute count) replace ``target_group_sparsity``. The optimizer's admission walk (its score order, each group
admitted while the network stays valid: `kernels.greedy_select` with no count limit) is cut to its shortest
prefix whose *predicted* sub-network fits; the prediction is ``size_of(indices) -> (params, MACs)``, the sizes of
the sub-network built without those groups (`otov3.sizing`). Sizes only shrink along the walk, so the prefix
length K is found by binary search with about ``log2(N)`` builds; then training proceeds as with that K.

The logic needs only the walk and ``size_of``, never the mode, so any search space can bring its own sizer.
`BudgetMixin` adds it to the optimizers: the record in the run state (``run['budget']``: target, limit, K,
prediction) that resumes bit-identically, and the all-or-nothing step that restores everything when the score
order cannot reach the budget.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from otov3.errors import OptimizerError
from otov3.optim import kernels

__all__ = ["Budget", "BudgetMixin", "SizeOf", "resolve_budget", "shortest_fitting_prefix", "smallest_reachable"]

SizeOf = Callable[[frozenset[int]], tuple[int, int]]
_MEASURES = {"params": 0, "macs": 1}
_UNITS = {"params": "parameters", "macs": "MACs"}


@dataclass(frozen=True)
class Budget:
    """A resolved budget: which measure, what the user asked for, the absolute ceiling and the reference.

    Attributes:
        kind: ``"params"`` or ``"macs"``.
        requested: the argument as given (a fraction in (0, 1) or an absolute count).
        limit: the absolute ceiling: the predicted sub-network fits when its size is ``<= limit``.
        reference: the super-network's size in that measure (what fractions are of).
    """

    kind: str
    requested: float
    limit: float
    reference: int

    @property
    def argument(self) -> str:
        return f"target_{self.kind}"

    def measure(self, size: tuple[int, int]) -> int:
        """The budget's measure of a ``(params, MACs)`` pair."""
        return size[_MEASURES[self.kind]]

    def fits(self, size: tuple[int, int]) -> bool:
        return self.measure(size) <= self.limit

    def show(self, value: float) -> str:
        """``value`` in the budget's unit, absolute and as a fraction of the super-network."""
        return f"{value:,.0f} {_UNITS[self.kind]} ({value / self.reference:.4g} of the super-network's " \
               f"{self.reference:,})"

    def asked(self) -> str:
        return f"{self.argument}={self.requested!r} (a limit of {self.show(self.limit)})"


def resolve_budget(*, target_group_sparsity: Any, target_params: Any, target_macs: Any, size_of: SizeOf | None,
                   reference_size: tuple[int, int] | None) -> Budget | None:
    """The budget the arguments ask for, or None when they ask for a number of groups; checks the combination.

    Raises:
        ValueError: both budgets, a budget and ``target_group_sparsity``, neither, a budget without ``size_of``,
            a number that is not finite and positive, or a budget that is not below the super-network's size.
    """
    given = {k: v for k, v in (("target_params", target_params), ("target_macs", target_macs)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"pass at most one of target_params and target_macs, got {given}")
    if not given:
        if target_group_sparsity is None:
            raise ValueError("pass target_group_sparsity (a count or fraction of the groups), target_params or "
                             "target_macs")
        return None
    (name, value), = given.items()
    if target_group_sparsity is not None:
        raise ValueError(f"pass either target_group_sparsity={target_group_sparsity!r} or {name}={value!r}, not "
                         "both: a budget decides how many groups are removed")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a fraction of the super-network in (0, 1) or an absolute "
                         "count >= 1")
    if size_of is None:
        raise ValueError(f"{name} needs size_of, the predicted (params, MACs) of the sub-network without a set of "
                         "groups (oto.h2spg/hesso/dhspg pass it)")
    kind = name.removeprefix("target_")
    reference = (reference_size if reference_size is not None else size_of(frozenset()))[_MEASURES[kind]]
    if reference <= 0:
        raise ValueError(f"{name}={value!r}: the super-network has no {_UNITS[kind]} to budget (spec §7 counts the "
                         "MACs of Conv, ConvTranspose and Linear only); pass target_group_sparsity instead")
    limit = value * reference if value < 1 else float(value)
    budget = Budget(kind, value, limit, reference)
    if limit >= reference:
        raise ValueError(f"{name}={value!r} is not below the super-network's size, {budget.show(reference)}: "
                         f"nothing needs to be removed; pass a smaller {name}")
    return budget


def shortest_fitting_prefix(walk: Sequence[int], fits: Callable[[frozenset[int]], bool]) -> int | None:
    """The smallest ``k`` with ``fits(walk[:k])``, by binary search; None when even the whole walk does not fit.

    ``fits`` must be monotone along the walk (a longer prefix removes more, so it predicts a smaller network):
    then ``walk[:k-1]`` does not fit and ``walk[:k]`` does, with about ``log2(len(walk)) + 1`` calls.
    """
    if not fits(frozenset(walk)):
        return None
    lo, hi = 0, len(walk)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(frozenset(walk[:mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo


def smallest_reachable(budget: Budget, numel: Sequence[int], macs: Sequence[int],
                       is_valid: Callable[[frozenset[int]], bool] | None, node_of: Sequence[int] | None,
                       size_of: SizeOf) -> tuple[int, int]:
    """The predicted size after admitting every admissible group, largest first in the budget's measure.

    This is the smallest size the optimizer can be asked for; a score order may stop a little above it (then the
    step that selects raises `OptimizerError`).
    """
    weight = numel if budget.kind == "params" else macs
    walk = kernels.greedy_select([float(w) for w in weight], macs, None, is_valid, node_of=node_of)
    return size_of(frozenset(walk.selected))


def check_reachable(budget: Budget, groups: Sequence[Any], is_valid: Callable[[frozenset[int]], bool] | None,
                    size_of: SizeOf, who: str) -> None:
    """Refuses (ValueError) a budget below the smallest reachable size, saying that size; `groups` are `Group`s."""
    node_of = [g.node_group for g in groups]
    node_of = node_of if any(n >= 0 for n in node_of) else None
    least = smallest_reachable(budget, [g.numel() for g in groups], [g.macs for g in groups], is_valid, node_of,
                               size_of)
    if not budget.fits(least):
        value = budget.measure(least)
        raise ValueError(
            f"{who}: {budget.asked()} cannot be reached: the smallest reachable size, removing every group the "
            f"validity rules admit (largest first), is {budget.show(value)}. Pass {budget.argument} >= "
            f"{value / budget.reference:.4g} (or >= {value})."
        )


class _Unreachable(OptimizerError):
    """The score order at the selecting step cannot reach the budget (the step is undone before it propagates)."""


class BudgetMixin:
    """Budget targets for `GroupOptimizer` subclasses (mixed in before it).

    A subclass calls `_init_budget` in its constructor, `_fit` where it picks its redundant set, and says in
    `_budget_selects(run, n)` whether step ``n`` may select (that step is made all or nothing).
    """

    _budget: Budget | None = None
    _size_of: SizeOf | None = None

    def _init_budget(self, budget: Budget | None, size_of: SizeOf | None, groups: Sequence[Any],
                     is_valid: Callable[[frozenset[int]], bool] | None) -> dict[str, Any]:
        """Checks reachability (ValueError) and returns the run entries to add (none without a budget)."""
        self._budget, self._size_of = budget, size_of
        if budget is None:
            return {}
        check_reachable(budget, groups, is_valid, size_of, self.NAME)
        return {"budget": {"target": budget.kind, "limit": budget.limit, "k": None, "predicted": None}}

    @property
    def budget(self) -> Budget | None:
        """The budget (``target_params`` / ``target_macs``) this optimizer meets, or None (a group count)."""
        return self._budget

    @property
    def predicted_size(self) -> tuple[int, int] | None:
        """``(params, MACs)`` predicted for the sub-network without the chosen groups (None before it chooses)."""
        entry = self.state[self.RUN_KEY].get("budget")
        return None if entry is None or entry["predicted"] is None else tuple(entry["predicted"])

    def _budget_selects(self, run: dict[str, Any], n: int) -> bool:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _fit(self, run: dict[str, Any], scores: Sequence[float], *, eligible: Sequence[int] | None = None,
             given: Sequence[int] = ()) -> kernels.Selection:
        """The shortest prefix of the admission walk (``scores`` descending, after ``given``) that fits the budget.

        Records K (``given`` included) and the prediction in ``run['budget']`` and ``defaults['k']``.

        Raises:
            OptimizerError: even the whole walk does not fit; the step is undone (see `step`).
        """
        budget, macs = self._budget, [g.macs for g in self._groups]
        before = frozenset(given)
        walk = kernels.greedy_select(scores, macs, None, self._is_valid, given=given, eligible=eligible,
                                     node_of=self._node_of)
        k = shortest_fitting_prefix(walk.selected, lambda s: budget.fits(self._size_of(before | s)))
        if k is None:
            reached = budget.measure(self._size_of(before | frozenset(walk.selected)))
            raise _Unreachable(
                f"{self.NAME}: {budget.asked()} cannot be reached along the score order at step "
                f"{run['step'] + 1}: removing every group it admits leaves {budget.show(reached)}. Nothing moved "
                f"in this step. To fix: create the optimizer again with {budget.argument} >= "
                f"{reached / budget.reference:.4g} (or >= {reached}) and load this one's state_dict() into it "
                "(nothing was selected yet, so it resumes from here); or train longer before selecting."
            )
        chosen = kernels.greedy_select(scores, macs, k, self._is_valid, given=given, eligible=eligible,
                                       node_of=self._node_of)
        entry = run["budget"]
        entry["predicted"] = list(self._size_of(before | frozenset(chosen.selected)))
        self._set_k(len(before) + k)
        entry["k"] = len(before) + k
        return chosen

    def _set_k(self, k: int | None) -> None:
        self.defaults["k"] = k

    # -------------------------------------------------------------------------------------- state handling
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """`GroupOptimizer.step`; a step that selects by the budget is all or nothing: if the score order cannot
        reach the budget, parameters, buffers and the run state are restored before `OptimizerError` propagates."""
        run = self.state[self.RUN_KEY]
        if self._budget is None or not self._budget_selects(run, run["step"] + 1):
            return super().step(closure)
        saved = self._snapshot()
        try:
            return super().step(closure)
        except _Unreachable:
            self._restore(saved)
            raise

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[Any, dict[str, Any]], dict[str, Any]]:
        params = [p.detach().clone() for p in self._flat_params]
        state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                     for k, v in self.state[p].items()} for p in self._flat_params if p in self.state}
        return params, state, copy.deepcopy(self.state[self.RUN_KEY])

    def _restore(self, saved: tuple[list[torch.Tensor], dict[Any, dict[str, Any]], dict[str, Any]]) -> None:
        params, state, run = saved
        with torch.no_grad():
            for p, old in zip(self._flat_params, params, strict=True):
                p.copy_(old)
            for p in self._flat_params:  # in place: the engine may hold state[p]'s tensors as views of flat buffers
                if p not in state:
                    self.state.pop(p, None)
                    continue
                now, old = self.state[p], state[p]
                for key in [k for k in now if k not in old]:
                    del now[key]
                for key, value in old.items():
                    current = now.get(key)
                    if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor) and \
                            current.shape == value.shape and current.dtype == value.dtype:
                        current.copy_(value)
                    else:
                        now[key] = value
        self.state[self.RUN_KEY] = run
        self._set_k(run["budget"]["k"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """`GroupOptimizer.load_state_dict`, then K from the saved budget record (it was chosen by the budget)."""
        super().load_state_dict(state_dict)
        run = self.state[self.RUN_KEY]
        if self._budget is not None:
            run["budget"] = dict(run["budget"], target=self._budget.kind, limit=self._budget.limit)
            self._set_k(run["budget"]["k"])

    def _check_budget(self, where: str, run: dict[str, Any]) -> int | None:
        """The saved budget record agrees with this optimizer's budget; returns the saved K (None: not chosen)."""
        entry = run.get("budget")
        if self._budget is None:
            if entry is not None:
                raise ValueError(f"{where} was saved with a budget ({entry!r}); create the optimizer with the same "
                                 "target_params / target_macs")
            return self.defaults["k"]
        if not isinstance(entry, dict) or set(entry) != {"target", "limit", "k", "predicted"}:
            raise ValueError(f"{where}['budget'] must be the budget record {{target, limit, k, predicted}}, got "
                             f"{entry!r}; it was saved without {self._budget.argument}")
        k, predicted = entry["k"], entry["predicted"]
        if k is None:
            return None  # nothing chosen yet: this optimizer's budget applies from here
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self._groups):
            raise ValueError(f"{where}['budget']['k']={k!r} must be None or an int in 0..{len(self._groups)}")
        if (entry["target"], entry["limit"]) != (self._budget.kind, self._budget.limit):
            raise ValueError(f"{where} chose its groups for target_{entry['target']} <= {entry['limit']!r}, this "
                             f"optimizer has {self._budget.asked()}; create it with the same budget")
        if predicted is not None and not (isinstance(predicted, list | tuple) and len(predicted) == 2
                                          and all(isinstance(v, int) and not isinstance(v, bool) for v in predicted)):
            raise ValueError(f"{where}['budget']['predicted']={predicted!r} must be [params, MACs]")
        return k
