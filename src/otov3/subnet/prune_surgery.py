"""Carry out a `ChannelPlan` on a deep copy of the captured GraphModule (spec §4.4): fewer channels, same names."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx
from torch import nn

from otov3.capture.fx_capture import Captured
from otov3.errors import ConstructionError
from otov3.graph.zig_ops import ChannelOp
from otov3.subnet.prune_plan import ChannelPlan
from otov3.subnet.slicing import replace_tensor
from otov3.subnet.surgery import _delete_unused_tensors, _mutates

aten = torch.ops.aten
_GROUPS_AT = {aten.convolution.default: 8}  # other convolutions (aten and F.conv*) hold groups at 6


def _tensor(gm: torch.fx.GraphModule, path: str) -> torch.Tensor:
    owner_path, _, name = path.rpartition(".")
    try:
        owner = gm.get_submodule(owner_path) if owner_path else gm
        value = getattr(owner, name)
    except AttributeError as err:
        raise ConstructionError(f"The sub-network has no tensor '{path}' to cut: {err}") from err
    if not isinstance(value, torch.Tensor):
        raise ConstructionError(f"'{path}' is not a tensor; otov3 cannot cut its channels")
    return value


def _fix_module(module: nn.Module, op: ChannelOp, width: int | None) -> None:
    """Bring a cut module's size attributes in line with its tensors (they are read by forward and by repr)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
        elif op.rewrite == "groups":
            module.in_channels = module.out_channels = module.groups = w.shape[0]
        else:
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        if width is not None:
            module.num_features = width
    elif isinstance(module, nn.GroupNorm):
        if width is not None:
            module.num_groups, module.num_channels = width // op.block, width
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()


def _rewrite_args(node: torch.fx.Node, op: ChannelOp, axis: int, old: int, new: int) -> None:
    """Channel counts written into the call: view/reshape/expand sizes, a depthwise conv's groups, GroupNorm's
    group count."""
    args = list(node.args)
    if op.rewrite == "groups":
        at = _GROUPS_AT.get(node.target, 6)
        if len(args) > at:
            args[at] = new
        elif "groups" in node.kwargs:
            node.kwargs = {**node.kwargs, "groups": new}
    elif op.rewrite == "num_groups":
        args[1] = new // op.block
    elif op.rewrite == "sizes":
        sizes = args[1:] if len(args) > 2 or not isinstance(args[1], list | tuple) else list(args[1])
        if 0 <= axis < len(sizes) and (isinstance(sizes[axis], torch.fx.Node) or sizes[axis] == old):
            sizes[axis] = new  # a size read from a tensor (x.shape[2]) was the old width too; the new one is static
        elif 0 <= axis < len(sizes) and isinstance(sizes[axis], int) and sizes[axis] != -1:
            raise ConstructionError(f"'{node.name}' reshapes to {sizes[axis]} channels where {old} were expected")
        args = [args[0], *sizes] if len(args) > 2 or not isinstance(args[1], list | tuple) else [
            args[0], type(args[1])(sizes), *args[2:]]
    node.args = tuple(args)


def apply_channel_plan(captured: Captured, ops: dict[str, ChannelOp], plan: ChannelPlan) -> torch.fx.GraphModule:
    """A new GraphModule with the planned rows and columns cut out; the user's model is not touched."""
    with warnings.catch_warnings():  # torch deprecates copying export's LeafSpec input/output specs; harmless
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        gm = copy.deepcopy(captured.gm)
    for (path, dim), keep in plan.cuts.items():
        tensor = _tensor(gm, path)
        index = torch.tensor(keep, dtype=torch.long, device=tensor.device)
        replace_tensor(gm, path, tensor.detach().index_select(dim, index).clone())
    for node in gm.graph.nodes:
        op = ops.get(node.name)
        if op is None:
            continue
        axis, old, new = plan.widths.get(node.name, (None, None, None))
        if node.op == "call_module":
            _fix_module(gm.get_submodule(node.target), op, new)
        elif new is not None and op.rewrite is not None:
            _rewrite_args(node, op, axis, old, new)
    # Dead code of the super-network goes, as in erasing mode (and as the export backend already did).
    gm.graph.eliminate_dead_code(is_impure_node=_mutates if captured.backend == "export" else None)
    gm.delete_all_unused_submodules()
    _delete_unused_tensors(gm)  # e.g. num_batches_tracked, which the eval-mode export graph never reads
    gm.graph.lint()
    gm.recompile()
    return gm
