"""Entries of the op-handler table (spec §2.2). Importing this module fills the table."""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from otov3.graph.types import ChannelRule, JointRule, OpTraits, VertexKind
from otov3.ops.registry import OpContext, register

A = VertexKind.ACCESSORY


def _prod(xs) -> int:
    return math.prod(xs) if xs else 1


def _shape_rule(ctx: OpContext) -> ChannelRule:
    """Channel rule of a shape-changing op from its traced shapes: keeps dim 1, flattens it, or neither."""
    src = ctx.in_shapes[0] if ctx.in_shapes else None
    out = ctx.out_shape
    if src is None or out is None or len(src) < 2 or len(out) < 2:
        return ChannelRule.BLOCK
    if out[:2] == src[:2]:
        return ChannelRule.PASS
    if len(out) == 2 and out[0] == src[0] and out[1] == _prod(src[1:]) and len(src) > 2:
        return ChannelRule.FLATTEN
    return ChannelRule.BLOCK


# --- stems -----------------------------------------------------------------------------------------------


def _conv_macs(ctx: OpContext) -> int:
    m = ctx.module
    if ctx.out_shape is None:
        return 0
    return _prod(ctx.out_shape[1:]) * (m.in_channels // m.groups) * _prod(m.kernel_size)


def _conv_transpose_macs(ctx: OpContext) -> int:
    m, src = ctx.module, ctx.in_shapes[0]
    if src is None:
        return 0
    return _prod(src[1:]) * (m.out_channels // m.groups) * _prod(m.kernel_size)


@register(modules=(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), macs=_conv_transpose_macs)
@register(modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d), macs=_conv_macs)
def _conv(ctx: OpContext) -> OpTraits:
    """Convolutions and transposed convolutions: same traits, only their MACs differ."""
    m = ctx.module
    return OpTraits(
        VertexKind.STEM,
        zeroing=True,
        zero_preserving=m.bias is None,
        channel=ChannelRule.CONSUME if m.groups == 1 else ChannelRule.BLOCK,
    )


def _linear_macs(ctx: OpContext) -> int:
    src = ctx.in_shapes[0]
    m = ctx.module
    lead = _prod(src[1:-1]) if src is not None and len(src) > 2 else 1
    return lead * m.in_features * m.out_features


@register(modules=(nn.Linear,), macs=_linear_macs)
def _linear(ctx: OpContext) -> OpTraits:
    src = ctx.in_shapes[0] if ctx.in_shapes else None
    two_d = src is not None and len(src) == 2
    return OpTraits(
        VertexKind.STEM,
        zeroing=True,
        zero_preserving=ctx.module.bias is None,
        channel=ChannelRule.CONSUME if two_d else ChannelRule.BLOCK,
    )


@register(modules=(nn.Embedding,))
def _embedding(ctx: OpContext) -> OpTraits:
    return OpTraits(VertexKind.STEM, zeroing=True)


# --- normalisation ---------------------------------------------------------------------------------------


@register(modules=(nn.modules.batchnorm._BatchNorm,))
def _batch_norm(ctx: OpContext) -> OpTraits:
    m = ctx.module
    if m.affine:
        per_channel = (ctx.qualify("weight"), ctx.qualify("bias"))
        return OpTraits(A, zeroing=True, channel=ChannelRule.PASS, per_channel_params=per_channel)
    # gamma/beta absent: eval output of a zero input is -mu/sigma, 0 once the running mean is reset (spec §6.2)
    return OpTraits(A, resettable=m.track_running_stats, zero_preserving=not m.track_running_stats,
                    channel=ChannelRule.PASS)


@register(modules=(nn.modules.instancenorm._InstanceNorm,))
def _instance_norm(ctx: OpContext) -> OpTraits:
    m = ctx.module
    if m.affine:
        per_channel = (ctx.qualify("weight"), ctx.qualify("bias"))
        return OpTraits(A, zeroing=True, channel=ChannelRule.PASS, per_channel_params=per_channel)
    return OpTraits(A, resettable=m.track_running_stats, zero_preserving=not m.track_running_stats,
                    channel=ChannelRule.PASS)


@register(modules=(nn.GroupNorm,))
def _group_norm(ctx: OpContext) -> OpTraits:
    """Channels pass in whole groups: a zero group normalises to zero and the other groups' statistics stay."""
    m = ctx.module
    per_channel = (ctx.qualify("weight"), ctx.qualify("bias")) if m.affine else ()
    return OpTraits(
        A,
        zeroing=m.affine,
        zero_preserving=not m.affine,
        channel=ChannelRule.PASS,
        per_channel_params=per_channel,
        channel_block=m.num_channels // m.num_groups,
    )


@register(modules=(nn.LayerNorm,))
def _layer_norm(ctx: OpContext) -> OpTraits:
    affine = ctx.module.elementwise_affine
    return OpTraits(A, zeroing=affine and ctx.module.bias is not None, zero_preserving=not affine)


# --- element-wise, pooling, resizing: zero-preserving, channels pass -------------------------------------

_ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Tanh,
    nn.Hardswish, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
_ZERO_PRESERVING_FUNCTIONS = (
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.elu, F.celu, F.selu, torch.tanh,
    F.tanh, F.hardswish, F.hardtanh, F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.interpolate, torch.nn.functional.upsample, torch.neg, operator.neg,
)
_ZERO_PRESERVING_METHODS = (
    "relu", "tanh", "neg", "contiguous", "clone", "float", "detach", "to", "type_as",
)


@register(modules=_ZERO_PRESERVING_MODULES, functions=_ZERO_PRESERVING_FUNCTIONS,
          methods=_ZERO_PRESERVING_METHODS)
def _elementwise(ctx: OpContext) -> OpTraits:
    # Per-channel ops: a shape check keeps e.g. PixelShuffle (which mixes channels) from passing intervals.
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx))


