"""Pruning-mode entries: how each op treats channels (`ChannelOp`, spec §4), for fx and torch.export graphs.

Keys are exact, like the erasing-mode table: module classes (by `isinstance`, in order), function objects, method
names, and aten overloads (`otov3.ops.channel_aten`). An op without an entry is opaque, with a reason: channels
are never followed through an op otov3 does not know (a channel shuffle, a split, a reshape that mixes them).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from otov3.graph.types import TraceGraph, Vertex
from otov3.graph.zig_ops import ChannelKind, ChannelOp, opaque
from otov3.ops.registry import qualified_name

K = ChannelKind
aten = torch.ops.aten


@dataclass(frozen=True)
class _Ctx:
    node: torch.fx.Node
    module: nn.Module | None
    vertex: Vertex
    gm: torch.fx.GraphModule
    data: frozenset[str]
    values: dict[str, Any]

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        return self.node.args[i] if len(self.node.args) > i else self.node.kwargs.get(name, default)

    def own(self, local: str) -> str | None:
        """Path of the module's own tensor `local` (None when it has none)."""
        return f"{self.node.target}.{local}" if getattr(self.module, local, None) is not None else None

    def rank(self) -> int:
        shape = self.vertex.in_shapes[0] if self.vertex.in_shapes else None
        return len(shape) if shape is not None else 0

    def tensor(self, operand: Any) -> str | None:
        """The attribute path of an operand read straight from the module (a `get_attr` node)."""
        return operand.target if isinstance(operand, torch.fx.Node) and operand.op == "get_attr" else None

    def side_shapes(self) -> tuple[tuple[int, ...], ...]:
        found: list[torch.fx.Node] = []
        torch.fx.node.map_arg((self.node.args, self.node.kwargs), found.append)
        shapes = []
        for n in found:
            if n.name in self.data:
                continue
            value = _attr(self.gm, str(n.target)) if n.op == "get_attr" else self.values.get(n.name)
            if isinstance(value, torch.Tensor):
                shapes.append(tuple(value.shape))
        return tuple(shapes)


def _attr(gm: torch.fx.GraphModule, path: str) -> Any:
    owner: Any = gm
    for part in path.split("."):
        owner = getattr(owner, part, None)
    return owner


def _rows(*pairs: tuple[str | None, int]) -> tuple[tuple[str, int], ...]:
    return tuple((p, d) for p, d in pairs if p is not None)


# --- builders shared by modules, functions and aten ops ---------------------------------------------------


def _conv(ctx: _Ctx, weight: str | None, bias: str | None, groups: int, transposed: bool) -> ChannelOp:
    if weight is None:
        return opaque("its weight is computed, not a parameter")
    w = ctx.module.weight if ctx.module is not None else _attr(ctx.gm, weight)
    channels_in = w.shape[0] if transposed else w.shape[1] * groups
    channels_out = w.shape[1] * groups if transposed else w.shape[0]
    if groups == 1:
        return ChannelOp(K.STEM, out_rows=_rows((weight, 1 if transposed else 0), (bias, 0)),
                         in_cols=((weight, 0 if transposed else 1),))
    if groups == channels_in == channels_out and not transposed:
        return ChannelOp(K.PER_CHANNEL, per_channel=_rows((weight, 0), (bias, 0)), rewrite="groups")
    return ChannelOp(K.STEM, out_rows=_rows((weight, 0), (bias, 0)),
                     reason=f"a grouped convolution (groups={groups}) is kept whole")


def _norm(ctx: _Ctx, weight, bias, mean, var, *, block: int = 1, rewrite: str | None = None) -> ChannelOp:
    per_channel = _rows((weight, 0), (bias, 0), (mean, 0), (var, 0))
    resets = (mean,) if mean is not None and weight is None else ()
    return ChannelOp(K.PER_CHANNEL, per_channel=per_channel, resets=resets, block=block, rewrite=rewrite)


def _spatial(ctx: _Ctx, k: int | None = None) -> ChannelOp:
    rank = ctx.rank()
    k = rank - 2 if k is None else k
    return ChannelOp(K.LOCAL, dims=tuple(range(-k, 0)))


