"""H2SPG over both modes at once: remove K whole operations and slim the surviving ones, in one training run.

The groups are GeZIGs (erasing mode) and channel groups (pruning mode). They overlap (channel ``j`` of a conv in a
removable branch belongs to both), so the engine works on their disjoint *atoms* (`otov3.both_space`) and this
policy adds atoms up into whichever family it reasons about:

    warm-up:          H2SPG's EMA redundancy scores over the GeZIGs (spec §5.5)
    end of warm-up:   G_r = H2SPG's greedy valid walk, K GeZIGs;
                      effective channel groups = their atoms outside G_r (a channel inside a removed operation
                      does not count); one-step DHSPG scores over them (spec §5.4), the top ρ of them, keeping at
                      least one channel of every node group: the channel targets C_r (with a budget,
                      ``target_params`` / ``target_macs``: the shortest prefix of that walk whose predicted
                      sub-network, without G_r and the prefix, fits; `otov3.optim._budget`)
    hybrid:           each target g ∈ G_r ∪ C_r (disjoint in atoms) takes the λ step and half-space test of
                      spec §5.3–§5.5 over its atoms; all of them are exactly zero by the deadline
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.optim import _budget, _checks, kernels
from otov3.optim._budget import SizeOf
from otov3.optim._checks import check_number
from otov3.optim._engine import Decision, preset
from otov3.optim._halfspace import HalfSpaceOptimizer
from otov3.optim._joint_budget import JointBudget
from otov3.space import Group

__all__ = ["JointH2SPG"]

RUN_KEY = "joint"


class JointH2SPG(JointBudget, HalfSpaceOptimizer):
    """H2SPG with a second target: ``target_channel_sparsity`` ρ of the channel groups of the operations that stay.

    Args:
        params: every trainable parameter of the model.
        gezigs, channels: the two families of groups (`BothSpace.gezigs`, `BothSpace.channels`).
        atoms, atom_gezig, atom_channel: their disjoint pieces and each piece's GeZIG / channel group (-1: none).
        is_valid: validity of removing the GeZIGs with these indices (spec §3.3).
        target_group_sparsity: K GeZIGs (a count, or a fraction of the GeZIGs).
        target_channel_sparsity: ρ in [0, 1): the fraction of the effective channel groups to zero.
        target_params, target_macs: instead of ρ, a budget for the sub-network (a fraction of the super-network in
            (0, 1) or an absolute count): after the K GeZIGs, channel groups are admitted until it fits.
        size_of: with a budget, ``(params, MACs)`` of the sub-network without the groups of these indices
            (GeZIGs first, then ``len(gezigs) + channel index``); reference_size: the super-network's.
        Every other option is H2SPG's (`otov3.optim.H2SPG`).

    Raises:
        ValueError: a hyper-parameter is out of range (the message names it).
    """

    RUN_KEY = RUN_KEY
    NAME = "H2SPG"
    NOUN = "group"
    RUN_FIELDS = ("step", "scores", "redundant", "rejected", "channel_targets", "zero", "vzero", "forced",
                  "groups")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        gezigs: Sequence[Group],
        channels: Sequence[Group],
        atoms: Sequence[Group],
        atom_gezig: Tensor,
        atom_channel: Tensor,
        is_valid: Callable[[frozenset[int]], bool],
        *,
        target_group_sparsity: int | float,
        target_channel_sparsity: float | None = None,
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
        if not gezigs and not channels:
            raise ValueError("no GeZIG and no channel group: nothing to remove")
        budget = None if target_params is None and target_macs is None else _budget.resolve_budget(
            target_group_sparsity=None, target_params=target_params, target_macs=target_macs, size_of=size_of,
            reference_size=reference_size)
        if budget is not None and target_channel_sparsity is not None:
            raise ValueError(f"pass either target_channel_sparsity={target_channel_sparsity!r} or {budget.argument}, "
                             "not both: the budget decides how many channel groups are removed")
        if budget is None:
            if target_channel_sparsity is None:
                raise ValueError("both modes need target_channel_sparsity (the fraction of the remaining channel "
                                 "groups to remove) or a budget (target_params / target_macs)")
            check_number("target_channel_sparsity", target_channel_sparsity, 0.0, 1.0, high_open=True)
        k = kernels.target_count(target_group_sparsity, len(gezigs)) if gezigs else 0
        self._gezig_groups, self._channel_groups = tuple(gezigs), tuple(channels)
        self._virtual = self._gezig_groups + self._channel_groups
        self._atom_gezig, self._atom_channel = atom_gezig.long(), atom_channel.long()
        self._is_gezig_valid = is_valid
        self._is_valid = None
        self._budget, self._size_of = budget, size_of
        extra = {} if budget is None else {"budget": {"target": budget.kind, "limit": budget.limit, "k": None,
                                                      "predicted": None}}
        self._setup(
            params, atoms, **base, official_adam_init=official_adam_init, param_names=param_names,
            defaults={"target_group_sparsity": target_group_sparsity, "k_gezigs": k,
                      "target_channel_sparsity": target_channel_sparsity,
                      "k": k + int(len(channels) * (target_channel_sparsity or 0.0)), "warmup_steps": warmup_steps,
                      "hybrid_steps": hybrid_steps, "epsilon": epsilon, "score_momentum": score_momentum,
                      "lam": lam, "eta": eta, "kappa": kappa, "deadline_window": deadline_window,
                      "score_weights": tuple(score_weights)},
            run={"step": 0, "scores": torch.zeros(len(gezigs), dtype=torch.float64), "redundant": None,
                 "rejected": [], "channel_targets": [], "zero": [], "vzero": [], "forced": [],
                 "groups": [g.name for g in atoms], **extra},
        )
        self._node_of = None  # the keep-one rule is applied to effective channel groups, not to atoms
        self._gezig_atoms = self._atom_gezig >= 0
        if budget is not None:
            self._check_reachable(k)

    # ----------------------------------------------------------------------------------------- introspection
    @property
    def redundant_groups(self) -> list[Group]:
        """The GeZIGs to remove, then the channel groups to slim (empty before the end of warm-up)."""
        run = self.state[RUN_KEY]
        ng = len(self._gezig_groups)
        return [self._virtual[i] for i in run["redundant"] or []] + \
            [self._virtual[ng + h] for h in run["channel_targets"]]

    @property
    def zero_groups(self) -> list[Group]:
        """GeZIGs and channel groups the optimizer has set to exact zero, in the order they got there."""
        return [self._virtual[i] for i in self.state[RUN_KEY]["vzero"]]

    @property
    def redundancy_scores(self) -> Tensor:
        """A copy of the GeZIGs' averaged scores (larger = more redundant)."""
        return self.state[RUN_KEY]["scores"].clone()

    @property
    def phase(self) -> str:
        """Phase of the next step: ``"warmup"``, ``"hybrid"`` or ``"plain"``."""
        run = self.state[RUN_KEY]
        nxt = run["step"] + 1
        if run["redundant"] is None:
            return "warmup" if nxt <= self.defaults["warmup_steps"] else "hybrid"
        return "hybrid" if self._pending(run) and not self._past_deadline(nxt) else "plain"

    def metrics(self) -> dict[str, float | int | str]:
        """Progress figures: step, phase, targets, zero GeZIGs and channel groups."""
        run = self.state[RUN_KEY]
        ng = len(self._gezig_groups)
        vzero = run["vzero"]
        return {"step": run["step"], "phase": self.phase, "target_k": self.defaults["k_gezigs"],
                "n_gezigs": ng, "n_channel_groups": len(self._channel_groups),
                "n_channel_targets": len(run["channel_targets"]),
                "n_zero_gezigs": sum(1 for v in vzero if v < ng), "n_zero_channels": sum(1 for v in vzero if v >= ng)}

    # ---------------------------------------------------------------------------------------------- policy
    def _targets(self, run: dict[str, Any]) -> list[int]:
        ng = len(self._gezig_groups)
        return list(run["redundant"] or []) + [ng + h for h in run["channel_targets"]]

    def _pending(self, run: dict[str, Any]) -> list[int]:
        zero = set(run["vzero"])
        return [v for v in self._targets(run) if v not in zero]

    def _owner(self, run: dict[str, Any]) -> Tensor:
        """Each atom's target (GeZIG index, or ``len(gezigs) + channel index``); ``V`` (sentinel) for none."""
        key = ("owner", self._loads, len(run["channel_targets"]), run["redundant"] is None)
        if key not in self._caches:
            v, ng = len(self._virtual), len(self._gezig_groups)
            owner = torch.full_like(self._atom_gezig, v)
            removed = torch.zeros(ng + 1, dtype=torch.bool)
            removed[run["redundant"] or []] = True
            targeted = torch.zeros(len(self._channel_groups) + 1, dtype=torch.bool)
            targeted[run["channel_targets"]] = True
            by_channel = targeted[self._atom_channel] & ~removed[self._atom_gezig]
            owner = torch.where(by_channel, ng + self._atom_channel, owner)
            owner = torch.where(removed[self._atom_gezig] & self._gezig_atoms, self._atom_gezig, owner)
            self._caches = {k: v_ for k, v_ in self._caches.items() if k[0] != "owner"}
            self._caches[key] = owner
        return self._caches[key]

    def _plan(self, run: dict[str, Any], n: int) -> tuple[Tensor | None, bool]:
        hybrid = n > self.defaults["warmup_steps"]
        if run["redundant"] is None:
            selecting = n >= self.defaults["warmup_steps"]  # channel scores need every atom
            return (torch.ones_like(self._gezig_atoms) if selecting else self._gezig_atoms.clone()), hybrid
        if not hybrid or self._past_deadline(n) or not self._pending(run):
            return None, False
        live = torch.zeros(len(self._virtual) + 1, dtype=torch.bool)
        live[self._pending(run)] = True
        return live[self._owner(run)], True

    def _sum(self, per_atom: Tensor, index: Tensor, size: int) -> Tensor:
        """Per-atom sums added up by ``index`` (values ``size`` and -1 are dropped)."""
        idx = torch.where(index < 0, size, index)
        return torch.zeros(size + 1, per_atom.shape[1], dtype=per_atom.dtype).index_add_(0, idx, per_atom)[:-1]

    def _decide(self, run: dict[str, Any], n: int, per_group: Tensor | None) -> Decision | None:
        if per_group is None:
            return None
        cfg = self.defaults
        if run["redundant"] is None:
            gz = self._sum(per_group, self._atom_gezig, len(self._gezig_groups))
            if len(self._gezig_groups):
                numel = self._sum(self._layout.group_numel[:, None], self._atom_gezig, len(self._gezig_groups))[:, 0]
                step = kernels.dhspg_scores(gz[:, 1], gz[:, 0], gz[:, 2], numel, weights=cfg["score_weights"])
                omega = cfg["score_momentum"]
                run["scores"] = omega * run["scores"] + (1 - omega) * step  # spec §5.5 EMA
            if n >= cfg["warmup_steps"]:
                self._select(run, per_group)
        if n <= cfg["warmup_steps"] or self._past_deadline(n):
            return None
        pending = self._pending(run)
        if not pending:
            return None
        owner = self._owner(run)
        v = len(self._virtual)
        per_virtual = self._sum(per_group, owner, v)
        targets = torch.zeros(v, dtype=torch.bool)
        targets[pending] = True
        decision = self._halfspace(run, n, per_virtual, targets)
        run["vzero"].extend(decision.zeroed)
        c = torch.cat((decision.c, torch.zeros(1, dtype=decision.c.dtype)))[owner]
        m = torch.cat((decision.m, torch.ones(1, dtype=decision.m.dtype)))[owner]
        hit = torch.zeros(v + 1, dtype=torch.bool)
        hit[decision.zeroed] = True
        return Decision(c=c, m=m, zeroed=hit[owner].nonzero().flatten().tolist())

    def _select(self, run: dict[str, Any], per_atom: Tensor) -> None:
        """End of warm-up: K GeZIGs by the greedy valid walk, then ρ of the effective channel groups."""
        cfg, ng, nc = self.defaults, len(self._gezig_groups), len(self._channel_groups)
        k = cfg["k_gezigs"]
        chosen = kernels.greedy_select(run["scores"].tolist(), [g.macs for g in self._gezig_groups], k,
                                       self._is_gezig_valid) if ng else kernels.Selection((), ())
        run["redundant"], run["rejected"] = list(chosen.selected), list(chosen.rejected)
        if len(chosen.selected) < k:
            warnings.warn(f"H2SPG: only {len(chosen.selected)} of K={k} GeZIGs can be removed while the network "
                          "stays valid; training continues with that redundant set", UserWarning, stacklevel=6)
        eligible, node_of, outside = self._eligible(run["redundant"])
        eff = self._sum(per_atom * outside[:, None], self._atom_channel, nc)
        numel = self._sum((self._layout.group_numel * outside)[:, None], self._atom_channel, nc)[:, 0]
        run["channel_targets"] = []
        if eligible:
            e = torch.tensor(eligible)
            scores = torch.full((nc,), -math.inf, dtype=torch.float64)
            scores[e] = kernels.dhspg_scores(eff[e, 1], eff[e, 0], eff[e, 2], numel[e], weights=cfg["score_weights"])
            k_c = None if self._budget is not None else int(len(eligible) * cfg["target_channel_sparsity"])
            picked = kernels.greedy_select(scores.tolist(), [g.macs for g in self._channel_groups], k_c, None,
                                           eligible=eligible, node_of=node_of)
            run["channel_targets"] = list(picked.selected)
        if self._budget is not None:
            self._fit_channels(run)
        cfg["k"] = len(run["redundant"]) + len(run["channel_targets"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict saved by this optimizer over the same groups (see `GroupOptimizer`)."""
        super().load_state_dict(state_dict)
        run = self.state[RUN_KEY]
        if run["redundant"] is not None:
            self.defaults["k"] = len(run["redundant"]) + len(run["channel_targets"])

    def _check_run(self, run: Any) -> None:
        where = _checks.check_run_common(run, self, self.RUN_FIELDS, "groups")
        self._check_budget(where, run)
        ng, nc, na = len(self._gezig_groups), len(self._channel_groups), len(self._groups)
        v, names = ng + nc, [g.name for g in self._virtual]
        _checks.check_scores(where, "scores", run["scores"], ng)
        redundant = None if run["redundant"] is None else _checks.index_list(where, "redundant", run["redundant"],
                                                                            max(ng, 1), "GeZIG")
        _checks.index_list(where, "rejected", run["rejected"], max(ng, 1), "GeZIG")
        targets = _checks.index_list(where, "channel_targets", run["channel_targets"], max(nc, 1), "channel group")
        zero = _checks.index_list(where, "zero", run["zero"], na, "atom")
        vzero = _checks.index_list(where, "vzero", run["vzero"], v, "group")
        _checks.index_list(where, "forced", run["forced"], v, "group")
        if redundant is not None and not self._is_gezig_valid(frozenset(redundant)):
            raise ValueError(f"{where}['redundant'] = {[names[i] for i in redundant]} is not a valid removal; the "
                             "state dict was edited or belongs to another model")
        chosen = set(redundant or []) | {ng + h for h in targets}
        _checks.check_subsets(where, names, [("vzero", vzero, chosen, "targets")])
        _checks.check_zero_weights(where, zero, self._groups, "atom")
