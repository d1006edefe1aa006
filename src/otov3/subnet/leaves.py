"""A torch.nn leaf's configuration: what makes two leaves compute the same thing, and how to rebuild one.

`repr()` is not a configuration: `nn.AvgPool2d(3, count_include_pad=False)` prints like the default pool, and
`ceil_mode` or `divisor_override` are missing too. Both the duplicate merging and the source generator therefore
read the public attributes that the constructor stored. A few torch.nn layers build their own children
(`nn.MultiheadAttention` its ``out_proj``, the Transformer layers their attention and feed-forward parts) and do not
store every argument; `_DERIVED` reads those arguments back from the children. A layer with children is accepted
only when rebuilding it gives the same state_dict keys and shapes and the same configuration, child by child.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from otov3.errors import ConstructionError

_SKIPPED_ARGUMENTS = {"self", "device", "dtype"}


def _activation_name(fn: Any) -> str:
    for name in ("relu", "gelu"):
        if fn is getattr(nn.functional, name):
            return name
    raise ValueError(f"activation {fn!r} is not 'relu' or 'gelu'")


def _transformer_layer(m: nn.Module) -> dict[str, Any]:
    return {
        "d_model": m.self_attn.embed_dim, "nhead": m.self_attn.num_heads, "dim_feedforward": m.linear1.out_features,
        "dropout": m.dropout.p, "activation": _activation_name(m.activation), "layer_norm_eps": m.norm1.eps,
        "batch_first": m.self_attn.batch_first, "bias": m.linear1.bias is not None,
    }


# Constructor arguments a layer does not store as attributes, read back from what it built.
_DERIVED: dict[type, Any] = {
    nn.MultiheadAttention: lambda m: {"bias": m.in_proj_bias is not None, "add_bias_kv": m.bias_k is not None},
    nn.TransformerEncoderLayer: _transformer_layer,
    nn.TransformerDecoderLayer: _transformer_layer,
}


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
        ConstructionError: the module is not a torch.nn layer, or cannot be rebuilt exactly from its arguments
            (children included).
    """
    cls = type(module)
    if getattr(nn, cls.__name__, None) is not cls:
        raise ConstructionError(
            f"Module '{path}' ({cls.__module__}.{cls.__name__}) is not a torch.nn layer, so no standalone "
            "source can be generated for it; the state_dict is still written."
        )
    try:
        derived = _DERIVED[cls](module) if cls in _DERIVED else {}
    except (AttributeError, ValueError) as err:
        raise ConstructionError(
            f"Module '{path}' ({cls.__name__}) cannot be rebuilt from its arguments: {err}"
        ) from err
    arguments = []
    signature, inherited = _constructor_signature(cls)
    for param in signature.parameters.values():
        if param.name in _SKIPPED_ARGUMENTS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if inherited and param.name == "mode":
            continue  # nn.LSTM/GRU/RNN pass their own mode to RNNBase
        if param.default is not param.empty and hasattr(module, param.name) and param.name not in derived:
            value = _argument(module, param)
            if type(value) is type(param.default) and value == param.default:
                continue  # defaults stay implicit (GRU refuses an explicit proj_size=0)
        if param.name in derived:
            arguments.append(f"{param.name}={derived[param.name]!r}")
        elif hasattr(module, param.name):
            arguments.append(f"{param.name}={_argument(module, param)!r}")
        elif param.default is param.empty:
            raise ConstructionError(f"Module '{path}' ({cls.__name__}) does not store its argument '{param.name}'.")
    text = f"nn.{cls.__name__}({', '.join(arguments)})"
    try:
        rebuilt = eval(text, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})  # noqa: S307 (our text)
    except Exception as err:
        raise ConstructionError(f"Module '{path}' ({cls.__name__}) cannot be rebuilt from {text}: {err}") from err
    if not _same_layout(rebuilt, module):
        has_children = any(True for _ in module.children())
        why = "its children differ when rebuilt" if has_children else "the rebuilt layer differs"
        raise ConstructionError(
            f"Module '{path}' ({cls.__name__}) cannot be rebuilt from its arguments ({why}): {text}"
        )
    return text


def _constructor_signature(cls: type) -> tuple[inspect.Signature, bool]:
    """The first `__init__` along the MRO with named parameters (nn.LSTM's is `*args, **kwargs`: RNNBase's)."""
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        named = [p for p in signature.parameters.values() if p.name != "self"
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if named:
            return signature, base is not cls
    return inspect.signature(cls.__init__), False


def _same_layout(rebuilt: nn.Module, module: nn.Module) -> bool:
    """Same state_dict keys and shapes, same submodule paths, classes and configurations."""
    same_tensors = [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in module.state_dict().items()
    ]
    mods_a, mods_b = list(rebuilt.named_modules()), list(module.named_modules())
    if not same_tensors or [(n, type(m)) for n, m in mods_a] != [(n, type(m)) for n, m in mods_b]:
        return False
    return all(repr(public_config(a)) == repr(public_config(b)) for (_, a), (_, b) in zip(mods_a, mods_b, strict=True))
