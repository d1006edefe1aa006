"""Pure kernels of H2SPG, DHSPG and HESSO (spec §5.2–§5.6): scores, importance, the λ rule, half-space
projection, selection (hierarchy check or node-group caps), deadline factors.

Every function here is side-effect free and batched over groups: it takes per-group reductions
(``⟨x_g, d_g⟩``, ``‖x_g‖²``, ``‖d_g‖²``) as 1-D tensors and returns per-group results, so the optimizer computes
them once per step for all groups with a handful of tensor ops. The per-group reference
`reference_redundant_step` restates the hybrid step on one flat group vector exactly as the spec writes it;
tests check the vectorised optimizer against it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Selection",
    "dhspg_scores",
    "dhspg_scores_scalar",
    "forcing_factor",
    "forcing_window",
    "greedy_select",
    "half_space_mask",
    "hesso_importance",
    "half_space_project",
    "lambda_rule",
    "lambda_rule_scalar",
    "reference_redundant_step",
    "segment_sum",
    "target_count",
]

# spec §5.2: r_g = 1/(a_g + 1e-6)
_MAGNITUDE_FLOOR = 1e-6


def segment_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sums per-slice values into per-group totals (a group's reductions sum over its slices)."""
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def dhspg_scores(
    xd: Tensor, x_sq: Tensor, d_sq: Tensor, numel: Tensor, *, weights: tuple[float, float] = (0.5, 0.5)
) -> Tensor:
    """DHSPG redundancy scores of one step, over all candidate groups at once (spec §5.2).

    ``c_g = ⟨x_g,d_g⟩/(‖x_g‖‖d_g‖)`` (0 if a norm is 0), ``r_g = 1/(‖x_g‖/n_g + 1e-6)``; both vectors are
    divided by their L2 norm over the candidates and mixed as ``w_c ĉ + w_r r̂``. Larger means more redundant.

    Args:
        xd: ``⟨x_g, d_g⟩`` per group.
        x_sq: ``‖x_g‖²`` per group.
        d_sq: ``‖d_g‖²`` per group.
        numel: ``n_g``, the number of scalars per group.
        weights: ``(w_c, w_r)``, the weights of the cosine and inverse-magnitude terms.

    Returns:
        The per-step score ``s_{t,g}`` of every group.
    """
    x_norm = x_sq.sqrt()
    denom = (x_sq * d_sq).sqrt()
    cosine = torch.where(denom > 0, xd / denom, 0.0)
    inverse_magnitude = 1.0 / (x_norm / numel + _MAGNITUDE_FLOOR)
    return weights[0] * _unit(cosine) + weights[1] * _unit(inverse_magnitude)


def _unit(v: Tensor) -> Tensor:
    peak = v.abs().max()
    v = v / torch.where(peak > 0, peak, 1.0)  # rescaled first: tiny entries must not underflow when squared
    norm = torch.linalg.vector_norm(v)
    return v / torch.where(norm > 0, norm, 1.0)  # a zero vector stays zero


def lambda_rule(xd: Tensor, x_norm: Tensor, d_norm: Tensor, *, lam: float, eta: float, kappa: float) -> Tensor:
    """Per-group regularisation coefficient ``λ_g`` of DHSPG (spec §5.4), batched.

    If ``⟨x,d⟩ ≥ 0`` the plain step already shrinks the group and ``λ_g = λ`` (also for a zero group). Otherwise
    ``lb = −⟨x,d⟩/‖x‖`` (need ``λ_g > lb`` to shrink ``‖x‖``) and ``ub = −‖d‖²‖x‖/⟨x,d⟩`` (need ``λ_g < ub``
    to keep a descent direction of f); ``λ_g = clip(η·lb, λ, κλ)``, replaced by ``(lb+ub)/2`` when it reaches ub.

    Args:
        xd: ``⟨x_g, d_g⟩`` per group.
        x_norm: ``‖x_g‖`` per group (non-zero where ``xd < 0``).
        d_norm: ``‖d_g‖`` per group.
        lam: the base coefficient λ.
        eta: the amplifier η.
        kappa: the cap factor κ (``λ_g ≤ κλ`` before the ub fallback).

    Returns:
        ``λ_g`` for every group.
    """
    negative = (xd < 0) & (x_norm > 0)
    # Where ⟨x,d⟩ ≥ 0 the bounds below may be inf/nan; `torch.where` discards them.
    lb = -xd / x_norm
    ub = d_norm * d_norm * x_norm / -xd
    clipped = (eta * lb).clamp(min=lam, max=kappa * lam)
    adapted = torch.where(clipped >= ub, (lb + ub) / 2, clipped)
    return torch.where(negative, adapted, lam)


