"""H2SPG: Hierarchical Half-Space Projected Gradient (spec §5.5) as a `torch.optim.Optimizer`."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from otov3.errors import OptimizerError
from otov3.optim import kernels
from otov3.optim._layout import GroupLayout
from otov3.optim._step import RUN_KEY, StepEngine
from otov3.space import Group

__all__ = ["H2SPG"]


# spec §5.1 and §5.4, code `hyperparameter.py`: per-variant defaults of lr, weight decay, λ, η, κ.
_VARIANT_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 1e-3, "weight_decay": 0.0, "lam": 1e-3, "eta": 2.0, "kappa": 10.0},
    "adam": {"lr": 1e-3, "weight_decay": 0.0, "lam": 1e-2, "eta": 20.0, "kappa": 1e3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2, "lam": 1e-2, "eta": 20.0, "kappa": 1e3},
}


class H2SPG(StepEngine, Optimizer):
    r"""Trains a super-network once and drives exactly K GeZIGs to exact zero while the graph stays valid.

    The algorithm (spec §5.5, paper Algorithm 3), step ``t = 1, 2, …``::

        d_t = base_direction(x_t)                                    # §5.1: SGD / Adam / AdamW
        warm-up (t ≤ T_w):  x ← x − α_t d_t                          # every parameter
                            s ← ω s + (1−ω) s_t(G_GeZIG, x_t, d_t)    # §5.2 DHSPG score, EMA
        end of warm-up:     G_r = greedy walk of the GeZIGs by descending s (ties: fewer MACs),
                                  g admitted iff is_valid(G_r ∪ {g}), until |G_r| = K
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
    ``K``             ``target_group_sparsity``   required; int K, or float ρ: K = int(N·min(ρ, 0.999))
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

    Implementation (`otov3.optim._step`): large parameters take one cache-blocked pass per step that updates
    the optimizer buffers, computes the GeZIG reductions ``‖x‖², ⟨x,d⟩, ‖d‖²`` and (unless the λ decision must
    come first) the parameter; the rest uses foreach ops like torch.optim. The trial point ``x̃`` is never
    materialised (``⟨x̃,x⟩`` follows from the reductions). Parameters made entirely of zero groups are skipped
    from then on. A non-finite value met in those reductions raises `OptimizerError` naming the parameter.

    Args:
        params: every trainable parameter of the model, or param-group dicts.
        gezigs: the removable groups; their members are whole parameters or dim-0 slices of them.
        is_valid: whether removing the GeZIGs with these indices keeps the network valid (spec §3.3).
        target_group_sparsity: K, or the fraction ρ of the GeZIGs to remove.
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

    Raises:
        ValueError: a hyper-parameter is out of range (the message names it and its value), or the GeZIGs hold a
            parameter that is not in ``params``.

    Example:
        >>> opt = H2SPG(model.parameters(), gezigs, is_valid, target_group_sparsity=3,
        ...             warmup_steps=500, hybrid_steps=2000, lr=0.1, momentum=0.9)  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        gezigs: Sequence[Group],
        is_valid: Callable[[frozenset[int]], bool],
        *,
        target_group_sparsity: int | float,
        warmup_steps: int,
        hybrid_steps: int | None = None,
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
    ) -> None:
        if variant not in _VARIANT_DEFAULTS:
            raise ValueError(f"variant={variant!r} is unknown; choose one of {sorted(_VARIANT_DEFAULTS)}")
        preset = _VARIANT_DEFAULTS[variant]
        lr = preset["lr"] if lr is None else lr
        weight_decay = preset["weight_decay"] if weight_decay is None else weight_decay
        lam = preset["lam"] if lam is None else lam
        eta = preset["eta"] if eta is None else eta
        kappa = preset["kappa"] if kappa is None else kappa
        _check_group_options(lr, momentum, dampening, weight_decay, betas, adam_eps, where="")
        _require(0.0 <= epsilon < 1.0, "epsilon", epsilon, "must lie in [0, 1)")
        _require(0.0 <= score_momentum <= 1.0, "score_momentum", score_momentum, "must lie in [0, 1]")
        _require(lam >= 0.0, "lam", lam, "must be >= 0")
        _require(eta >= 1.0, "eta", eta, "must be >= 1")
        _require(kappa >= 1.0, "kappa", kappa, "must be >= 1")
        _require(0.0 < deadline_window <= 1.0, "deadline_window", deadline_window, "must lie in (0, 1]")
        _require(isinstance(warmup_steps, int) and warmup_steps >= 0, "warmup_steps", warmup_steps, "must be >= 0")
        _require(
            hybrid_steps is None or (isinstance(hybrid_steps, int) and hybrid_steps >= 1),
            "hybrid_steps", hybrid_steps, "must be None or an int >= 1",
        )
        _require(len(score_weights) == 2 and min(score_weights) >= 0, "score_weights", score_weights,
                 "must be two non-negative weights")
        if not gezigs:
            raise ValueError("gezigs is empty: H2SPG needs at least one removable group")
        k = kernels.target_count(target_group_sparsity, len(gezigs))
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
             "betas": tuple(betas), "adam_eps": adam_eps},
        )
        for i, group in enumerate(self.param_groups):
            _check_group_options(group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                                 group["betas"], group["adam_eps"], where=f"param_groups[{i}] ")
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._layout = GroupLayout(gezigs, self._flat_params)
        self._gezigs = tuple(gezigs)
        self._is_valid = is_valid
        self._index_cache: dict[tuple[int, ...], Tensor] = {}
        self._u_buffers: dict[int, Tensor] = {}
        self._scratch_buffers: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._frozen_cache: tuple[tuple[int, ...] | None, frozenset[int]] = (None, frozenset())
        self.defaults.update(
            variant=variant, target_group_sparsity=target_group_sparsity, k=k, warmup_steps=warmup_steps,
            hybrid_steps=hybrid_steps, epsilon=epsilon, score_momentum=score_momentum, lam=lam, eta=eta,
            kappa=kappa, deadline_window=deadline_window, score_weights=tuple(score_weights),
            official_adam_init=official_adam_init,
        )
        self.state[RUN_KEY] = {
            "step": 0,
            "scores": torch.zeros(len(gezigs), dtype=torch.float64),
            "redundant": None,
            "rejected": [],
            "zero": [],
            "forced": [],
            "gezigs": [g.name for g in gezigs],
        }
        self._constructed = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group while constructing; afterwards the GeZIG partition is fixed, so it refuses."""
        if getattr(self, "_constructed", False):
            raise OptimizerError(
                "H2SPG cannot take new param groups after construction: the GeZIG layout is fixed; "
                "pass every parameter when creating the optimizer"
            )
        super().add_param_group(param_group)

    # ----------------------------------------------------------------------------------------- introspection
    @property
    def redundant_groups(self) -> list[Group]:
        """The redundant set ``G_r`` in acceptance order (empty before the end of warm-up)."""
        return [self._gezigs[i] for i in self.state[RUN_KEY]["redundant"] or []]

    @property
    def zero_groups(self) -> list[Group]:
        """Redundant groups that H2SPG has set to exact zero (and keeps there), in the order they got there."""
        return [self._gezigs[i] for i in self.state[RUN_KEY]["zero"]]

    @property
    def rejected_groups(self) -> list[Group]:
        """GeZIGs the hierarchical search examined and refused because removing them breaks validity."""
        return [self._gezigs[i] for i in self.state[RUN_KEY]["rejected"]]

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
        norms = [g.norm() for g in self._gezigs]
        return {
            "step": run["step"],
            "phase": self.phase,
            "target_k": self.defaults["k"],
            "n_gezigs": len(self._gezigs),
            "n_redundant": len(redundant),
            "n_zero_groups": len(run["zero"]),
            "group_sparsity": len(run["zero"]) / len(self._gezigs),
            "redundant_norm": math.sqrt(sum(norms[i] ** 2 for i in redundant)),
            "important_norm": math.sqrt(sum(v**2 for i, v in enumerate(norms) if i not in redundant)),
        }

    # ------------------------------------------------------------------------------------------- state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict saved by an H2SPG over the same GeZIGs (checked by name)."""
        run = state_dict.get("state", {}).get(RUN_KEY)
        if run is None:
            raise ValueError("state_dict has no 'h2spg' entry: it was not saved by H2SPG")
        names = [g.name for g in self._gezigs]
        if list(run["gezigs"]) != names:
            raise ValueError(f"state_dict was saved for GeZIGs {list(run['gezigs'])}, this optimizer has {names}")
        super().load_state_dict(state_dict)
        self.state[RUN_KEY] = copy.deepcopy(run)

    # ------------------------------------------------------------------------------------------------- step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one H2SPG step (see the class docstring); returns the closure's loss if one is given.

        Raises:
            OptimizerError: a GeZIG slice whose scores or λ step are computed this step has a non-finite
                gradient (found in the norms H2SPG computes anyway, no extra pass). No group has been selected
                or projected, but the step was abandoned part-way (buffers, and in warm-up some parameters,
                took the bad values): reload the last checkpoint.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def _select(self, run: dict[str, Any]) -> None:
        """spec §5.5: the redundant set is chosen once, after warm-up, and then fixed."""
        k = self.defaults["k"]
        chosen = kernels.greedy_select(run["scores"].tolist(), [g.macs for g in self._gezigs], k, self._is_valid)
        run["redundant"] = list(chosen.selected)
        run["rejected"] = list(chosen.rejected)
        if len(chosen.selected) < k:
            warnings.warn(
                f"H2SPG: only {len(chosen.selected)} of K={k} GeZIGs can be removed while the network stays "
                "valid; training continues with that redundant set",
                UserWarning,
                stacklevel=4,
            )

    def _targets(self, run: dict[str, Any]) -> list[int]:
        zero = set(run["zero"])
        return [g for g in run["redundant"] or [] if g not in zero]

    def _past_deadline(self, n: int) -> bool:
        d = self.defaults["hybrid_steps"]
        return d is not None and n > self.defaults["warmup_steps"] + d

    def _forcing(self, n: int) -> float:
        d = self.defaults["hybrid_steps"]
        if d is None:
            return 1.0
        window = kernels.forcing_window(d, self.defaults["deadline_window"])
        return kernels.forcing_factor(n, self.defaults["warmup_steps"] + d, window)

def _require(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} {what}")


def _check_group_options(lr, momentum, dampening, weight_decay, betas, adam_eps, *, where: str) -> None:
    _require(isinstance(lr, int | float) and lr > 0, f"{where}lr", lr, "must be > 0")
    _require(momentum >= 0, f"{where}momentum", momentum, "must be >= 0")
    _require(0 <= dampening <= 1, f"{where}dampening", dampening, "must lie in [0, 1]")
    _require(weight_decay >= 0, f"{where}weight_decay", weight_decay, "must be >= 0")
    _require(len(betas) == 2 and all(0 <= b < 1 for b in betas), f"{where}betas", betas, "must lie in [0, 1)")
    _require(adam_eps >= 0, f"{where}adam_eps", adam_eps, "must be >= 0")
