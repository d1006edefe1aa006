"""Pruning-mode entries for aten ops, what non-strict `torch.export` records (spec §4, §2 "Capture backends").

Parameters reach these ops as `get_attr` operands, so the tensors to cut are their attribute paths. Importing this
module fills `otov3.ops.channel_ops.ATEN_TABLE`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otov3.graph.zig_ops import ChannelKind, ChannelOp, opaque
from otov3.ops.channel_ops import (
    _EW,
    _FUNCTION_TABLE,
    _RESHAPE,
    ATEN_TABLE,
    _binary,
    _conv,
    _Ctx,
    _local_dim,
    _norm,
    _permute,
    _reduce,
    _rows,
    _slice,
    _spatial,
    _split,
    _tensor_or_attr,
    _two_data,
)

K = ChannelKind
aten = torch.ops.aten


def _aten_conv(c: _Ctx) -> ChannelOp:
    target = c.node.target
    if target is aten.convolution.default:
        groups, transposed = c.arg(8, "groups", 1), bool(c.arg(6, "transposed", False))
    else:
        transposed = target in (aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                aten.conv_transpose3d.input)
        groups = c.arg(6, "groups", 1)
    return _conv(c, _tensor_or_attr(c, 1, "weight"), _tensor_or_attr(c, 2, "bias"), groups or 1, transposed)


ATEN_TABLE.update({
    **{op: _aten_conv for op in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.conv1d.padding,
                                 aten.conv2d.padding, aten.conv3d.padding, aten.convolution.default,
                                 aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                 aten.conv_transpose3d.input)},
    aten.linear.default: _FUNCTION_TABLE[F.linear],
    aten.addmm.default: lambda c: ChannelOp(K.STEM, out_rows=_rows((_tensor_or_attr(c, 2, "mat2"), 1),
                                                                   (_tensor_or_attr(c, 0, "self"), 0)),
                                            in_cols=_rows((_tensor_or_attr(c, 2, "mat2"), 0)), axis=-1, in_axis=-1)
    if _tensor_or_attr(c, 2, "mat2") else opaque("multiplies by a computed matrix"),
    **{op: _two_data for op in (aten.mm.default, aten.matmul.default, aten.bmm.default)},
    aten.embedding.default: lambda c: ChannelOp(K.STEM, out_rows=_rows((_tensor_or_attr(c, 0, "weight"), 1)),
                                                axis=-1),
    **{op: lambda c: _norm(c, _tensor_or_attr(c, 1, "weight"), _tensor_or_attr(c, 2, "bias"),
                           _tensor_or_attr(c, 3, "running_mean"), _tensor_or_attr(c, 4, "running_var"))
       for op in (aten.batch_norm.default, aten.instance_norm.default)},
    aten.group_norm.default: lambda c: _norm(c, _tensor_or_attr(c, 2, "weight"), _tensor_or_attr(c, 3, "bias"),
                                             None, None, block=c.vertex.in_shapes[0][1] // c.arg(1, "num_groups"),
                                             rewrite="num_groups"),
    aten.layer_norm.default: _FUNCTION_TABLE[F.layer_norm],
    **{op: _binary for op in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add.Scalar,
                              aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar)},
    **{op: _EW for op in (aten.relu.default, aten.relu6.default, aten.gelu.default, aten.silu.default,
                          aten.mish.default, aten.elu.default, aten.leaky_relu.default, aten.hardswish.default,
                          aten.hardtanh.default, aten.tanh.default, aten.neg.default, aten.sigmoid.default,
                          aten.hardsigmoid.default, aten.softplus.default, aten.exp.default, aten.abs.default,
                          aten.clone.default, aten.contiguous.default, aten._to_copy.default, aten.alias.default,
                          aten.detach.default, aten.to.dtype, aten.dropout.default, aten.type_as.default,
                          aten.pow.Tensor_Scalar, aten.sqrt.default, aten.square.default, aten.sin.default,
                          aten.cos.default, aten.erf.default, aten.log.default, aten.reciprocal.default,
                          aten.rsqrt.default, aten.sign.default, aten.clamp.default, aten.clamp_min.default,
                          aten.clamp_max.default, aten.where.self, aten.masked_fill.Scalar, aten.elu.default,
                          aten.celu.default, aten.selu.default, aten.log_sigmoid_forward.default)},
    **{op: lambda c: _spatial(c, 2) for op in (aten.max_pool2d.default, aten.avg_pool2d.default,
                                               aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)},
    **{op: lambda c: _spatial(c) for op in (aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec)},
    aten.constant_pad_nd.default: lambda c: _spatial(c, len(c.arg(1, "pad")) // 2),
    **{op: _local_dim for op in (aten.softmax.int, aten._softmax.default, aten.log_softmax.int)},
    **{op: _RESHAPE for op in (aten.view.default, aten.reshape.default, aten._unsafe_view.default)},
    **{op: lambda c: ChannelOp(K.RESHAPE) for op in (aten.flatten.using_ints, aten.unflatten.int,
                                                     aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
                                                     aten.unsqueeze.default)},
    aten.expand.default: lambda c: ChannelOp(K.ELEMENTWISE, rewrite="sizes"),
    **{op: _permute for op in (aten.permute.default, aten.transpose.int, aten.t.default)},
    **{op: _reduce for op in (aten.mean.dim, aten.sum.dim_IntList, aten.amax.default)},
    aten.select.int: lambda c: ChannelOp(K.REDUCE, dims=(c.arg(1, "dim"),)),
    aten.slice.Tensor: _slice,
    **{op: lambda c: ChannelOp(K.CAT, dims=(c.arg(1, "dim", 0),)) for op in (aten.cat.default,
                                                                              aten.concat.default)},
    **{op: _split for op in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
                             aten.unbind.int, aten.tensor_split.sections, aten.unsafe_split.Tensor)},
    aten.scaled_dot_product_attention.default: lambda c: ChannelOp(K.ATTENTION),
})