@register(modules=(nn.PReLU,))
def _prelu(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx) if ctx.module.num_parameters == 1
                    else ChannelRule.BLOCK)


@register(modules=(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d))
def _constant_pad(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=ctx.module.value == 0, channel=_shape_rule(ctx))


@register(functions=(F.pad,))
def _pad(ctx: OpContext) -> OpTraits:
    value = ctx.arg(3, "value", None) or 0
    mode = ctx.arg(2, "mode", "constant")
    return OpTraits(A, zero_preserving=(mode != "constant" or value == 0), channel=_shape_rule(ctx))


_NON_ZERO_PRESERVING_MODULES = (
    nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.LogSigmoid,
)
_NON_ZERO_PRESERVING_FUNCTIONS = (
    torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.softmax, F.log_softmax, torch.exp, torch.cos,
    F.logsigmoid, torch.softmax,
)


@register(modules=_NON_ZERO_PRESERVING_MODULES, functions=_NON_ZERO_PRESERVING_FUNCTIONS,
          methods=("sigmoid", "exp", "softmax", "log_softmax", "cos"))
def _non_zero_preserving(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=False, channel=_shape_rule(ctx))


# --- reshaping -------------------------------------------------------------------------------------------


@register(modules=(nn.Flatten, nn.Unflatten), functions=(torch.flatten, torch.reshape, torch.squeeze,
          torch.unsqueeze, torch.mean, torch.sum, torch.amax),
          methods=("flatten", "view", "reshape", "squeeze", "unsqueeze", "mean", "sum",
                   "amax", "view_as", "reshape_as", "expand", "expand_as"))
def _reshape(ctx: OpContext) -> OpTraits:
    # Row-major reshapes that keep dims 0 and 1 keep channels; flattening (N, C, ...) keeps them in blocks.
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx))


@register(functions=(torch.permute, torch.transpose, torch.swapaxes, torch.movedim),
          methods=("permute", "transpose", "swapaxes", "movedim"))
def _reorder(ctx: OpContext) -> OpTraits:
    # Shapes cannot tell whether dim 1 still holds the channels (a square transpose keeps every size), nor
    # whether an index reorders channels: never follow a channel interval through these.
    return OpTraits(A, zero_preserving=True, channel=ChannelRule.BLOCK)


@register(functions=(torch.chunk, torch.split, torch.unbind), methods=("chunk", "split", "unbind"))
def _split(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=True)


# --- joints and merges -----------------------------------------------------------------------------------


def _constant_operand_is_zero(ctx: OpContext) -> bool:
    consts = [a for a in ctx.node.args if not isinstance(a, torch.fx.Node)]
    return all(isinstance(c, int | float) and c == 0 for c in consts)


def _data_operands(ctx: OpContext) -> int:
    return len(ctx.in_shapes)