def lambda_rule_scalar(xd: float, x_norm: float, d_norm: float, *, lam: float, eta: float, kappa: float) -> float:
    """`lambda_rule` for one group on Python floats: the per-group reference of the batched kernel."""
    if xd >= 0 or x_norm == 0:
        return lam
    lb = -xd / x_norm
    ub = d_norm * d_norm * x_norm / -xd
    clipped = min(max(eta * lb, lam), kappa * lam)
    return (lb + ub) / 2 if clipped >= ub else clipped


def dhspg_scores_scalar(
    xd: Sequence[float], x_sq: Sequence[float], d_sq: Sequence[float], numel: Sequence[float],
    *, weights: tuple[float, float] = (0.5, 0.5),
) -> list[float]:
    """`dhspg_scores` on Python floats, group by group: the per-group reference of the batched kernel."""
    cosine = [v / math.sqrt(a * b) if a * b > 0 else 0.0 for v, a, b in zip(xd, x_sq, d_sq, strict=True)]
    inverse = [1.0 / (math.sqrt(a) / n + _MAGNITUDE_FLOOR) for a, n in zip(x_sq, numel, strict=True)]
    c_norm, r_norm = math.hypot(*cosine), math.hypot(*inverse)  # no underflow of tiny squares
    return [weights[0] * (c / c_norm if c_norm > 0 else 0.0) + weights[1] * (r / r_norm if r_norm > 0 else 0.0)
            for c, r in zip(cosine, inverse, strict=True)]


def hesso_importance(xd: Tensor, x_sq: Tensor, d_sq: Tensor, numel: Tensor,
                     weights: Sequence[float] = (0.2, 0.2, 0.2, 0.2, 0.2)) -> Tensor:
    """HESSO importance of the candidate groups (spec §5.2, code M ``importance_score``): larger = more important.

    Proxies ``‖x‖``, ``‖x‖/(n+1e-6)``, ``cos(x,d)+1``, ``|⟨x,d⟩|``, ``½⟨x,d⟩²``, each divided by
    ``sqrt(Σ_g proxy² + 1e-8) + 1e-8`` over the candidates, mixed with ``weights``.
    """
    x_norm, d_norm = x_sq.sqrt(), d_sq.sqrt()
    proxies = (x_norm, x_norm / (numel + 1e-6), xd / ((x_norm + 1e-8) * (d_norm + 1e-8)) + 1, xd.abs(),
               0.5 * xd * xd)
    out = torch.zeros_like(xd)
    for w, p in zip(weights, proxies, strict=True):
        if w:
            out += w * p / ((p * p).sum() + 1e-8).sqrt().add(1e-8)
    return out


def half_space_mask(trial_dot_x: Tensor, x_sq: Tensor, epsilon: float) -> Tensor:
    """Which groups the half-space projection sets to zero (spec §5.3): ``⟨x̃_g, x_g⟩ < ε‖x_g‖²``.

    Zero groups are never selected (``0 < 0`` is false).
    """
    return trial_dot_x < epsilon * x_sq


def half_space_project(trial: Tensor, x: Tensor, epsilon: float) -> Tensor:
    """Reference half-space projection of one flat group vector: ``0`` if ``⟨x̃,x⟩ < ε‖x‖²``, else ``x̃``."""
    if torch.dot(trial, x) < epsilon * torch.dot(x, x):
        return torch.zeros_like(trial)
    return trial


def reference_redundant_step(
    x: Tensor,
    d: Tensor,
    *,
    lr: float,
    lam: float,
    eta: float,
    kappa: float,
    epsilon: float,
    decoupled_decay: float = 0.0,
) -> Tensor:
    """One hybrid-phase step of a redundant group, written out for a single flat vector (spec §5.5).

    ``x̃ = x − α(d + λ_g x/‖x‖)`` (AdamW: also ``− α·wd·x``), then the half-space projection. This is the
    readable per-group path; the optimizer computes the same thing for all groups with batched reductions.
    """
    x_norm = torch.linalg.vector_norm(x)
    if x_norm == 0:
        return torch.zeros_like(x)
    xd = torch.dot(x, d)
    lam_g = float(
        lambda_rule(xd.reshape(1), x_norm.reshape(1), torch.linalg.vector_norm(d).reshape(1),
                    lam=lam, eta=eta, kappa=kappa)[0]
    )
    trial = x - lr * decoupled_decay * x - lr * (d + lam_g * x / x_norm)
    return half_space_project(trial, x, epsilon)