def _binary(ctx: _Ctx) -> ChannelOp:
    """Add, sub, mul, div: element-wise with broadcasting; `x * γ` with γ a per-channel parameter is per-channel."""
    names = [ctx.tensor(a) for a in ctx.node.args[:2]]
    target = ctx.node.target
    multiplies = target in (operator.mul, operator.imul, torch.mul, "mul", "mul_", aten.mul.Tensor)
    params = [n for n in names if n is not None]
    out = ctx.vertex.out_shape
    if multiplies and len(params) == 1 and len(ctx.vertex.inputs) == 1 and out is not None:
        shape = ctx.side_shapes()[0] if ctx.side_shapes() else ()
        big = [i for i, s in enumerate(shape) if s > 1]
        if len(big) == 1:
            return ChannelOp(K.PER_CHANNEL, per_channel=((params[0], big[0]),), axis=big[0] - len(shape))
    return ChannelOp(K.ELEMENTWISE, side_shapes=ctx.side_shapes())


def _dims(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _reduce(ctx: _Ctx, dim_at: int = 1, keep_at: int = 2) -> ChannelOp:
    dims = _dims(ctx.arg(dim_at, "dim"))
    if dims is None:
        if ctx.arg(dim_at, "dim") is not None:
            return opaque("reduces over dimensions otov3 cannot read")
        dims = tuple(range(ctx.rank()))
    return ChannelOp(K.REDUCE, dims=dims, keepdim=bool(ctx.arg(keep_at, "keepdim", False)))


def _permute(ctx: _Ctx) -> ChannelOp:
    rank, target = ctx.rank(), ctx.node.target
    if target in (torch.permute, "permute", aten.permute.default):
        rest = ctx.node.args[1:]
        perm = _dims(rest[0] if len(rest) == 1 else tuple(rest)) or _dims(ctx.node.kwargs.get("dims"))
    elif target in ("t", aten.t.default):
        perm = (1, 0) if rank == 2 else None
    else:  # transpose / swapaxes (a, b)
        a, b = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
        if not isinstance(a, int) or not isinstance(b, int):
            return opaque("transposes dimensions otov3 cannot read")
        perm_list = list(range(rank))
        perm_list[a % rank], perm_list[b % rank] = perm_list[b % rank], perm_list[a % rank]
        perm = tuple(perm_list)
    return ChannelOp(K.PERMUTE, dims=tuple(d % rank for d in perm)) if perm else opaque("permutes dimensions")


def _getitem(ctx: _Ctx) -> ChannelOp:
    index = ctx.node.args[1]
    index = index if isinstance(index, tuple) else (index,)
    removed = []
    for k, item in enumerate(index):
        if isinstance(item, int):
            removed.append(k)
        elif not (isinstance(item, slice) and item == slice(None)):
            return opaque("indexes the tensor in a way otov3 does not follow")
    return ChannelOp(K.REDUCE, dims=tuple(removed))


def _slice(ctx: _Ctx) -> ChannelOp:
    dim, start, end = ctx.arg(1, "dim", 0), ctx.arg(2, "start"), ctx.arg(3, "end")
    whole = start in (None, 0) and (end is None or end >= 2**62)
    return ChannelOp(K.ELEMENTWISE) if whole else ChannelOp(K.LOCAL, dims=(dim - ctx.rank() if dim >= 0 else dim,))


def _local_dim(ctx: _Ctx, at: int = 1) -> ChannelOp:
    dim = ctx.arg(at, "dim")
    if not isinstance(dim, int):
        return opaque("works along a dimension otov3 cannot read")
    return ChannelOp(K.LOCAL, dims=(dim - ctx.rank() if dim >= 0 else dim,))


def _split(ctx: _Ctx) -> ChannelOp:
    return opaque("splits the tensor (chunk/split), which pruning mode does not follow")


def _tensor_or_attr(ctx: _Ctx, i: int, name: str) -> str | None:
    return ctx.tensor(ctx.arg(i, name))


def _two_data(ctx: _Ctx) -> ChannelOp:
    """A product: two activations (MATMUL), or `x @ W` with W a parameter (a stem without bias)."""
    if len(ctx.vertex.inputs) >= 2:
        return ChannelOp(K.MATMUL)
    weight = next((ctx.tensor(a) for a in ctx.node.args[:2] if ctx.tensor(a)), None)
    if weight is None or ctx.tensor(ctx.node.args[0]) is not None:
        return opaque("multiplies by a tensor otov3 cannot cut")
    return ChannelOp(K.STEM, out_rows=((weight, 1),), in_cols=((weight, 0),), axis=-1, in_axis=-1)


# --- tables ----------------------------------------------------------------------------------------------

Builder = Callable[[_Ctx], ChannelOp]
_EW = lambda ctx: ChannelOp(K.ELEMENTWISE, side_shapes=ctx.side_shapes())  # noqa: E731
_RESHAPE = lambda ctx: ChannelOp(K.RESHAPE, rewrite="sizes")  # noqa: E731

_MODULE_TABLE: list[tuple[type | tuple[type, ...], Builder]] = [
    (nn.modules.conv._ConvTransposeNd, lambda c: _conv(c, c.own("weight"), c.own("bias"), c.module.groups, True)),
    (nn.modules.conv._ConvNd, lambda c: _conv(c, c.own("weight"), c.own("bias"), c.module.groups, False)),
    (nn.Linear, lambda c: ChannelOp(K.STEM, out_rows=_rows((c.own("weight"), 0), (c.own("bias"), 0)),
                                    in_cols=((c.own("weight"), 1),), axis=-1, in_axis=-1)),
    (nn.Embedding, lambda c: ChannelOp(K.STEM, out_rows=((c.own("weight"), 1),), axis=-1)),
    ((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm),
     lambda c: _norm(c, c.own("weight"), c.own("bias"), c.own("running_mean"), c.own("running_var"))),
    (nn.GroupNorm, lambda c: _norm(c, c.own("weight"), c.own("bias"), None, None,
                                   block=c.module.num_channels // c.module.num_groups, rewrite="num_groups")),
    (nn.LayerNorm, lambda c: ChannelOp(K.LOCAL, dims=tuple(range(-len(c.module.normalized_shape), 0)))),
    (nn.PReLU, lambda c: _EW(c) if c.module.num_parameters == 1 else ChannelOp(K.PER_CHANNEL,
                                                                             per_channel=((c.own("weight"), 0),))),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin),
     lambda c: ChannelOp(K.LOCAL, dims=(c.module.dim - c.rank() if c.module.dim >= 0 else c.module.dim,))
     if isinstance(c.module.dim, int) else opaque("softmax over an unspecified dimension")),
    ((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d), lambda c: _spatial(c, 1)),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d), lambda c: _spatial(c, 2)),
    ((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d), lambda c: _spatial(c, 3)),
    ((nn.Upsample, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
      nn.modules.padding._ConstantPadNd), lambda c: _spatial(c, len(getattr(c.module, "padding", ())) // 2 or None)),
    ((nn.Flatten, nn.Unflatten), lambda c: ChannelOp(K.RESHAPE)),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Tanh, nn.Hardswish,
      nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity, nn.Sigmoid,
      nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, nn.modules.dropout._DropoutNd), _EW),
    (nn.MultiheadAttention, lambda c: opaque("nn.MultiheadAttention packs q/k/v in one in-projection; it is kept "
                                             "whole (write q/k/v/out as nn.Linear to prune heads)")),
]

