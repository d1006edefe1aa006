"""The hybrid-phase decision for the redundant groups (spec §5.3–§5.5): λ_g, the half-space test, pre-scales.

Two paths compute the same thing. `decide_scalar` walks the groups on Python floats: with tens of groups it costs
a few microseconds, where each batched tensor op costs ~5 µs of dispatch. `decide_batched` runs ~30 tensor ops
whatever the number of groups, which wins from a few hundred slices on. Tests check that they agree.

Inputs are per active slice ``k`` (its group ``local[k]``, reductions ``(‖x_k‖², ⟨x_k,d_k⟩, ‖d_k‖²)``, lr
``α_k``, AdamW decay ``α_k·wd_k``) and per group (``is_target``). The trial point of a group is
``x̃ = (1 − α·wd − c) x − α d`` with ``c = α λ_g/‖x_g‖`` (never materialised): ``⟨x̃, x⟩`` follows from the
reductions, and scaling ``x`` by ``1 − c/(1 − α·wd)`` before the plain step (which applies the AdamW decay and
``−α d``) yields ``x̃`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from otov3.optim import kernels


@dataclass(frozen=True)
class Settings:
    lam: float
    eta: float
    kappa: float
    epsilon: float


@dataclass(frozen=True)
class Verdict:
    """Groups to project (positions in the active set) and pre-scale factors of the surviving target slices."""

    project: list[int]
    pre: list[tuple[int, float]]


def decide_scalar(
    local: Sequence[int],
    per_slice: Sequence[Sequence[float]],
    per_group: Sequence[Sequence[float]],
    alpha: Sequence[float],
    decay: Sequence[float],
    is_target: Sequence[bool],
    cfg: Settings,
    *,
    force: bool,
) -> Verdict:
    """Per-group reference path on Python floats; ``force`` projects every target (the deadline step)."""
    shrink = []  # λ_g/‖x_g‖ per group
    for x_sq, xd, d_sq in per_group:
        x_norm = math.sqrt(x_sq)
        lam_g = kernels.lambda_rule_scalar(xd, x_norm, math.sqrt(d_sq), lam=cfg.lam, eta=cfg.eta, kappa=cfg.kappa)
        shrink.append(lam_g / x_norm if x_norm > 0 else 0.0)
    trial = [0.0] * len(per_group)
    for k, (x_sq, xd, _) in enumerate(per_slice):
        g = local[k]
        trial[g] += (1 - decay[k] - alpha[k] * shrink[g]) * x_sq - alpha[k] * xd
    project = [g for g, (x_sq, _, _) in enumerate(per_group)
               if is_target[g] and (force or x_sq == 0 or trial[g] < cfg.epsilon * x_sq)]
    gone = set(project)
    pre = [(k, 1 - alpha[k] * shrink[local[k]] / (1 - decay[k])) for k in range(len(per_slice))
           if is_target[local[k]] and local[k] not in gone]
    return Verdict(project, pre)


def decide_batched(
    local: Tensor,
    per_slice: Tensor,
    per_group: Tensor,
    alpha: Tensor,
    decay: Tensor,
    is_target: Tensor,
    cfg: Settings,
    *,
    force: bool,
) -> Verdict:
    """The same decision with batched tensor ops (``per_slice``/``per_group``: float64 ``(n, 3)``)."""
    x_sq, xd, d_sq = per_group.unbind(1)
    x_norm = x_sq.sqrt()
    lam_g = kernels.lambda_rule(xd, x_norm, d_sq.sqrt(), lam=cfg.lam, eta=cfg.eta, kappa=cfg.kappa)
    c = alpha * (lam_g / torch.where(x_norm > 0, x_norm, 1.0))[local]
    trial = kernels.segment_sum((1 - decay - c) * per_slice[:, 0] - alpha * per_slice[:, 1], local, len(per_group))
    project = kernels.half_space_mask(trial, x_sq, cfg.epsilon) | (x_sq == 0) | force
    project &= is_target
    keep = (is_target & ~project)[local].nonzero().flatten()
    factors = (1 - c / (1 - decay))[keep]
    return Verdict(project.nonzero().flatten().tolist(), list(zip(keep.tolist(), factors.tolist(), strict=True)))