@register(functions=(operator.add, operator.iadd, torch.add), methods=("add", "add_"))
def _add(ctx: OpContext) -> OpTraits:
    alpha = ctx.node.kwargs.get("alpha", 1)
    if _data_operands(ctx) >= 2 and alpha != 1:
        return OpTraits(VertexKind.MERGE, reason="adds with a scale factor (alpha), so an operand is not droppable")
    if _data_operands(ctx) >= 2:
        return OpTraits(VertexKind.JOINT, joint=JointRule.ADD, zero_preserving=True)
    # Adding a constant or a parameter (positional embedding): 0 maps to it, zero-preserving only for literal 0.
    return OpTraits(A, zero_preserving=_constant_operand_is_zero(ctx), channel=ChannelRule.BLOCK)


@register(functions=(operator.sub, operator.isub, torch.sub), methods=("sub",))
def _sub(ctx: OpContext) -> OpTraits:
    if _data_operands(ctx) >= 2:
        return OpTraits(VertexKind.JOINT, joint=JointRule.SUB, zero_preserving=True)
    return OpTraits(A, zero_preserving=_constant_operand_is_zero(ctx), channel=ChannelRule.BLOCK)


@register(functions=(operator.mul, operator.imul, torch.mul, operator.truediv, torch.div, torch.true_divide),
          methods=("mul", "mul_", "div", "div_"))
def _product(ctx: OpContext) -> OpTraits:
    """Products are absorbing, not joints (spec §2.2): a zero operand makes the output zero."""
    divides = ctx.node.target in (operator.truediv, torch.div, torch.true_divide, "div", "div_")
    numerator_is_data = 0 in ctx.data_args
    if _data_operands(ctx) >= 2:
        same = len({a for a in ctx.node.args[:2] if isinstance(a, torch.fx.Node)}) == 1  # x / x is 0/0 at 0
        absorbing = ((0,) if numerator_is_data and not same else ()) if divides else tuple(ctx.data_args)
        return OpTraits(VertexKind.MERGE, absorbing=absorbing,
                        reason="multiplies activations (dropping an input is not exact)")
    if divides and not numerator_is_data:
        # c / x maps 0 to inf: not zero-preserving, and not per-channel-safe either
        return OpTraits(A, zero_preserving=False, channel=ChannelRule.BLOCK)
    if ctx.side_params:
        # x * p with p a parameter (LayerScale, a learned channel scale): zeroing p zeroes the branch
        return OpTraits(A, zeroing=ctx.side_zeroing and not divides, zero_preserving=True,
                        channel=ChannelRule.BLOCK)
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx))


@register(functions=(torch.cat, torch.concat, torch.concatenate))
def _cat(ctx: OpContext) -> OpTraits:
    dim = ctx.arg(1, "dim", 0)
    if dim is None:
        dim = ctx.arg(1, "axis", 0)
    ndim = len(ctx.out_shape) if ctx.out_shape is not None else 0
    if ndim >= 2 and dim % ndim == 1:
        return OpTraits(VertexKind.JOINT, joint=JointRule.CAT, zero_preserving=True)
    return OpTraits(VertexKind.MERGE, reason=f"concatenates along dim {dim}, not the channel axis")


@register(functions=(torch.stack, torch.maximum, torch.minimum))
def _merge(ctx: OpContext) -> OpTraits:
    return OpTraits(VertexKind.MERGE, reason="combines activations in a way that dropping one is not exact")


@register(functions=(torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum), methods=("matmul", "bmm"))
def _matmul(ctx: OpContext) -> OpTraits:
    """A product of activations: absorbing in every data operand (q @ k, attention @ v, einsum terms)."""
    if _data_operands(ctx) >= 2:
        return OpTraits(VertexKind.MERGE, absorbing=tuple(ctx.data_args),
                        reason="multiplies activations (dropping an input is not exact)")
    if ctx.side_params:  # x @ W with W a parameter: a linear map without bias
        return OpTraits(VertexKind.STEM, zeroing=ctx.side_zeroing, zero_preserving=True)
    return OpTraits(A, zero_preserving=True)


@register(functions=(F.scaled_dot_product_attention,))
def _attention(ctx: OpContext) -> OpTraits:
    """softmax(q kᵀ) v is zero when the value is zero (whatever q and k)."""
    return OpTraits(VertexKind.MERGE, absorbing=(2,), reason="attention combines query, key and value")
