"""Base direction ``d`` of spec §5.1 for one parameter group, with foreach ops and no per-step gradient copies.

Each function updates the group's buffers in place, returns the direction of every parameter whose direction
the caller asked for (``wanted``), and a closure that performs the plain step ``x ← x − α d`` for the whole
group. Splitting "direction" from "step" lets H2SPG look at ``⟨x,d⟩`` of GeZIG slices before any parameter moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# The per-parameter buffers a zero group must keep at zero (spec §5.7).
BUFFER_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


@dataclass
class Directions:
    """Directions of one parameter group.

    Attributes:
        wanted: for each parameter, a tensor ``u`` with ``d = scale·u`` when the caller asked for it, else None.
        scale: the factor ``scale`` per parameter (Adam's ``1/(1−β1^t)``; 1 otherwise).
        apply: performs the plain step of every parameter of the group.
    """

    wanted: list[Tensor | None]
    scale: list[float]
    apply: Callable[[], None]


def sgd_directions(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict[str, Any]],
    wanted: Sequence[bool],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
) -> Directions:
    """SGD with heavy-ball momentum and coupled weight decay (spec §5.1), torch.optim.SGD's semantics.

    ``g' = ∇f + wd·x``; with momentum ``b ← g'`` on first use, else ``b ← μb + (1−τ)g'``, and ``d = b``.
    The decay term is added straight into the buffer (``b ← μb + (1−τ)∇f + (1−τ)wd·x``), so no copy of the
    gradients is made; torch.optim.SGD allocates ``g'`` every step instead.
    """
    params, grads = list(params), list(grads)
    if momentum != 0:
        fresh = [i for i, s in enumerate(states) if "momentum_buffer" not in s]
        old = [i for i, s in enumerate(states) if "momentum_buffer" in s]
        if old:
            bufs = [states[i]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, [grads[i] for i in old], alpha=1 - dampening)
            if weight_decay != 0:
                torch._foreach_add_(bufs, [params[i] for i in old], alpha=weight_decay * (1 - dampening))
        for i in fresh:
            buf = grads[i].detach().clone()
            if weight_decay != 0:
                buf.add_(params[i], alpha=weight_decay)
            states[i]["momentum_buffer"] = buf
        directions = [s["momentum_buffer"] for s in states]
    elif weight_decay != 0:
        directions = torch._foreach_add(grads, params, alpha=weight_decay)
    else:
        directions = grads

    def apply() -> None:
        if params:
            torch._foreach_add_(params, directions, alpha=-lr)

    return Directions(
        wanted=[d if w else None for d, w in zip(directions, wanted, strict=True)],
        scale=[1.0] * len(params),
        apply=apply,
    )


def adam_directions(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict[str, Any]],
    wanted: Sequence[bool],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    official_init: bool,
) -> Directions:
    """Adam / AdamW (spec §5.1): ``d = (m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps)``.

    Textbook Adam by default (moments start at 0, as torch.optim.Adam). ``official_init`` replicates the
    official code, whose moments start at ``g'`` and ``g'²`` (early steps larger). ``decoupled`` is AdamW: the
    decay ``x ← x − α·wd·x`` is applied in the step instead of entering ``g'``. ``d`` is only materialised for
    the parameters in ``wanted``; the others take torch.optim.Adam's fused ``addcdiv`` step.
    """
    params, grads = list(params), list(grads)
    beta1, beta2 = betas
    if weight_decay != 0 and not decoupled:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    fresh = [i for i, s in enumerate(states) if "exp_avg" not in s]
    for i in fresh:
        states[i]["step"] = 0
        if official_init:
            states[i]["exp_avg"] = grads[i].detach().clone()
            states[i]["exp_avg_sq"] = grads[i].detach() * grads[i].detach()
        else:
            states[i]["exp_avg"] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
            states[i]["exp_avg_sq"] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    skip = set(fresh) if official_init else set()
    moving = [i for i in range(len(params)) if i not in skip]
    if moving:
        m = [states[i]["exp_avg"] for i in moving]
        v = [states[i]["exp_avg_sq"] for i in moving]
        g = [grads[i] for i in moving]
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
    for s in states:
        s["step"] += 1
    exp_avgs = [s["exp_avg"] for s in states]
    bias1 = [1 - beta1 ** s["step"] for s in states]
    bias2_sqrt = [math.sqrt(1 - beta2 ** s["step"]) for s in states]
    denom = torch._foreach_sqrt([s["exp_avg_sq"] for s in states]) if states else []
    if states:
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)
    out: list[Tensor | None] = [None] * len(params)
    want_ids = [i for i, w in enumerate(wanted) if w]
    if want_ids:
        ratios = torch._foreach_div([exp_avgs[i] for i in want_ids], [denom[i] for i in want_ids])
        for i, r in zip(want_ids, ratios, strict=True):
            out[i] = r

    def apply() -> None:
        if not params:
            return
        if decoupled and weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / b for b in bias1])

    return Directions(wanted=out, scale=[1 / b for b in bias1], apply=apply)
