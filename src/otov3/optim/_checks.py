"""The optimizers' guards: hyper-parameters, the gradients before a step, and a state dict before it is loaded.

Each check runs before anything changes, so a refused step or load leaves parameters, buffers and the run state
exactly as they were (all or nothing), and each message names the first problem: which option, parameter or entry.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from otov3.errors import OptimizerError
from otov3.optim import _native
from otov3.optim._base import BUFFER_KEYS


def require(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} {what}")


def _real(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_number(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    """A finite real number in the given interval, or ValueError naming it."""
    if high is None:
        what = f"must be {'>' if low_open else '>='} {low:g}"
    else:
        what = f"must lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    require(_real(value), name, value, f"{what} (a finite number)")
    ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    require(ok, name, value, what)


def check_group_options(lr, momentum, dampening, weight_decay, betas, adam_eps, *, where: str) -> None:
    """The per-param-group options, finite and in range."""
    check_number(f"{where}lr", lr, 0, low_open=True)
    check_number(f"{where}momentum", momentum, 0)
    check_number(f"{where}dampening", dampening, 0, 1)
    check_number(f"{where}weight_decay", weight_decay, 0)
    ok = isinstance(betas, tuple | list) and len(betas) == 2 and all(_real(b) and 0 <= b < 1 for b in betas)
    require(ok, f"{where}betas", betas, "must be two finite numbers in [0, 1)")
    check_number(f"{where}adam_eps", adam_eps, 0)


def whole_steps(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """A step count: an int, or a float with an integral value (``10.0`` → 10); anything else is refused."""
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "None or " if optional else ""
        raise ValueError(f"{name}={value!r} must be {kind}a whole number of steps (an int >= {minimum})")
    require(value >= minimum, name, value, f"must be >= {minimum}")
    return value


def check_gradients(params: Sequence[Tensor], labels: Sequence[str], step: int, who: str = "H2SPG", *,
                    small: Sequence[int] | None = None, grads: Sequence[Tensor | None] | None = None) -> None:
    """Raises `OptimizerError` naming the first parameter whose gradient holds NaN or Inf (a few batched
    reductions, before anything moves). `labels` describe the parameters (name, and GeZIG if any); `small`: the
    positions of the parameters under `SMALL_GRAD` scalars (computed here when not given); `grads`: their
    gradients, when the caller has them at hand."""
    if small is None:
        small = [i for i, p in enumerate(params) if p.numel() < SMALL_GRAD]
    if grads is None:
        grads = [p.grad for p in params]
    tiny = [grads[i] for i in small]
    tiny = [g for g in tiny if g is not None]
    suspect = bool(tiny) and not _amp_all_finite(tiny)
    if not suspect and len(small) < len(params):
        chosen = set(small)
        large = [g for i, g in enumerate(grads) if g is not None and i not in chosen and not g.is_sparse]
        # A finite sum proves every entry finite (NaN and Inf propagate); a non-finite one is re-checked entry
        # by entry below, since a sum of huge but finite values can overflow. Read-only, one pass each.
        if large and _native.available() and len({g.dtype for g in large}) == 1 and all(map(_native.kind_ok, large)):
            suspect = _native.first_nonfinite(large) >= 0  # one read of each, one call for all
        elif large:
            devices = {g.device for g in large}
            sums = [torch.stack([g.sum().float() for g in large if g.device == dev]) for dev in devices]
            suspect = not all(bool(torch.isfinite(t).all()) for t in sums)
    if not suspect:
        return
    bad = next((i for i, g in enumerate(grads) if g is not None and not g.is_sparse
                and not bool(torch.isfinite(g).all())), None)
    if bad is not None:
        raise OptimizerError(
            f"non-finite gradient (NaN/Inf) in parameter {labels[bad]} at step {step + 1}; {who} did not move any "
            "parameter or buffer. Lower the learning rate, clip the gradients, or skip such steps (e.g. "
            "torch.amp.GradScaler), then zero the gradients and continue."
        )


# Gradients below this size are checked with one batched call (per-tensor calls dominate there); larger ones with
# a plain sum each (memory bandwidth dominates there, and the sum only reads).
SMALL_GRAD = 65536


def _amp_all_finite(grads: list[Tensor]) -> bool:
    """Whether every given gradient is finite: GradScaler's batched check with a scale of 1 (``g·1`` is ``g``,
    bit for bit), or per-tensor checks where it refuses the tensors (sparse, integer, overlapping memory, several
    devices)."""
    found = torch.zeros(1, device=grads[0].device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=grads[0].device))
    except (RuntimeError, NotImplementedError):
        return all(bool(torch.isfinite(g).all()) for g in grads if not g.is_sparse)
    return not bool(found.item())


def index_list(where: str, name: str, value: Any, n: int, noun: str) -> list[int]:
    """A list of distinct group indices in ``0..n-1``, or ValueError naming the field."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}[{name!r}] must be a list of {noun} indices, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"{where}[{name!r}] holds {v!r}; {noun} indices must be ints in 0..{n - 1}")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}[{name!r}] repeats a {noun} index: {out}")
    return out


