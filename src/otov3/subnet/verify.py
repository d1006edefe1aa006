"""Check that a sub-network returns the super-network's outputs (spec §6.2); name the first divergence."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils._pytree import tree_leaves

from otov3.capture.fx_capture import preserved_modes


def fresh_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], generator: torch.Generator) -> tuple[tuple, dict]:
    """Random inputs shaped like the example ones (floating tensors redrawn, everything else reused)."""

    def redraw(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x

    return tuple(redraw(a) for a in args), {k: redraw(v) for k, v in kwargs.items()}


def _outputs(model: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    with preserved_modes(model), torch.no_grad():
        out = model(*args, **kwargs)
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def relative_difference(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """max |a - b| / max |a| over all output tensors (inf when structures differ)."""
    if len(reference) != len(other) or any(a.shape != b.shape for a, b in zip(reference, other, strict=True)):
        return float("inf")
    worst = 0.0
    for a, b in zip(reference, other, strict=True):
        a, b = a.double(), b.double()
        scale = max(float(a.abs().max()) if a.numel() else 0.0, 1e-12)
        worst = max(worst, float((a - b).abs().max()) / scale if a.numel() else 0.0)
    return worst


def max_relative_difference(
    model: nn.Module, subnet: nn.Module, args: tuple, kwargs: dict, *, trials: int = 3, seed: int = 0
) -> float:
    """Worst relative output difference over `trials` fresh random inputs, both models in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(trials):
        a, k = fresh_inputs(args, kwargs, generator)
        worst = max(worst, relative_difference(_outputs(model, a, k), _outputs(subnet, a, k)))
    return worst


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
            if relative_difference([a], [b]) > rtol:
                return node.name
    return None
