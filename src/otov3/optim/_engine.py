"""The engine shared by H2SPG, DHSPG and HESSO: base direction, group layout, reductions, row factors, zeros.

A step (spec §5.1–§5.7): the optimizer's policy says which groups it must observe (`_plan`); `_directions`
computes every parameter's base direction and, for the observed groups' parameters, the per-row reductions
``‖x‖², ⟨x,d⟩, ‖d‖²`` in the same cache-blocked pass (`_reduce`); the policy turns the per-group sums into a
`Decision` (`_decide`: scores, selection, λ_g and the half-space test, shrink factors); every row then takes
``x ← m_g·(a·x − α d)`` with ``a = 1 − α·wd_AdamW − α·c_g`` (``c_g = λ_g/‖x_g‖``), and zero groups stay
exactly zero with their buffer rows. Everything per group is a ``(G,)`` tensor: no Python loop over groups. A
decision that needs no reductions (``_plan`` observes nothing, e.g. HESSO's shrink steps) is taken before the
pass, which then applies its row factors while each chunk is in cache.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from otov3.errors import OptimizerError
from otov3.optim import _checks
from otov3.optim._base import BUFFER_KEYS
from otov3.optim._layout import RowLayout
from otov3.optim._pass import DirectionPass
from otov3.optim._rowops import RowOps
from otov3.space import Group

# spec §5.1 and §5.4, code `hyperparameter.py`: per-variant defaults of lr, weight decay, λ, η, κ.
VARIANT_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 1e-3, "weight_decay": 0.0, "lam": 1e-3, "eta": 2.0, "kappa": 10.0},
    "adam": {"lr": 1e-3, "weight_decay": 0.0, "lam": 1e-2, "eta": 20.0, "kappa": 1e3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2, "lam": 1e-2, "eta": 20.0, "kappa": 1e3},
}


def preset(variant: str, lr: float | None, momentum: float, dampening: float, weight_decay: float | None,
           betas: tuple[float, float], adam_eps: float) -> dict[str, Any]:
    """The base-direction options with the variant's defaults filled in, checked (ValueError naming them)."""
    if variant not in VARIANT_DEFAULTS:
        raise ValueError(f"variant={variant!r} is unknown; choose one of {sorted(VARIANT_DEFAULTS)}")
    lr = VARIANT_DEFAULTS[variant]["lr"] if lr is None else lr
    weight_decay = VARIANT_DEFAULTS[variant]["weight_decay"] if weight_decay is None else weight_decay
    _checks.check_group_options(lr, momentum, dampening, weight_decay, betas, adam_eps, where="")
    return {"variant": variant, "lr": lr, "momentum": momentum, "dampening": dampening,
            "weight_decay": weight_decay, "betas": tuple(betas), "adam_eps": adam_eps}


def variant_default(variant: str, name: str, value: float | None) -> float:
    """``value``, or the variant's default of option ``name`` (λ, η, κ: spec §5.4)."""
    return VARIANT_DEFAULTS[variant][name] if value is None else value


@dataclass(frozen=True)
class Decision:
    """A policy's verdict for one step, per group: ``c`` (λ_g/‖x_g‖ of the λ step, 0 = none) and ``m`` (row
    multiplier after the step: 1 plain, 0 projected), and the groups that became zero this step."""

    c: Tensor | None
    m: Tensor | None
    zeroed: list[int]


