"""Capture a model with torch.fx: symbolic trace plus one recorded run on the dummy input (spec §2.1)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from otov3.capture.recording import ValueRecorder
from otov3.errors import CaptureError
from otov3.ops.user import user_leaf_classes

DummyInput = torch.Tensor | Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class Captured:
    """A traced copy-free view of the user's model.

    Attributes:
        gm: GraphModule whose submodules are the user's own modules (never edited in place); for the export
            backend, whose `get_attr` targets are the user's own parameters and buffers.
        args: positional example inputs, kwargs: keyword example inputs.
        values: example value of every node (tensors detached), from one eval-mode run.
        backend: "fx" (torch.fx symbolic trace) or "export" (non-strict torch.export, aten ops).
        fallback_reason: why the first backend tried was not used (``capture="auto"``), else None.
    """

    gm: torch.fx.GraphModule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    values: dict[str, Any]
    backend: str = "fx"
    fallback_reason: str | None = None


class _NamingTracer(torch.fx.Tracer):
    """Standard torch.nn modules are leaves (fx default) plus user-chosen leaves; remembers where it is."""

    def __init__(self, leaf_modules: tuple[type, ...]) -> None:
        super().__init__()
        self._leaves = leaf_modules
        self.stack: list[str] = []
        self.failed_at: str | None = None  # innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaves and isinstance(m, self._leaves):
            return True
        if type(m) in user_leaf_classes():  # declared with otov3.register_op
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m) or type(m).__name__)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def split_dummy_input(dummy_input: DummyInput) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(dummy_input, torch.Tensor):
        return (dummy_input,), {}
    if isinstance(dummy_input, Mapping):
        return (), dict(dummy_input)
    if isinstance(dummy_input, Sequence) and not isinstance(dummy_input, str):
        return tuple(dummy_input), {}
    raise CaptureError(
        f"dummy_input must be a tensor, a tuple of inputs or a dict of keyword inputs, got {type(dummy_input)!r}"
    )


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore every submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _trace(model: nn.Module, leaf_modules: tuple[type, ...], kwargs: dict[str, Any]) -> torch.fx.GraphModule:
    tracer = _NamingTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError, ...
        where = tracer.failed_at or type(model).__name__
        owner = model.get_submodule(tracer.failed_at) if tracer.failed_at else model
        raise CaptureError(
            f"Could not trace the model: failed inside module '{where}' ({type(owner).__name__}): {err}. "
            "otov3 needs a forward without data-dependent Python control flow. Rewrite that part with tensor "
            f"ops, or treat the module as one opaque op with OTO(..., leaf_modules=[{type(owner).__name__}])."
        ) from err
    name = type(model).__name__
    return torch.fx.GraphModule(tracer.root, graph, name)


def _explain_failure(n: torch.fx.Node, err: Exception, values: dict[str, Any]) -> str:
    gm = n.graph.owning_module
    where = f"module '{n.target}' ({type(gm.get_submodule(n.target)).__name__})" \
        if n.op == "call_module" else f"'{n.target}'"
    shapes = [tuple(v.shape) for v in values.values() if isinstance(v, torch.Tensor)][:1]
    return (
        f"Running the dummy input failed at node '{n.name}', {where}: {err}. Check that dummy_input "
        f"has the shape and dtype the model expects (the first input had shape {shapes[0] if shapes else '?'})."
    )


def capture(model: nn.Module, dummy_input: DummyInput, *, leaf_modules: Sequence[type] = ()) -> Captured:
    """Trace `model` and record every node's example value, leaving the model exactly as it was."""
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model)!r}")
    args, kwargs = split_dummy_input(dummy_input)
    with preserved_modes(model):  # trace the deployment graph: `if self.training:` branches take eval's side
        gm = _trace(model, tuple(leaf_modules), kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(args) > len(placeholders):
        raise CaptureError(
            f"dummy_input has {len(args)} positional inputs but the model's forward takes {len(placeholders)}."
        )
    recorder = ValueRecorder(gm, _explain_failure)
    with preserved_modes(model), torch.no_grad():
        env_args = list(args)
        for ph in placeholders[len(args):]:
            if ph.name in kwargs or ph.target in kwargs:
                env_args.append(kwargs.get(ph.target, kwargs.get(ph.name)))
            elif ph.args:
                env_args.append(ph.args[0])  # the forward's default value
            else:
                raise CaptureError(f"dummy_input gives no value for the model's forward argument '{ph.target}'.")
        recorder.run(*env_args)
    return Captured(gm, args, kwargs, recorder.values)
