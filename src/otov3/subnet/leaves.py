"""A torch.nn leaf's configuration: what makes two leaves compute the same thing, and how to rebuild one.

`repr()` is not a configuration: `nn.AvgPool2d(3, count_include_pad=False)` prints like the default pool, and
`ceil_mode` or `divisor_override` are missing too. Both the duplicate merging and the source generator therefore
read the public attributes that the constructor stored.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from otov3.errors import ConstructionError

_SKIPPED_ARGUMENTS = {"self", "device", "dtype"}


def public_config(module: nn.Module) -> dict[str, Any]:
    """Every public attribute except the training flag (kernel, stride, padding, count_include_pad, eps, ...)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}


def _argument(module: nn.Module, param: inspect.Parameter) -> Any:
    value = getattr(module, param.name)
    if param.name == "bias" or isinstance(value, torch.Tensor):  # `bias=True` is stored as a Parameter or None
        return value is not None
    return value


def constructor_source(path: str, module: nn.Module) -> str:
    """`nn.Cls(arg=value, ...)` that rebuilds `module`'s configuration; checked by building it and comparing.

    Raises:
        ConstructionError: the module is not a torch.nn layer, has children, or cannot be rebuilt exactly.
    """
    cls = type(module)
    if getattr(nn, cls.__name__, None) is not cls:
        raise ConstructionError(
            f"Module '{path}' ({cls.__module__}.{cls.__name__}) is not a torch.nn layer, so no standalone "
            "source can be generated for it; the state_dict is still written."
        )
    if any(True for _ in module.children()):
        raise ConstructionError(f"Module '{path}' ({cls.__name__}) has children; cannot write it as one line.")
    arguments = []
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name in _SKIPPED_ARGUMENTS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(module, param.name):
            arguments.append(f"{param.name}={_argument(module, param)!r}")
        elif param.default is param.empty:
            raise ConstructionError(f"Module '{path}' ({cls.__name__}) does not store its argument '{param.name}'.")
    text = f"nn.{cls.__name__}({', '.join(arguments)})"
    rebuilt = eval(text, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})  # noqa: S307 (our own text)
    same_tensors = [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in module.state_dict().items()
    ]
    if not same_tensors or repr(public_config(rebuilt)) != repr(public_config(module)):
        raise ConstructionError(f"Module '{path}' ({cls.__name__}) cannot be rebuilt from its arguments: {text}")
    return text
