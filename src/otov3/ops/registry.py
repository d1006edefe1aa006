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
    data_args: tuple[int, ...] = ()  # positions in node.args that hold data (reachable from the model input)
    side_params: tuple[str, ...] = ()  # trainable parameters read through non-data operands (get_attr, views)
    side_zeroing: bool = False  # side_params exist and zeroing them makes every non-data tensor operand zero

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
_BY_QUALNAME: dict[str, OpHandler] = {}  # "package.module.function": functions of libraries otov3 does not import


def qualified_name(obj: Any) -> str | None:
    """`module.qualname` of a function or class, the key of `_BY_QUALNAME`."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def register(
    *,
    modules: tuple[type, ...] = (),
    functions: tuple[Any, ...] = (),
    methods: tuple[str, ...] = (),
    qualnames: tuple[str, ...] = (),
    macs: Callable[[OpContext], int] | None = None,
) -> Callable[[Callable[[OpContext], OpTraits]], Callable[[OpContext], OpTraits]]:
    """Decorator adding a describe-function to the table under every given key.

    `qualnames` key functions or classes of other libraries (torchvision, timm) by `module.qualname`, so that
    otov3 does not import them; the match is still exact.
    """

    def wrap(fn: Callable[[OpContext], OpTraits]) -> Callable[[OpContext], OpTraits]:
        handler = OpHandler(fn.__name__.removeprefix("_"), fn, macs or (lambda ctx: 0))
        for key in modules:
            _BY_MODULE[key] = handler
        for key in functions:
            _BY_FUNCTION[key] = handler
        for key in methods:
            _BY_METHOD[key] = handler
        for key in qualnames:
            _BY_QUALNAME[key] = handler
        return fn

    return wrap


def lookup(node: torch.fx.Node, module: nn.Module | None) -> OpHandler | None:
    """The entry for an fx node, or None when otov3 does not know the op."""
    if node.op == "call_module" and module is not None:
        for cls in type(module).__mro__:
            if cls in _BY_MODULE:
                return _BY_MODULE[cls]
            if qualified_name(cls) in _BY_QUALNAME:
                return _BY_QUALNAME[qualified_name(cls)]
        return None
    if node.op == "call_function":
        try:
            found = _BY_FUNCTION.get(node.target)
        except TypeError:  # unhashable target
            found = None
        return found or _BY_QUALNAME.get(qualified_name(node.target) or "")
    if node.op == "call_method":
        return _BY_METHOD.get(str(node.target))
    return None


def unknown_traits(node: torch.fx.Node, module: nn.Module | None) -> OpTraits:
    target = type(module) if module is not None else node.target
    short = getattr(target, "__name__", str(target))
    full = qualified_name(target) if not isinstance(target, str) else f"torch.Tensor.{target}"
    return OpTraits(
        VertexKind.UNKNOWN,
        reason=f"'{short}' is not in otov3's op table ({full}; declare it with otov3.register_op)",
    )


def table_entries() -> dict[str, dict[Any, OpHandler]]:
    """The whole table, for tests and docs."""
    return {"modules": dict(_BY_MODULE), "functions": dict(_BY_FUNCTION), "methods": dict(_BY_METHOD),
            "qualnames": dict(_BY_QUALNAME)}
