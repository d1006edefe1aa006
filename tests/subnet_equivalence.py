"""The project's central property, in one helper: a sub-network returns its super-network's outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import torch.fx
from torch import nn

from otov3.subnet.verify import (
    FLOAT64_AGREEMENT,
    first_divergent_node,
    float64_difference,
    fresh_inputs,
    relative_difference,
)

RTOL = 1e-5


def load_generated(path: Path) -> ModuleType:
    """Import a generated `subnet.py` as a module, the way a user without otov3 would."""
    spec = importlib.util.spec_from_file_location("generated_subnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_onnx_matches(path: Path, super_model: nn.Module, x: torch.Tensor) -> None:
    """The exported ONNX file, run by onnxruntime, returns the super-network's output (eval mode, 1e-4 relative)."""
    import onnxruntime

    got = onnxruntime.InferenceSession(str(path)).run(None, {"input_0": x.numpy()})[0]
    super_model.eval()
    with torch.no_grad():
        ref = super_model(x).numpy()
    assert abs(got - ref).max() <= 1e-4 * max(abs(ref).max(), 1.0)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_subnet_equivalent(
    super_model: nn.Module,
    subnet: nn.Module,
    example: tuple,
    *,
    trials: int = 3,
    seed: int = 1234,
    expect_smaller: bool = True,
    super_gm: torch.fx.GraphModule | None = None,
) -> None:
    """Structure first (fewer parameters, a linted graph), then outputs on fresh random inputs, eval mode.

    On failure the message names the first node whose value diverges (when `super_gm` is given).
    """
    if expect_smaller:
        assert count(subnet) < count(super_model), (count(subnet), count(super_model))
    else:
        assert count(subnet) <= count(super_model)
    if isinstance(subnet, torch.fx.GraphModule):
        subnet.graph.lint()
    generator = torch.Generator().manual_seed(seed)
    modes = (super_model.training, subnet.training)
    super_model.eval()
    subnet.eval()
    try:
        for _ in range(trials):
            args, _ = fresh_inputs(example, {}, generator)
            with torch.no_grad():
                ref, got = super_model(*args), subnet(*args)
            ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
            got = [got] if isinstance(got, torch.Tensor) else list(got)
            diff = relative_difference(ref, got)
            if diff > RTOL and (wide := float64_difference(super_model, subnet, args, {})) is not None \
                    and wide <= FLOAT64_AGREEMENT:
                continue  # float32 rounding amplified by the network: float64 copies agree to ~1e-12
            if diff > RTOL:
                where = first_divergent_node(super_gm, subnet, args, {}, RTOL) if super_gm is not None else None
                raise AssertionError(f"sub-network differs by {diff:.3g} (relative); first divergent node: {where}")
    finally:
        super_model.train(modes[0])
        subnet.train(modes[1])


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BN statistics, so that equality is not an accident of initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model


def zero_groups_(groups) -> None:
    """Zero every slice of the given groups in place (what H2SPG does at projection)."""
    with torch.no_grad():
        for g in groups:
            for s in g.slices:
                s.view().zero_()
            for b in g.reset_buffers:
                b.zero_()
