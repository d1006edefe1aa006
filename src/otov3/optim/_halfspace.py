"""The hybrid step shared by H2SPG and DHSPG (spec §5.3–§5.5): λ_g, the half-space test, the deadline window.

For the target groups ``T`` of a step, from the per-group sums of `GroupOptimizer._reduce`::

    λ_g = lambda_rule(⟨x,d⟩, ‖x‖, ‖d‖; λ, η, κ)                      # spec §5.4
    ⟨x̃_g, x_g⟩ = Σ (1 − α·wd) ‖x‖² − (λ_g/‖x_g‖) Σ α‖x‖² − Σ α⟨x,d⟩   # x̃ = (1−α·wd−αλ_g/‖x‖) x − α d
    project g  iff  ⟨x̃_g, x_g⟩ < ε‖x_g‖²  (or x_g = 0, or the deadline step)

The trial point is never materialised: the engine applies ``x ← m_g·((1 − α·wd − α c_g) x − α d)`` row-wise with
``c_g = λ_g/‖x_g‖``, ``m_g = 0`` for projected groups and the deadline-window shrink ``(R−1)/R`` (spec §5.6's
factor, `kernels.forcing_factor`) for the others.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from otov3.optim import _checks, _native, kernels
from otov3.optim._engine import Decision, GroupOptimizer, variant_default


class HalfSpaceOptimizer(GroupOptimizer):
    """`GroupOptimizer` with the λ step and half-space projection of spec §5.4–§5.5 (H2SPG, DHSPG)."""

    def _halfspace_settings(
        self, variant: str, *, epsilon: float, lam: float | None, eta: float | None, kappa: float | None,
        deadline_window: float, score_weights: tuple[float, float], warmup_steps: int, hybrid_steps: int | None,
    ) -> tuple[float, float, float, int, int | None]:
        """The options H2SPG and DHSPG share, checked: returns ``(lam, eta, kappa, warmup_steps, hybrid_steps)``
        with the variant's λ, η, κ defaults filled in and the step counts made whole."""
        lam, eta, kappa = (variant_default(variant, "lam", lam), variant_default(variant, "eta", eta),
                           variant_default(variant, "kappa", kappa))
        _checks.check_number("epsilon", epsilon, 0.0, 1.0, high_open=True)
        _checks.check_number("lam", lam, 0.0)
        _checks.check_number("eta", eta, 1.0)
        _checks.check_number("kappa", kappa, 1.0)
        _checks.check_number("deadline_window", deadline_window, 0.0, 1.0, low_open=True)
        warmup_steps = _checks.whole_steps("warmup_steps", warmup_steps, 0)
        hybrid_steps = _checks.whole_steps("hybrid_steps", hybrid_steps, 1, optional=True)
        _checks.require(len(score_weights) == 2 and all(_checks._real(w) and w >= 0 for w in score_weights),
                        "score_weights", score_weights, "must be two finite non-negative weights")
        return lam, eta, kappa, warmup_steps, hybrid_steps

    def _forcing(self, n: int) -> float:
        """The deadline-window shrink factor of step ``n`` (1 outside the window; 0 at the deadline)."""
        d = self.defaults["hybrid_steps"]
        if d is None:
            return 1.0
        window = kernels.forcing_window(d, self.defaults["deadline_window"])
        return kernels.forcing_factor(n, self.defaults["warmup_steps"] + d, window)

    def _in_window(self, n: int) -> bool:
        return self._forcing(n) < 1.0

    def _mask_of(self, name: str, indices: list[int]) -> Tensor:
        """Bool mask of a run list that only grows (cached per length and per load)."""
        key = ("mask", name, self._loads, len(indices))
        if key not in self._caches:
            self._caches = {k: v for k, v in self._caches.items() if k[:2] != ("mask", name)}
            self._caches[key] = self._mask(indices)
        return self._caches[key]

    def _halfspace(self, run: dict[str, Any], n: int, per_group: Tensor, targets: Tensor, *,
                   room: int | None = None, priority: Tensor | None = None) -> Decision:
        """λ step and projection of the ``targets`` (a ``(G,)`` mask); at most ``room`` projections per step,
        the highest ``priority`` first."""
        cfg = self.defaults
        post = self._forcing(n)
        options = {"lam": cfg["lam"], "eta": cfg["eta"], "kappa": cfg["kappa"], "epsilon": cfg["epsilon"],
                   "force": post == 0.0}
        if _native.available():  # one call instead of ~40 small tensor ops (the same operations in the same order)
            project, c, m, count = _native.halfspace(per_group, targets, post=post, **options)
            if room is None or count <= room:
                zeroed = project.nonzero().flatten().tolist() if count else []
                if post == 0.0:
                    run["forced"].extend(zeroed)
                return Decision(c=c, m=m, zeroed=zeroed)
        project, c = decide(per_group, targets, **options)
        if room is not None and int(project.sum()) > room:
            hit = project.nonzero().flatten()
            order = torch.argsort(-priority[hit], stable=True)
            project = torch.zeros_like(project)
            project[hit[order[:room]]] = True
        zeroed = project.nonzero().flatten().tolist()
        if post == 0.0:
            run["forced"].extend(zeroed)
        m = torch.where(project, 0.0, torch.where(targets, post, 1.0))
        return Decision(c=torch.where(project, 0.0, c), m=m, zeroed=zeroed)


def decide(per_group: Tensor, targets: Tensor, *, lam: float, eta: float, kappa: float, epsilon: float,
           force: bool) -> tuple[Tensor, Tensor]:
    """The batched λ rule and half-space test over all groups (pure; spec §5.3–§5.4).

    Args:
        per_group: ``(G, 6)`` float64 sums ``‖x‖², ⟨x,d⟩, ‖d‖², Σ(1−α·wd)‖x‖², Σα‖x‖², Σα⟨x,d⟩``.
        targets: ``(G,)`` bool, the groups under the λ step.
        force: project every target (the deadline step).

    Returns:
        ``(project, c)``: which targets the projection zeroes, and ``c_g = λ_g/‖x_g‖`` (0 off the targets).
    """
    x_sq, xd, d_sq, keep_sq, ax_sq, axd = per_group.unbind(1)
    x_norm = x_sq.sqrt()
    lam_g = kernels.lambda_rule(xd, x_norm, d_sq.sqrt(), lam=lam, eta=eta, kappa=kappa)
    live = targets & (x_norm > 0)
    c = torch.where(live, lam_g / torch.where(live, x_norm, 1.0), 0.0)
    trial = keep_sq - c * ax_sq - axd
    project = targets & (kernels.half_space_mask(trial, x_sq, epsilon) | (x_sq == 0) | force)
    return project, c