@dataclass(frozen=True)
class Selection:
    """Outcome of the hierarchical search: accepted GeZIG indices in acceptance order, and the rejected ones."""

    selected: tuple[int, ...]
    rejected: tuple[int, ...]


def greedy_select(
    scores: Sequence[float], macs: Sequence[int], k: int | None,
    is_valid: Callable[[frozenset[int]], bool] | None,
    *, given: Sequence[int] = (), eligible: Sequence[int] | None = None, node_of: Sequence[int] | None = None,
) -> Selection:
    """Greedy hierarchical search of the redundant set (spec §5.5, worked example §3.4).

    Walks the groups by descending score (ties: fewer MACs first, then index) and accepts a group when the set
    with it is still valid, until ``k`` groups are accepted (``k=None``: no limit, the whole admission walk that
    budget targets cut to their shortest fitting prefix, `otov3.optim._budget`).

    Args:
        scores: redundancy score per GeZIG (larger = more redundant).
        macs: multiply-accumulates per GeZIG (tie-break).
        k: how many groups to accept; None: every admissible group.
        is_valid: validity of removing the GeZIGs with these indices (spec §3.3); None: every set is valid
            (pruning mode), the top ``k`` are taken at once.
        given: groups removed already (HESSO's earlier periods): each check is on ``given ∪ accepted ∪ {g}``.
        eligible: the groups to walk (default: all).
        node_of: pruning mode (``is_valid`` None): the node group of each group (-1: none); a group is refused
            when accepting it would remove every channel group of its node group (spec §4: keep one).

    Returns:
        The accepted and the rejected indices (groups never examined are in neither).
    """
    pool = range(len(scores)) if eligible is None else eligible
    order = sorted(pool, key=lambda i: (-float(scores[i]), macs[i], i))
    if is_valid is None and node_of is None:
        return Selection(tuple(order[:k]), ())
    if is_valid is None:
        size = Counter(n for n in node_of if n >= 0)
        used = Counter(node_of[g] for g in given if node_of[g] >= 0)
        chosen, refused = [], []
        for i in order:
            if k is not None and len(chosen) == k:
                break
            n = node_of[i]
            if n >= 0 and used[n] + 1 >= size[n]:
                refused.append(i)
                continue
            used[n] += 1
            chosen.append(i)
        return Selection(tuple(chosen), tuple(refused))
    selected: list[int] = []
    rejected: list[int] = []
    for i in order:
        if k is not None and len(selected) == k:
            break
        if is_valid(frozenset([*given, *selected, i])):
            selected.append(i)
        else:
            rejected.append(i)
    return Selection(tuple(selected), tuple(rejected))


def target_count(target: int | float, n_groups: int) -> int:
    """K from a count or a fraction of the GeZIGs: ``K = int(N·min(ρ, 0.999))`` for a float ρ (spec §5.5).

    Raises:
        ValueError: naming ``target_group_sparsity`` and its value when K would be < 1 or > N.
    """
    if isinstance(target, bool) or not isinstance(target, int | float):
        raise ValueError(f"target_group_sparsity must be an int count or a float fraction, got {target!r}")
    if isinstance(target, float):
        if not 0.0 < target < 1.0:
            raise ValueError(f"target_group_sparsity={target!r}: a fraction must lie in (0, 1)")
        k = int(n_groups * min(target, 0.999))
        if k < 1:
            raise ValueError(
                f"target_group_sparsity={target!r} gives K=0 of {n_groups} GeZIGs; raise the fraction or pass a count"
            )
        return k
    if not 1 <= target <= n_groups:
        raise ValueError(f"target_group_sparsity={target!r}: K must lie in [1, {n_groups}] (the number of GeZIGs)")
    return target


def forcing_factor(step: int, deadline: int, window: int) -> float:
    """Shrink factor of a still non-zero redundant group at ``step`` under the deadline schedule.

    Inside the last ``window`` steps before ``deadline`` (``R = deadline − step + 1`` steps left, this one
    included) a group is multiplied by ``(R−1)/R``; over the window the factors multiply to ``(R−1)/window``, a
    linear ramp that is exactly 0 at ``step == deadline`` (HESSO's schedule, spec §5.6). Outside: 1.
    """
    remaining = deadline - step + 1
    if remaining < 1 or remaining > window:
        return 1.0
    return (remaining - 1) / remaining


def forcing_window(hybrid_steps: int, fraction: float) -> int:
    """Length of the forcing window: ``ceil(fraction·hybrid_steps)``, at least 1 step."""
    return max(1, math.ceil(fraction * hybrid_steps))