def check_run_common(run: Any, opt: Any, fields: Sequence[str], names_key: str) -> str:
    """The optimizer-level entry of a state dict: a dict with every field, saved for these groups, a valid step.

    Returns the entry's name for further messages."""
    where = f"state_dict['state'][{opt.RUN_KEY!r}]"
    if not isinstance(run, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(run).__name__}")
    missing = [k for k in fields if k not in run]
    if missing:
        raise ValueError(f"{where} lacks {missing}; it was not saved by this version of {opt.NAME}")
    names = [g.name for g in opt._groups]
    if not isinstance(run[names_key], list | tuple) or list(run[names_key]) != names:
        shown = names if len(names) <= 50 else f"{len(names)} groups ({names[0]!r}, ...)"
        raise ValueError(f"state_dict was saved for {opt.NOUN}s {run[names_key]!r}, this optimizer has {shown}")
    step = run["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{where}['step']={step!r} must be an int >= 0")
    return where


def check_scores(where: str, name: str, scores: Any, n: int) -> None:
    if not (isinstance(scores, Tensor) and scores.dtype == torch.float64 and tuple(scores.shape) == (n,)):
        raise ValueError(f"{where}[{name!r}] must be a float64 tensor of shape ({n},), got {scores!r}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{where}[{name!r}] holds NaN/Inf: {scores.tolist()}")


def check_subsets(where: str, names: Sequence[str], pairs: Sequence[tuple[str, list[int], set[int], str]]) -> None:
    """Each ``(field, values, allowed, parent)``: every value lies in ``allowed`` (the parent field's set)."""
    for name, values, within, parent in pairs:
        outside = [names[i] for i in values if i not in within]
        if outside:
            raise ValueError(f"{where}[{name!r}] lists {outside}, which are not in {parent!r}")


def check_zero_weights(where: str, zero: Sequence[int], groups: Sequence[Any], noun: str) -> None:
    for i in zero:
        if not groups[i].is_zero():
            raise ValueError(
                f"{where}['zero'] lists {noun} {groups[i].name!r}, but its weights are not zero (norm "
                f"{groups[i].norm():.3g}); load the model's state_dict from the same checkpoint before the optimizer's"
            )


def check_param_states(state: Mapping[Any, Any], targets: Mapping[int, tuple[Tensor, str]]) -> None:
    """Per-parameter entries: known ids, buffers shaped like their parameter and finite, valid step counts.

    Args:
        state: the saved ``state`` (parameter id -> dict, plus the optimizer-level entry).
        targets: saved parameter id -> (this optimizer's parameter, its name).
    """
    for key, value in state.items():
        if isinstance(key, str):
            continue
        try:
            i = operator.index(key)
        except TypeError:
            raise ValueError(f"state_dict['state'] has key {key!r}; expected parameter ids") from None
        if i not in targets:
            raise ValueError(f"state_dict['state'][{i}] refers to no parameter of state_dict['param_groups']")
        param, name = targets[i]
        if not isinstance(value, Mapping):
            raise ValueError(f"state_dict['state'][{i}] ({name!r}) must be a dict, got {type(value).__name__}")
        for k in BUFFER_KEYS:
            if k in value:
                b = value[k]
                if not isinstance(b, Tensor) or tuple(b.shape) != tuple(param.shape):
                    got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                    raise ValueError(
                        f"state_dict['state'][{i}][{k!r}] of parameter {name!r} has shape {got}, the parameter "
                        f"{tuple(param.shape)}"
                    )
                if b.is_floating_point() and not bool(torch.isfinite(b).all()):
                    raise ValueError(f"state_dict['state'][{i}][{k!r}] of parameter {name!r} holds NaN/Inf")
        if "step" in value:
            s = value["step"]
            s = s.item() if isinstance(s, Tensor) and s.numel() == 1 else s
            if isinstance(s, bool) or not isinstance(s, int | float) or s < 0 or not float(s).is_integer():
                raise ValueError(f"state_dict['state'][{i}]['step'] of parameter {name!r} is {s!r}; expected "
                                 "an int >= 0")


def check_state_dict(state_dict: Any, opt: Any) -> None:
    """Everything `load_state_dict` would take over, checked before any of it is."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError(
            "state_dict must be a dict with 'state' and 'param_groups' (what optimizer.state_dict() returns), "
            f"got {type(state_dict).__name__}"
        )
    state, groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(state, Mapping):
        raise ValueError(f"state_dict['state'] must be a dict, got {type(state).__name__}")
    if opt.RUN_KEY not in state:
        raise ValueError(f"state_dict has no {opt.RUN_KEY!r} entry: it was not saved by {opt.NAME}")
    if not isinstance(groups, list | tuple) or len(groups) != len(opt.param_groups):
        raise ValueError(f"state_dict['param_groups'] must list {len(opt.param_groups)} param group(s), got {groups!r}")
    names = dict(zip(map(id, opt._flat_params), opt._param_names, strict=True))
    targets: dict[int, tuple[Tensor, str]] = {}
    for j, (saved, mine) in enumerate(zip(groups, opt.param_groups, strict=True)):
        if not isinstance(saved, Mapping) or len(saved.get("params", ())) != len(mine["params"]):
            raise ValueError(f"state_dict['param_groups'][{j}] does not match this optimizer's param group {j}")
        targets.update((i, (p, names[id(p)])) for i, p in zip(saved["params"], mine["params"], strict=True))
        merged = {**mine, **saved}
        check_group_options(merged["lr"], merged["momentum"], merged["dampening"], merged["weight_decay"],
                            tuple(merged["betas"]) if isinstance(merged["betas"], list) else merged["betas"],
                            merged["adam_eps"], where=f"state_dict['param_groups'][{j}] ")
    opt._check_run(state[opt.RUN_KEY])
    check_param_states(state, targets)