_ELEMENTWISE_FUNCTIONS = (
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.elu, F.celu, F.selu, torch.tanh, F.tanh,
    F.hardswish, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.neg,
    operator.neg, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.exp, torch.cos,
    torch.abs, torch.square, torch.pow, torch.sqrt, torch.erf, torch.sin,
)
_FUNCTION_TABLE: dict[Any, Builder] = {
    **{f: _EW for f in _ELEMENTWISE_FUNCTIONS},
    **{f: _binary for f in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
                            operator.mul, operator.imul, torch.mul, operator.truediv, torch.div)},
    **{f: _two_data for f in (torch.matmul, operator.matmul, torch.bmm, torch.mm)},
    F.linear: lambda c: ChannelOp(K.STEM, out_rows=_rows((_tensor_or_attr(c, 1, "weight"), 0),
                                                         (_tensor_or_attr(c, 2, "bias"), 0)),
                                  in_cols=_rows((_tensor_or_attr(c, 1, "weight"), 1)), axis=-1, in_axis=-1)
    if _tensor_or_attr(c, 1, "weight") else opaque("its weight is computed"),
    F.conv1d: lambda c: _conv(c, _tensor_or_attr(c, 1, "weight"), _tensor_or_attr(c, 2, "bias"),
                              c.arg(6, "groups", 1), False),
    F.conv2d: lambda c: _conv(c, _tensor_or_attr(c, 1, "weight"), _tensor_or_attr(c, 2, "bias"),
                              c.arg(6, "groups", 1), False),
    F.embedding: lambda c: ChannelOp(K.STEM, out_rows=_rows((_tensor_or_attr(c, 1, "weight"), 1)), axis=-1),
    F.layer_norm: lambda c: ChannelOp(K.LOCAL, dims=tuple(range(-len(c.arg(1, "normalized_shape")), 0))),
    F.group_norm: lambda c: _norm(c, _tensor_or_attr(c, 2, "weight"), _tensor_or_attr(c, 3, "bias"), None, None,
                                  block=c.vertex.in_shapes[0][1] // c.arg(1, "num_groups"), rewrite="num_groups"),
    F.batch_norm: lambda c: _norm(c, _tensor_or_attr(c, 3, "weight"), _tensor_or_attr(c, 4, "bias"),
                                  _tensor_or_attr(c, 1, "running_mean"), _tensor_or_attr(c, 2, "running_var")),
    **{f: lambda c: _spatial(c, 1) for f in (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d)},
    **{f: lambda c: _spatial(c, 2) for f in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                             F.adaptive_max_pool2d)},
    F.interpolate: lambda c: _spatial(c),
    F.pad: lambda c: _spatial(c, len(c.arg(1, "pad")) // 2),
    **{f: lambda c: _local_dim(c) for f in (F.softmax, torch.softmax, F.log_softmax)},
    torch.reshape: _RESHAPE,
    **{f: lambda c: ChannelOp(K.RESHAPE) for f in (torch.flatten, torch.squeeze, torch.unsqueeze)},
    **{f: _permute for f in (torch.permute, torch.transpose, torch.swapaxes)},
    **{f: _reduce for f in (torch.mean, torch.sum, torch.amax)},
    **{f: lambda c: ChannelOp(K.CAT, dims=(c.arg(1, "dim", 0),)) for f in (torch.cat, torch.concat)},
    **{f: _split for f in (torch.chunk, torch.split, torch.unbind, torch.tensor_split)},
    operator.getitem: _getitem,
    F.scaled_dot_product_attention: lambda c: ChannelOp(K.ATTENTION),
}
_METHOD_TABLE: dict[str, Builder] = {
    **{m: _EW for m in ("relu", "sigmoid", "tanh", "neg", "exp", "cos", "abs", "contiguous", "clone", "float",
                        "double", "half", "detach", "to", "type_as", "pow", "sqrt", "square")},
    **{m: _binary for m in ("add", "add_", "sub", "mul", "mul_", "div", "div_")},
    **{m: _RESHAPE for m in ("view", "reshape")},
    **{m: lambda c: ChannelOp(K.RESHAPE) for m in ("flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")},
    **{m: lambda c: ChannelOp(K.ELEMENTWISE, rewrite="sizes") for m in ("expand", "expand_as")},
    **{m: _permute for m in ("permute", "transpose", "swapaxes", "t")},
    **{m: _reduce for m in ("mean", "sum", "amax")},
    **{m: _local_dim for m in ("softmax", "log_softmax")},
    **{m: _split for m in ("chunk", "split", "unbind", "tensor_split")},
    **{m: _two_data for m in ("matmul", "bmm")},
}


