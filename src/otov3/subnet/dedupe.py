"""Compute each parameter-free, deterministic operation once per distinct input (common-subexpression elimination).

Super-networks repeat such operations on purpose: a DARTS cell applies the same 3×3 max- and avg-pooling to a node
once for every later node it feeds, and every parametric candidate starts with its own ReLU of the same input. The
pruning keeps all of them (they hold no trainable variables, so they are never GeZIGs), and they cost time though
they count no MACs. Sharing one result among identical calls changes no value: the merged operations are pure
functions of identical arguments. Merging is skipped in graphs that modify tensors in place, where two equal calls
may see different data or one result may be overwritten under another consumer.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from otov3.subnet.leaves import public_config

# Stateless, deterministic torch.nn leaves: same arguments and configuration, same output (train or eval).
_PURE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.Mish, nn.Softplus, nn.Softmax, nn.LogSoftmax,
    nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.PixelShuffle,
)
_PURE_FUNCTIONS: frozenset[Any] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.getitem,
    torch.add, torch.sub, torch.mul, torch.cat, torch.flatten, torch.relu, torch.sigmoid, torch.tanh,
    torch.mean, torch.sum, torch.zeros,
    F.relu, F.relu6, F.gelu, F.silu, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
    F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.pad,
})
_PURE_METHODS: frozenset[str] = frozenset({
    "size", "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "mean",
    "sum", "relu", "sigmoid", "new_zeros",
})
_INPLACE_OPERATORS = frozenset({operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv})


def _is_inplace(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if node.kwargs.get("inplace") is True or node.kwargs.get("out") is not None:
        return True
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_OPERATORS or (name.endswith("_") and not name.endswith("__"))
    return False


def _freeze(value: Any) -> Hashable:
    """A hashable key for an fx argument; raises TypeError for anything whose equality it cannot vouch for."""
    if isinstance(value, torch.fx.Node):
        return ("node", value.name)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, slice):
        return ("slice", _freeze(value.start), _freeze(value.stop), _freeze(value.step))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.memory_format)):
        return (type(value).__name__, repr(value))
    raise TypeError(f"no key for {type(value).__name__}")


def _module_config(module: nn.Module) -> Hashable | None:
    """Type and public attributes (kernel, stride, padding, ceil_mode, count_include_pad, ...), or None if stateful."""
    if type(module) not in _PURE_MODULES:
        return None
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    try:
        return (type(module), _freeze(public_config(module)))
    except TypeError:
        return None


def _key(node: torch.fx.Node, gm: torch.fx.GraphModule) -> Hashable | None:
    if node.op == "call_module":
        what = _module_config(gm.get_submodule(node.target))
    elif node.op == "call_function":
        what = node.target if node.target in _PURE_FUNCTIONS else None
    elif node.op == "call_method":
        what = node.target if node.target in _PURE_METHODS else None
    else:
        what = None
    if what is None:
        return None
    try:
        return (node.op, what, _freeze(node.args), _freeze(node.kwargs))
    except TypeError:
        return None


def merge_duplicate_ops(gm: torch.fx.GraphModule) -> int:
    """Let every pure operation with the same configuration and inputs as an earlier one reuse that result.

    Edits `gm` in place (graph and submodules) and returns how many calls were merged away; 0 when the graph
    modifies any tensor in place.
    """
    graph = gm.graph
    if any(_is_inplace(n, gm) for n in graph.nodes):
        return 0
    first: dict[Hashable, torch.fx.Node] = {}
    merged = 0
    for node in list(graph.nodes):  # topological: a node's inputs are already canonical when it is keyed
        key = _key(node, gm)
        if key is None:
            continue
        earlier = first.setdefault(key, node)
        if earlier is not node:
            node.replace_all_uses_with(earlier)
            graph.erase_node(node)
            merged += 1
    if merged:
        gm.delete_all_unused_submodules()
        graph.lint()
        gm.recompile()
    return merged