class GroupOptimizer(DirectionPass, RowOps, Optimizer):
    """A `torch.optim.Optimizer` over a partition of groups; subclasses supply the selection/shrink policy.

    Subclass contract: ``NAME``, ``RUN_KEY`` (the optimizer-level entry of ``state``), ``_plan(run, n)`` →
    ``(observed (G,) bool tensor or None, defer)``, ``_decide(run, n, per_group)`` → `Decision` or None,
    ``_check_run(run)`` (state-dict checks), ``redundant_groups`` and ``phase``.
    """

    NAME = "GroupOptimizer"
    RUN_KEY = "run"
    NOUN = "group"

    def _setup(self, params: Iterable[Any], groups: Sequence[Group], *, variant: str, lr: float,
               momentum: float, dampening: float, weight_decay: float, betas: tuple[float, float],
               adam_eps: float, official_adam_init: bool, param_names: Sequence[str] | None,
               defaults: dict[str, Any], run: dict[str, Any]) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "betas": tuple(betas), "adam_eps": adam_eps})
        for i, group in enumerate(self.param_groups):
            _checks.check_group_options(group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                                        group["betas"], group["adam_eps"], where=f"param_groups[{i}] ")
        self._flat_params = [p for group in self.param_groups for p in group["params"]]
        self._layout = RowLayout(groups, self._flat_params, noun=self.NOUN)
        self._groups = tuple(groups)
        node_of = [g.node_group for g in groups]
        self._node_of = node_of if any(n >= 0 for n in node_of) else None
        self._param_names = self._names(param_names)
        self._labels = [f"{n!r}" + (f" of {self.NOUN} {self._layout.owner[i]!r}" if i in self._layout.owner else "")
                        for i, n in enumerate(self._param_names)]
        self._u_buffers: dict[int, Tensor] = {}
        self._native_checked: dict[int, tuple[Tensor, ...]] = {}  # buffers the C kernels may take
        self._native_state_of: Any = None  # the `state` that `_native_state_by_pos` indexes
        self._native_state_by_pos: dict[int, dict[str, Any]] = {}
        self._scratch_buffers: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor, Tensor]] = {}
        self._caches: dict[Any, Any] = {}
        self._factor_bufs: dict[str, dict[tuple[torch.dtype, torch.device], Tensor]] = {}
        self._views: dict[tuple[str, int, bool], Tensor] = {}
        self._row_kinds = sorted({(self._flat_params[pos].dtype, self._flat_params[pos].device)
                                  for pos in self._layout.rows}, key=str)
        self._loads = 0
        self._checked_options: list[tuple[Any, ...]] = []
        self._small = [i for i, n in enumerate(self._layout.numel) if n < _checks.SMALL_GRAD]
        self.defaults.update(variant=variant, official_adam_init=official_adam_init, **defaults)
        self.state[self.RUN_KEY] = run
        self._constructed = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group while constructing; afterwards the group layout is fixed, so it refuses."""
        if getattr(self, "_constructed", False):
            raise OptimizerError(
                f"{self.NAME} cannot take new param groups after construction: the {self.NOUN} layout is fixed; "
                "pass every parameter when creating the optimizer"
            )
        super().add_param_group(param_group)

    def _names(self, given: Sequence[str] | None) -> list[str]:
        if given is not None:
            given = list(given)
            if len(given) != len(self._flat_params) or not all(isinstance(n, str) for n in given):
                raise ValueError(f"param_names must name each of the {len(self._flat_params)} parameters")
            return given
        names = [f"param_groups[{j}].params[{k}] {tuple(p.shape)}"
                 for j, group in enumerate(self.param_groups) for k, p in enumerate(group["params"])]
        return [self._layout.first_name.get(i, n) for i, n in enumerate(names)]

    # ------------------------------------------------------------------------------------------ introspection
    @property
    def zero_groups(self) -> list[Group]:
        """Groups the optimizer has set to exact zero (and keeps there), in the order they got there."""
        return [self._groups[i] for i in self.state[self.RUN_KEY]["zero"]]

    @property
    def deadline(self) -> int | None:
        """The step after which every redundant group is exactly zero (None: no deadline)."""
        d = self.defaults["hybrid_steps"]
        return None if d is None else self.defaults["warmup_steps"] + d

    def _past_deadline(self, n: int) -> bool:
        return self.deadline is not None and n > self.deadline

    def _valid(self, indices: Iterable[int]) -> bool:
        """Whether zeroing these groups is allowed: ``is_valid`` (erasing mode), or in pruning mode that no node
        group loses all of its channel groups (spec §4)."""
        chosen = frozenset(indices)
        if self._is_valid is not None:
            return self._is_valid(chosen)
        if self._node_of is None:
            return True
        size = Counter(n for n in self._node_of if n >= 0)
        used = Counter(self._node_of[g] for g in chosen if self._node_of[g] >= 0)
        return all(used[n] < size[n] for n in used)

    def _mask(self, indices: Iterable[int]) -> Tensor:
        mask = torch.zeros(len(self._groups), dtype=torch.bool)
        mask[list(indices)] = True
        return mask

    # --------------------------------------------------------------------------------------------- state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict saved by this optimizer over the same groups, after checking all of it.

        Load the model's weights first: the zero groups recorded in the state must be zero in them.

        Raises:
            ValueError: naming the first problem (wrong type, group names, an index out of range, a step that is
                not a non-negative int, a buffer shaped unlike its parameter, NaN/Inf, a zero list that disagrees
                with the weights, an invalid redundant set); nothing was loaded.
        """
        _checks.check_state_dict(state_dict, self)
        run = copy.deepcopy(dict(state_dict["state"][self.RUN_KEY]))
        for key, value in run.items():
            if isinstance(value, tuple):
                run[key] = list(value)
        super().load_state_dict(state_dict)
        self.state[self.RUN_KEY] = run
        self._loads += 1

    # ------------------------------------------------------------------------------------------------- step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one step (see the class docstring); returns the closure's loss if one is given.

        Raises:
            OptimizerError: a gradient holds NaN/Inf (the message names the parameter); nothing has moved. A
                non-finite parameter value met later in the group reductions also raises; that step was
                abandoned part-way, so reload the last checkpoint.
            ValueError: a param group's option (e.g. ``lr`` set by hand) is out of range or not finite.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            options = [(group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                        tuple(group["betas"]), group["adam_eps"]) for group in self.param_groups]
            if options != self._checked_options:  # checked once per change (LR schedulers change lr)
                for i, values in enumerate(options):
                    _checks.check_group_options(*values, where=f"param_groups[{i}] ")
                self._checked_options = options
            grads = [p.grad for p in self._flat_params]
            _checks.check_gradients(self._flat_params, self._labels, self.state[self.RUN_KEY]["step"], self.NAME,
                                    small=self._small, grads=grads)
            self._step(grads)
        return loss

    def _step(self, grads: list[Tensor | None]) -> None:
        run = self.state[self.RUN_KEY]
        n = run["step"] + 1
        observed, defer = self._plan(run, n)
        zero_rows, frozen = self._zero_rows(run["zero"])  # they get no gradient, so they and their buffers stay 0
        watch = frozenset(self._params_of(observed)) if observed is not None else frozenset()
        early, snapshot = None, dict(run)
        if observed is None:  # the decision needs no reductions: take it first, so the passes apply it inline
            early = self._decide(run, n, None)
        try:
            work = self._directions(watch, frozen, zero_rows, grads, defer=defer, inline=early, observed=observed)
        except BaseException:
            run.clear()
            run.update(snapshot)  # all or nothing: the policy's choice of this step is undone too
            raise
        per_group = self._reduce(work, watch, observed, n) if observed is not None else None
        decision = early if observed is None else self._decide(run, n, per_group)
        if work.held_rows is not None and decision is not None:
            self._check_held(decision, observed)
        held = work.deferred or work.native_held
        if (decision is not None or held) and early is None:  # an early decision's are filled already
            self._row_factors(decision, work)
        if decision is not None and decision.c is not None and work.foreach:  # λ step of foreach-held rows
            self._scale(work, "pre", decision.c != 0, foreach_only=True)
        for apply in work.updates:
            apply()
        for finish in work.packs:
            finish(self._factor_bufs if decision is not None else None, work.a_is_1)
        if work.native_held:
            self._native_finish(work)
        for pos, finish in work.deferred:
            m = pos in work.m_params
            finish(a=self._view("ma", pos), m=self._view("m", pos) if m else None)  # m = 1: ma is a
        if decision is not None and decision.m is not None:
            self._scale(work, "m", decision.m != 1, foreach_only=False)
        if decision is not None and decision.zeroed:
            for g in decision.zeroed:
                run["zero"].append(g)
                for buffer in self._groups[g].reset_buffers:  # spec §6.2: non-affine norm running means
                    buffer.zero_()
            zero_rows, now_frozen = self._zero_rows(run["zero"])
            self._fill_zero(zero_rows, now_frozen - frozen)
        self._u_buffers = work.u_buffers
        run["step"] = n

    def _check_held(self, decision: Decision, observed: Tensor) -> None:
        """Only the rows of the observed groups waited for the decision (the others took the plain step), so a
        decision must leave every other group alone; a policy that does not is a bug, never a silent error."""
        touched = torch.zeros_like(observed)
        if decision.m is not None:
            touched |= decision.m != 1
        if decision.c is not None:
            touched |= decision.c != 0
        if bool((touched & ~observed).any()):
            raise OptimizerError(f"{self.NAME} decided on groups it did not observe this step (an otov3 bug); "
                                 "please report it with the model and settings")

    def _zero_rows(self, zero: list[int]) -> tuple[dict[int, Tensor], frozenset[int]]:
        """Per parameter, the rows in zero groups; and the parameters made entirely of zero groups."""
        key = ("zero", self._loads, len(zero))
        if key not in self._caches:
            lay = self._layout
            dead = torch.cat((self._mask(zero), torch.zeros(1, dtype=torch.bool)))
            rows_of, frozen = {}, set()
            if zero:
                for pos, rows in lay.rows.items():
                    hit = dead[rows.group]
                    if bool(hit.all()):
                        frozen.add(pos)
                    elif bool(hit.any()):
                        rows_of[pos] = hit.nonzero().flatten().to(self._flat_params[pos].device)
            self._caches = {k: v for k, v in self._caches.items() if k[0] != "zero"}
            self._caches[key] = (rows_of, frozenset(frozen))
        return self._caches[key]

    def _fill_zero(self, zero_rows: dict[int, Tensor], frozen: frozenset[int]) -> None:
        """When groups become zero: their rows, and their momentum / moment buffer rows, are set to exact 0
        (spec §5.5, §5.7); from then on their gradient rows are zeroed before each step, so nothing moves them.
        ``frozen``: parameters now made entirely of zero groups (later steps skip them)."""
        for pos, idx in zero_rows.items():
            p, rows = self._flat_params[pos], self._layout.rows[pos]
            state = self.state.get(p) or {}
            for t in (p, *(state[k] for k in BUFFER_KEYS if k in state)):
                t.index_fill_(rows.dim, idx, 0)
        for pos in frozen:
            p = self._flat_params[pos]
            state = self.state.get(p) or {}
            for t in (p, *(state[k] for k in BUFFER_KEYS if k in state)):
                t.zero_()
