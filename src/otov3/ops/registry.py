"""The op-handler table: one place that says what every op is (spec §2.2).

Entries are keyed exactly: module classes (looked up along the MRO, so subclasses inherit their parent's
entry), function objects, and method names. An op without an entry is UNKNOWN with a recorded reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.fx
from torch import nn

from otov3.graph.types import OpTraits, VertexKind


@dataclass(frozen=True)
class OpContext:
    """What a handler may look at to classify one traced op."""

    node: torch.fx.Node
    module: nn.Module | None
    in_shapes: tuple[tuple[int, ...] | None, ...]
    out_shape: tuple[int, ...] | None
    tensor_operands: int  # how many arguments are tensors (data or side inputs)
    path: str | None = None  # qualified module path for call_module nodes

    def qualify(self, local: str) -> str:
        """Qualified parameter name of the module's own parameter `local`."""
        return f"{self.path}.{local}" if self.path else local

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """A call argument by position or keyword (fx keeps whichever the model used)."""
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)


@dataclass(frozen=True)
class OpHandler:
    """One table entry: a name and a function from the op's context to its traits and MACs."""

    name: str
    describe: Callable[[OpContext], OpTraits]
    macs: Callable[[OpContext], int] = field(default=lambda ctx: 0)


_BY_MODULE: dict[type, OpHandler] = {}
_BY_FUNCTION: dict[Any, OpHandler] = {}
_BY_METHOD: dict[str, OpHandler] = {}


def register(
    *,
    modules: tuple[type, ...] = (),
    functions: tuple[Any, ...] = (),
    methods: tuple[str, ...] = (),
    macs: Callable[[OpContext], int] | None = None,
) -> Callable[[Callable[[OpContext], OpTraits]], Callable[[OpContext], OpTraits]]:
    """Decorator adding a describe-function to the table under every given key."""

    def wrap(fn: Callable[[OpContext], OpTraits]) -> Callable[[OpContext], OpTraits]:
        handler = OpHandler(fn.__name__.removeprefix("_"), fn, macs or (lambda ctx: 0))
        for key in modules:
            _BY_MODULE[key] = handler
        for key in functions:
            _BY_FUNCTION[key] = handler
        for key in methods:
            _BY_METHOD[key] = handler
        return fn

    return wrap


def lookup(node: torch.fx.Node, module: nn.Module | None) -> OpHandler | None:
    """The entry for an fx node, or None when otov3 does not know the op."""
    if node.op == "call_module" and module is not None:
        for cls in type(module).__mro__:
            if cls in _BY_MODULE:
                return _BY_MODULE[cls]
        return None
    if node.op == "call_function":
        try:
            return _BY_FUNCTION.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _BY_METHOD.get(str(node.target))
    return None


def unknown_traits(node: torch.fx.Node, module: nn.Module | None) -> OpTraits:
    what = type(module).__name__ if module is not None else getattr(node.target, "__name__", str(node.target))
    return OpTraits(VertexKind.UNKNOWN, reason=f"'{what}' is not in otov3's op table")


def table_entries() -> dict[str, dict[Any, OpHandler]]:
    """The whole table, for tests and docs."""
    return {"modules": dict(_BY_MODULE), "functions": dict(_BY_FUNCTION), "methods": dict(_BY_METHOD)}
