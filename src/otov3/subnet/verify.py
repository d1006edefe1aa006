"""Check that a sub-network returns the super-network's outputs (spec §6.2); name the first divergence.

Nothing non-finite passes: NaN compares unequal to everything, so a plain ``max|a − b|`` reports a NaN output as a
perfect match. Every comparison here treats a NaN or Inf in either output as a failure, and construction refuses
sub-networks whose weights are not finite (`non_finite_tensors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import nn

from otov3.capture.fx_capture import preserved_modes
from otov3.errors import ConstructionError

# spec §6.2 exactness is stated for float32; half-precision outputs round to a few ulps of their own precision.
_LOW_PRECISION_FLOOR = {torch.float16: 8 * torch.finfo(torch.float16).eps,
                        torch.bfloat16: 8 * torch.finfo(torch.bfloat16).eps}


def fresh_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], generator: torch.Generator) -> tuple[tuple, dict]:
    """Random inputs shaped like the example ones (floating tensors redrawn, everything else reused)."""

    def redraw(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x

    return tuple(redraw(a) for a in args), {k: redraw(v) for k, v in kwargs.items()}


def output_leaves(out: Any, path: str = "output") -> list[tuple[str, Any]]:
    """Every leaf of a nested output with its path: tensors, numbers, None, strings.

    Tuples and lists (named tuples too), mappings (dicts, Hugging Face ``ModelOutput``) and dataclasses are
    walked; ``output[0]``, ``output['logits']`` and ``output.logits`` name the leaves.
    """
    if isinstance(out, torch.Tensor):
        return [(path, out)]
    if isinstance(out, Mapping):
        return [leaf for k, v in out.items() for leaf in output_leaves(v, f"{path}[{k!r}]")]
    if isinstance(out, tuple | list):
        return [leaf for i, v in enumerate(out) for leaf in output_leaves(v, f"{path}[{i}]")]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        fields = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
        return [leaf for name, v in fields for leaf in output_leaves(v, f"{path}.{name}")]
    return [(path, out)]


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, bool | int | float):
        return torch.tensor(x)
    return None


def _non_finite(t: torch.Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    return int((~torch.isfinite(t)).sum())


def compare_outputs(reference: Any, other: Any, *, names: tuple[str, str] = ("super-network", "sub-network")) -> float:
    """max |a − b| / max |a| over every leaf of two nested outputs; inf when their structures differ.

    Raises:
        ConstructionError: a leaf of either output holds NaN or Inf (the message names the network and the leaf).
    """
    ref, got = output_leaves(reference), output_leaves(other)
    for (path, value), name in [(p, names[0]) for p in ref] + [(p, names[1]) for p in got]:
        t = _as_tensor(value)
        bad = _non_finite(t) if t is not None else 0
        if bad:
            raise ConstructionError(
                f"The {name}'s {path} holds {bad} non-finite value(s) (NaN/Inf) of {t.numel()}; outputs with "
                "NaN or Inf cannot be compared. Check the weights and the inputs (a NaN weight, an overflow in "
                "half precision, a log of zero)."
            )
    if [p for p, _ in ref] != [p for p, _ in got]:
        return float("inf")
    worst = 0.0
    for (_, a), (_, b) in zip(ref, got, strict=True):
        ta, tb = _as_tensor(a), _as_tensor(b)
        if ta is None or tb is None:
            if ta is not None or tb is not None or a != b:
                return float("inf")
            continue
        worst = max(worst, _leaf_difference(ta, tb))
    return worst


def _leaf_difference(a: torch.Tensor, b: torch.Tensor, *, same_non_finite: bool = False) -> float:
    """Relative difference of two tensors; a NaN/Inf is a mismatch, unless `same_non_finite` and both sides hold
    the same non-finite values at the same places (an attention mask's -inf inside a network)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not (bool(fa.all()) and bool(fb.all())):
        na, nb = a[~fa], b[~fb]
        same = torch.equal(fa, fb) and torch.equal(na.isnan(), nb.isnan())
        same = same and torch.equal(na.nan_to_num(), nb.nan_to_num())
        if not (same_non_finite and same):
            return float("inf")  # NaN never counts as a match
        a, b = a[fa], b[fb]
        if a.numel() == 0:
            return 0.0
    scale = max(float(a.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


def relative_difference(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """max |a − b| / max |a| over all output tensors; inf when structures, shapes or dtypes differ, or when
    either side holds a NaN or Inf."""
    if len(reference) != len(other):
        return float("inf")
    return max((_leaf_difference(a, b) for a, b in zip(reference, other, strict=True)), default=0.0)


def tolerance(output: Any, rtol: float) -> float:
    """`rtol`, raised to a few ulps of the output's precision for float16/bfloat16 outputs."""
    floors = [_LOW_PRECISION_FLOOR.get(t.dtype, 0.0) for _, t in output_leaves(output) if isinstance(t, torch.Tensor)]
    return max([rtol, *floors])


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names (with counts) of the parameters and buffers of `module` that hold NaN or Inf."""
    out = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        bad = _non_finite(t.detach())
        if bad:
            out.append(f"'{name}' ({bad} of {t.numel()} values)")
    return out


def _outputs(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    with preserved_modes(model), torch.no_grad():
        return model(*args, **kwargs)


def max_relative_difference(
    model: nn.Module, subnet: nn.Module, args: tuple, kwargs: dict, *, trials: int = 3, seed: int = 0,
    rtol: float | None = None,
) -> float:
    """Worst relative output difference over `trials` fresh random inputs, both models in eval mode.

    With `rtol` given, the result is divided by the output's tolerance (`tolerance`), so that 1 is the limit.

    Raises:
        ConstructionError: an output of either model holds NaN or Inf.
    """
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(trials):
        a, k = fresh_inputs(args, kwargs, generator)
        ref = _outputs(model, a, k)
        diff = compare_outputs(ref, _outputs(subnet, a, k))
        worst = max(worst, diff / tolerance(ref, rtol) if rtol is not None else diff)
    return worst


# A float32 mismatch is accepted as rounding only when the float64 copies agree this closely: a structurally
# wrong sub-network differs in float64 by about as much as in float32.
FLOAT64_AGREEMENT = 1e-9


def float64_difference(model: nn.Module, subnet: nn.Module, args: tuple, kwargs: dict, *, trials: int = 3,
                       seed: int = 0) -> float | None:
    """`max_relative_difference` of float64 copies of both models on float64 inputs, or None when a copy cannot
    run in float64 (a graph with float32 constants baked in).

    Why: an ill-conditioned network (a LayerNorm over a few features, stacked attention) amplifies float32
    rounding, and removing zero rows changes the summation order of the matrix products; the same function then
    differs by more than the float32 tolerance. In float64 the rounding is 2**29 times smaller, so a sub-network
    that computes the same function agrees to ~1e-12 while a wrong one does not."""
    import copy

    def wide(x: Any) -> Any:
        return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    try:
        m64, s64 = copy.deepcopy(model).double(), copy.deepcopy(subnet).double()
        generator = torch.Generator().manual_seed(seed)
        worst = 0.0
        for _ in range(trials):
            a, k = fresh_inputs(args, kwargs, generator)
            a = tuple(torch.utils._pytree.tree_map(wide, list(a)))
            k = torch.utils._pytree.tree_map(wide, k)
            worst = max(worst, compare_outputs(_outputs(m64, a, k), _outputs(s64, a, k)))
        return worst
    except Exception:
        return None


def first_divergent_node(
    super_gm: torch.fx.GraphModule, subnet: torch.fx.GraphModule, args: tuple, kwargs: dict, rtol: float
) -> str | None:
    """The first node of the sub-network whose value differs from the same-named super-network node."""

    def record(gm: torch.fx.GraphModule) -> dict[str, Any]:
        values: dict[str, Any] = {}

        class _Rec(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                values[n.name] = out
                return out

        with preserved_modes(gm), torch.no_grad():
            _Rec(gm).run(*args, *kwargs.values())
        return values

    try:
        ref, got = record(super_gm), record(subnet)
    except Exception:  # best effort: the message falls back to naming the groups only
        return None
    for node in subnet.graph.nodes:
        a, b = ref.get(node.name), got.get(node.name)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
            if _leaf_difference(a, b, same_non_finite=True) > rtol:
                return node.name
    return None
