"""Budget targets in both modes: after the K GeZIGs, channel groups are admitted until the sub-network fits.

Mixed into `otov3.optim.joint.JointH2SPG` (uses its ``_gezig_groups``, ``_channel_groups``, atom maps,
``_is_gezig_valid``, ``_budget``, ``_size_of``); the all-or-nothing selecting step, the state-dict record and
the checks come from `_budget.BudgetMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.optim import _budget, kernels
from otov3.optim._budget import BudgetMixin


class JointBudget(BudgetMixin):
    """The both-modes half of the budget logic: eligibility, reachability, the fitting channel prefix."""

    def _eligible(self, removed_gezigs: Sequence[int]) -> tuple[list[int], list[int], Tensor]:
        """Channel groups with scalars outside the removed GeZIGs, each one's node group (-1: not eligible), and
        the ``(A,)`` mask of the atoms outside them."""
        removed = torch.zeros(len(self._gezig_groups) + 1, dtype=torch.bool)
        removed[list(removed_gezigs)] = True
        outside = ~removed[self._atom_gezig] | ~self._gezig_atoms
        nc = len(self._channel_groups)
        count = torch.zeros(nc + 1, dtype=torch.long).index_add_(
            0, torch.where(self._atom_channel < 0, nc, self._atom_channel), outside.long())[:-1]
        eligible = (count > 0).nonzero().flatten().tolist()
        node_of = [-1] * nc
        for h in eligible:
            node_of[h] = self._channel_groups[h].node_group
        return eligible, node_of, outside

    def _check_reachable(self, k: int) -> None:
        """ValueError when even the K largest admissible GeZIGs and every admissible channel group of the rest
        leave a sub-network above the budget (it says that smallest size)."""
        budget, ng = self._budget, len(self._gezig_groups)
        weight = [g.numel() if budget.kind == "params" else g.macs for g in self._gezig_groups]
        gezigs = kernels.greedy_select([float(w) for w in weight], [g.macs for g in self._gezig_groups], k,
                                       self._is_gezig_valid).selected if ng else ()
        eligible, node_of, _ = self._eligible(gezigs)
        sizes = [float(g.numel() if budget.kind == "params" else g.macs) for g in self._channel_groups]
        channels = kernels.greedy_select(sizes, [g.macs for g in self._channel_groups], None, None,
                                         eligible=eligible, node_of=node_of).selected if eligible else ()
        least = self._size_of(frozenset(gezigs) | {ng + h for h in channels})
        if not budget.fits(least):
            value = budget.measure(least)
            raise ValueError(
                f"{self.NAME}: {budget.asked()} cannot be reached: removing {k} GeZIG(s) and slimming every "
                f"admissible channel group of the rest leaves at least {budget.show(value)}. Pass {budget.argument} "
                f">= {value / budget.reference:.4g} (or >= {value}), or a larger target_group_sparsity.")

    def _fit_channels(self, run: dict[str, Any]) -> None:
        """Budget: cuts the channel walk to its shortest prefix whose predicted sub-network fits (all or nothing:
        `BudgetMixin.step` undoes the step when even the whole walk does not fit)."""
        budget, ng = self._budget, len(self._gezig_groups)
        before = frozenset(run["redundant"])
        walk = run["channel_targets"]
        size = lambda prefix: self._size_of(before | {ng + h for h in prefix})  # noqa: E731
        k = _budget.shortest_fitting_prefix(walk, lambda prefix: budget.fits(size(sorted(prefix))))
        if k is None:
            reached = budget.measure(size(walk))
            raise _budget._Unreachable(
                f"{self.NAME}: {budget.asked()} cannot be reached after removing the GeZIGs "
                f"{[self._virtual[i].name for i in sorted(before)]} at step {run['step'] + 1}: slimming every "
                f"admissible channel group of the rest leaves {budget.show(reached)}. Nothing moved in this step. To "
                f"fix: create the optimizer with a larger target_group_sparsity or {budget.argument} >= "
                f"{reached / budget.reference:.4g}.")
        run["channel_targets"] = walk[:k]
        run["budget"]["predicted"] = list(size(walk[:k]))
        run["budget"]["k"] = len(before) + k

    def _budget_selects(self, run: dict[str, Any], n: int) -> bool:
        return run["redundant"] is None and n >= self.defaults["warmup_steps"]
