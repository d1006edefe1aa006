"""Cut channels out of a module, or out of an aten op's tensors, in place (private copies owned by the sub-network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from otov3.errors import ConstructionError


def _take(t: torch.Tensor | None, index: torch.Tensor, dim: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().index_select(dim, index).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if old is None or value is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def slice_output_channels(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only channels `keep` of a per-channel module (BN, InstanceNorm, per-channel GroupNorm)."""
    index = torch.tensor(list(keep), dtype=torch.long)
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _set_param(module, name, _take(getattr(module, name, None), index, 0))
        module.num_features = len(keep)
        return
    if isinstance(module, nn.GroupNorm):
        block = module.num_channels // module.num_groups
        if len(keep) % block or any(keep[i] % block or keep[i + block - 1] != keep[i] + block - 1
                                    for i in range(0, len(keep), block)):
            raise ConstructionError(f"GroupNorm keeps channels {list(keep)}, which are not whole groups of {block}")
        for name in ("weight", "bias"):
            _set_param(module, name, _take(getattr(module, name, None), index, 0))
        module.num_channels, module.num_groups = len(keep), len(keep) // block
        return
    if not any(True for _ in module.parameters(recurse=False)) and not any(True for _ in module.buffers(False)):
        return  # element-wise, pooling, resizing: nothing to cut
    raise ConstructionError(f"otov3 does not know how to cut channels of {type(module).__name__}")


def slice_input_channels(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only input channels/features `keep` of a stem (Conv with groups == 1, ConvTranspose, Linear)."""
    index = torch.tensor(list(keep), dtype=torch.long)
    if isinstance(module, nn.Linear):
        _set_param(module, "weight", _take(module.weight, index, 1))
        module.in_features = len(keep)
        return
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups == 1:
        _set_param(module, "weight", _take(module.weight, index, 0))
        module.in_channels = len(keep)
        return
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
        _set_param(module, "weight", _take(module.weight, index, 1))
        module.in_channels = len(keep)
        return
    raise ConstructionError(f"otov3 does not know how to cut input channels of {type(module).__name__}")


# --- aten ops (torch.export graphs): their tensors are `get_attr` operands of the sub-network's own copy ------

_aten = torch.ops.aten
_BATCH_NORMS = (_aten.batch_norm.default, _aten.native_batch_norm.default,
                _aten._native_batch_norm_legit_no_training.default, _aten._native_batch_norm_legit.default,
                _aten.instance_norm.default)
# per-channel operands (position, keyword) cut along dim 0 when channels are removed from the op's output
_PER_CHANNEL: dict[object, tuple[tuple[int, str], ...]] = {
    **{op: ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")) for op in _BATCH_NORMS},
    _aten.group_norm.default: ((2, "weight"), (3, "bias")),
}
_CONVS = (_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default, _aten.conv1d.padding,
          _aten.conv2d.padding, _aten.conv3d.padding)
_CONV_TRANSPOSES = (_aten.conv_transpose1d.default, _aten.conv_transpose2d.input, _aten.conv_transpose3d.input)
# the operand holding input channels (position, keyword, dim) of a stem
_INPUT_CHANNELS: dict[object, tuple[int, str, int]] = {
    **{op: (1, "weight", 1) for op in (*_CONVS, _aten.linear.default)},
    **{op: (1, "weight", 0) for op in _CONV_TRANSPOSES},
    _aten.addmm.default: (2, "mat2", 0),
}


def _operand(node: torch.fx.Node, index: int, name: str):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


def _channels(node: torch.fx.Node) -> int | None:
    """Channel count of a per-channel op's input (dim 1), from the exported example metadata."""
    source = node.args[0] if node.args else None
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    return int(value.shape[1]) if isinstance(value, torch.Tensor) and value.dim() > 1 else None


def _replace_tensor(gm: torch.fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Store `value` at the dotted path `target` of `gm`, keeping its kind (parameter, buffer, attribute)."""
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(value, requires_grad=old.requires_grad))
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def replace_tensor(gm: torch.fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Store `value` at the dotted path `target` of `gm` (a private copy), keeping its kind (pruning mode cuts)."""
    _replace_tensor(gm, target, value)


def _cut_operand(gm: torch.fx.GraphModule, node: torch.fx.Node, operand, dim: int, keep: Sequence[int],
                 done: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    if operand is None:
        return
    if not (isinstance(operand, torch.fx.Node) and operand.op == "get_attr"):
        raise ConstructionError(
            f"'{node.name}' ({node.target}) computes the tensor whose channels must be cut ('{operand}'); otov3 "
            "can only cut tensors the op reads directly."
        )
    previous = done.get(operand.target)
    if previous is not None:
        if previous != (dim, tuple(keep)):
            raise ConstructionError(
                f"'{operand.target}' is read at several places that need different channels cut; give each use "
                "its own parameter."
            )
        return
    done[operand.target] = (dim, tuple(keep))
    owner_path, _, name = operand.target.rpartition(".")
    tensor = getattr(gm.get_submodule(owner_path) if owner_path else gm, name)
    _replace_tensor(gm, operand.target, _take(tensor, torch.tensor(list(keep), dtype=torch.long), dim))


def slice_node_channels(gm: torch.fx.GraphModule, node: torch.fx.Node, keep: Sequence[int], how: str,
                        done: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    """Cut channels of an aten op whose tensors are `get_attr` operands of `gm` (a private copy).

    `how="out"`: keep output channels `keep` of a per-channel op (batch/instance norm: weight, bias, running
    statistics; group norm's weight and bias, its group count shrinking by whole groups). `how="in"`: keep input
    channels `keep` of a stem (conv weight dim 1, transposed conv weight dim 0, linear weight dim 1, addmm's mat2
    dim 0). `done` remembers cut tensors, so that one tensor read by several ops is cut once, consistently.

    Raises:
        ConstructionError: the op is not known to cut, or reads the tensor through other ops.
    """
    target = node.target
    if how == "in":
        if target not in _INPUT_CHANNELS:
            raise ConstructionError(f"otov3 does not know how to cut input channels of '{node.name}' ({target})")
        index, name, dim = _INPUT_CHANNELS[target]
        _cut_operand(gm, node, _operand(node, index, name), dim, keep, done)
        return
    if target in _PER_CHANNEL:
        if target is _aten.group_norm.default:
            groups, width = node.args[1], _channels(node)
            block = width // groups if width and groups else 1
            if len(keep) % block:
                raise ConstructionError(f"'{node.name}' (group_norm) would lose part of a group of {block} channels")
            node.args = (node.args[0], len(keep) // block, *node.args[2:])
        for index, name in _PER_CHANNEL[target]:
            _cut_operand(gm, node, _operand(node, index, name), 0, keep, done)
        return
    tensors = [a for a in node.all_input_nodes if a.op == "get_attr"]
    if tensors:
        raise ConstructionError(
            f"otov3 does not know how to cut channels of '{node.name}' ({target}), which reads "
            f"{', '.join(repr(t.target) for t in tensors)}"
        )