_PER_SAMPLE_MASKS = ("torchvision.ops.stochastic_depth.stochastic_depth", "timm.layers.drop.drop_path",
                     "timm.models.layers.drop.drop_path")


ATEN_TABLE: dict[Any, Builder] = {}  # filled by otov3.ops.channel_aten


def _describe(ctx: _Ctx) -> ChannelOp:
    node = ctx.node
    if ctx.module is not None:
        for cls, build in _MODULE_TABLE:
            if isinstance(ctx.module, cls):
                return build(ctx)
        return opaque(f"module {type(ctx.module).__name__} is not in otov3's pruning-mode table")
    if node.op == "call_method":
        build = _METHOD_TABLE.get(str(node.target))
    else:
        try:
            build = ATEN_TABLE.get(node.target) or _FUNCTION_TABLE.get(node.target)
        except TypeError:
            build = None
        if build is None and qualified_name(node.target) in _PER_SAMPLE_MASKS:
            build = _EW  # stochastic depth: a per-sample mask, element-wise
    if build is None:
        return opaque(ctx.vertex.traits.reason or f"'{ctx.vertex.op}' is not in otov3's pruning-mode table")
    return build(ctx)


def channel_ops(gm: torch.fx.GraphModule, trace: TraceGraph, values: dict[str, Any]) -> dict[str, ChannelOp]:
    """A `ChannelOp` for every trace vertex of `gm` (an exception while describing one makes it opaque)."""
    from otov3.ops.channel_aten import ATEN_TABLE  # noqa: F401  (fills the aten entries on first use)

    nodes = {n.name: n for n in gm.graph.nodes}
    data = frozenset([*trace.vertices, *(n.name for n in gm.graph.nodes if n.op == "placeholder")])
    out = {}
    for name, vertex in trace.vertices.items():
        node = nodes[name]
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        try:
            out[name] = _describe(_Ctx(node, module, vertex, gm, data, values))
        except Exception as err:  # an unexpected argument form: stop channels here rather than guess
            out[name] = opaque(f"otov3 could not read its arguments ({type(err).__name__}: {err})")
    return out
