"""Op-table entries for aten ops, what non-strict `torch.export` records (spec §2 "Capture backends", §2.2).

Keys are `OpOverload`s (`torch.ops.aten.linear.default`), matched exactly. Parameters reach these ops as
`get_attr` operands (side inputs), so an op's own trainable variables are `ctx.side_params`, and an op is zeroing
when `ctx.side_zeroing` says that zeroing them zeroes those operands — and no buffer or constant operand could
keep the output non-zero. Data operands are the positions `ctx.data_args` (for list operands such as `cat`'s,
each element's `otov3_data` mark from the export capture). Importing this module fills the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.fx
from torch import nn

from otov3.graph.types import ChannelRule, JointRule, OpTraits, VertexKind
from otov3.ops.handlers import _shape_rule
from otov3.ops.registry import OpContext, register

aten = torch.ops.aten
A = VertexKind.ACCESSORY
B = ChannelRule.BLOCK


# --- operands ---------------------------------------------------------------------------------------------


def _operand(ctx: OpContext, index: int, name: str) -> Any:
    return ctx.arg(index, name, None)


def _is_data(value: Any) -> bool:
    """Whether an operand (or any element of a list operand) depends on the model input."""
    if isinstance(value, list | tuple):
        return any(_is_data(v) for v in value)
    if not isinstance(value, torch.fx.Node):
        return False
    marked = value.meta.get("otov3_data")
    return bool(marked) if marked is not None else value.op != "get_attr"


def _data_positions(ctx: OpContext) -> tuple[int, ...]:
    if ctx.data_args:
        return tuple(ctx.data_args)
    return tuple(i for i, a in enumerate(ctx.node.args) if _is_data(a))


def _attr_value(arg: Any) -> torch.Tensor | None:
    """The tensor a `get_attr` operand reads (its live value), else the node's example metadata."""
    if not isinstance(arg, torch.fx.Node):
        return None
    if arg.op == "get_attr" and arg.graph.owning_module is not None:
        owner: Any = arg.graph.owning_module
        try:
            for part in arg.target.split("."):
                owner = getattr(owner, part)
            return owner if isinstance(owner, torch.Tensor) else None
        except AttributeError:
            return None
    value = arg.meta.get("val")
    return value if isinstance(value, torch.Tensor) else None


def _is_parameter(arg: Any) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and isinstance(_attr_value(arg), nn.Parameter)


def _own_zeroing(ctx: OpContext, *operands: Any) -> bool:
    """Zeroing the op's side parameters zeroes it: every given non-None operand is a parameter or zeroes with one.

    `ctx.side_zeroing` covers parameters read behind views and casts; a direct buffer or constant operand (a
    bias kept as a buffer) would stay non-zero, so it disqualifies the op.
    """
    present = [o for o in operands if o is not None]
    if not present or any(_is_data(o) for o in present):
        return False
    direct_buffer = any(isinstance(o, torch.fx.Node) and o.op == "get_attr" and not _is_parameter(o) for o in present)
    if direct_buffer or any(not isinstance(o, torch.fx.Node) for o in present):
        return False
    if ctx.side_params or ctx.data_args:
        return ctx.side_zeroing
    return all(_is_parameter(o) for o in present)  # no side analysis given: direct parameters only


def _in_shape(ctx: OpContext) -> tuple[int, ...] | None:
    return ctx.in_shapes[0] if ctx.in_shapes else None


def _prod(xs) -> int:
    return math.prod(xs) if xs else 1


def _scalar_like(value: Any) -> bool:
    """A Python number or a one-element tensor operand: scaling by it keeps channels apart."""
    if isinstance(value, int | float | bool):
        return True
    tensor = _attr_value(value)
    return tensor is not None and tensor.numel() == 1


def _only(values: tuple[Any, ...], pred: Callable[[Any], bool]) -> bool:
    return all(pred(v) for v in values)


# --- stems: convolutions, linear maps, embeddings --------------------------------------------------------


def _conv_groups(ctx: OpContext) -> int:
    target = ctx.node.target
    if target in (aten.convolution.default, aten._convolution.default):
        return int(_operand(ctx, 8, "groups") or 1)
    if target in _CONV_TRANSPOSE:
        return int(_operand(ctx, 6, "groups") or 1)
    return int(_operand(ctx, 6, "groups") or 1)


def _is_transposed(ctx: OpContext) -> bool:
    if ctx.node.target in (aten.convolution.default, aten._convolution.default):
        return bool(_operand(ctx, 6, "transposed"))
    return ctx.node.target in _CONV_TRANSPOSE


def _conv_macs(ctx: OpContext) -> int:
    weight = _attr_value(_operand(ctx, 1, "weight"))
    if weight is None:
        return 0
    per_position = int(weight.shape[1]) * _prod(tuple(weight.shape[2:]))
    if _is_transposed(ctx):
        src = _in_shape(ctx)
        return _prod(src[1:]) * per_position if src else 0
    return _prod(ctx.out_shape[1:]) * per_position if ctx.out_shape else 0


_CONV = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.conv1d.padding, aten.conv2d.padding,
         aten.conv3d.padding, aten.convolution.default, aten._convolution.default)
_CONV_TRANSPOSE = (aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)


@register(functions=(*_CONV, *_CONV_TRANSPOSE), macs=_conv_macs)
def _conv(ctx: OpContext) -> OpTraits:
    """Convolutions: a stem; input channels can be cut (weight dim 1, dim 0 transposed) when groups == 1."""
    weight, bias = _operand(ctx, 1, "weight"), _operand(ctx, 2, "bias")
    if _is_data(weight):
        return OpTraits(VertexKind.MERGE, reason="convolves with a weight computed from the input")
    cuttable = _conv_groups(ctx) == 1 and _is_parameter(weight)
    return OpTraits(VertexKind.STEM, zeroing=_own_zeroing(ctx, weight, bias), zero_preserving=bias is None,
                    channel=ChannelRule.CONSUME if cuttable else B)


def _linear_macs(ctx: OpContext) -> int:
    weight = _attr_value(_operand(ctx, 1, "weight"))
    src = _in_shape(ctx)
    if weight is None or weight.dim() != 2:
        return 0
    lead = _prod(src[1:-1]) if src is not None and len(src) > 2 else 1
    return lead * int(weight.shape[0]) * int(weight.shape[1])


@register(functions=(aten.linear.default,), macs=_linear_macs)
def _linear(ctx: OpContext) -> OpTraits:
    """`x Wᵀ + b`: zeroing; zero-preserving without bias; input features cut on 2-D inputs (weight dim 1)."""
    weight, bias = _operand(ctx, 1, "weight"), _operand(ctx, 2, "bias")
    if _is_data(weight):
        absorbing = (0, 1) if bias is None else ()
        return OpTraits(VertexKind.MERGE, absorbing=absorbing, reason="multiplies two activations (F.linear)")
    src = _in_shape(ctx)
    two_d = src is not None and len(src) == 2 and _is_parameter(weight)
    return OpTraits(VertexKind.STEM, zeroing=_own_zeroing(ctx, weight, bias), zero_preserving=bias is None,
                    channel=ChannelRule.CONSUME if two_d else B)


def _addmm_macs(ctx: OpContext) -> int:
    mat1 = ctx.in_shapes[0] if ctx.in_shapes else None
    mat2 = _attr_value(_operand(ctx, 2, "mat2"))
    if mat1 is None or mat2 is None or len(mat1) != 2:
        return 0
    return int(mat1[0]) * int(mat2.shape[0]) * int(mat2.shape[1])  # rows = batch x tokens (the whole input)


@register(functions=(aten.addmm.default,), macs=_addmm_macs)
def _addmm(ctx: OpContext) -> OpTraits:
    """`bias + x @ W` (GPT-2's Conv1D): a stem whose input features are rows of W (cut along dim 0)."""
    bias, mat1, mat2 = _operand(ctx, 0, "self"), _operand(ctx, 1, "mat1"), _operand(ctx, 2, "mat2")
    if _is_data(mat2) or _is_data(bias) or not _is_data(mat1):
        return OpTraits(VertexKind.MERGE, reason="adds a product of activations to another activation")
    return OpTraits(VertexKind.STEM, zeroing=_own_zeroing(ctx, bias, mat2), zero_preserving=False,
                    channel=ChannelRule.CONSUME if _is_parameter(mat2) else B)


@register(functions=(aten.mm.default, aten.matmul.default, aten.bmm.default))
def _matmul(ctx: OpContext) -> OpTraits:
    """A product: absorbing in every data operand (q @ kᵀ, weights @ v); `x @ W` with W a parameter is a stem."""
    data = _data_positions(ctx)
    if len(data) >= 2:
        return OpTraits(VertexKind.MERGE, absorbing=data, reason="multiplies activations (a product, spec §2.2)")
    operands = tuple(a for i, a in enumerate(ctx.node.args[:2]) if i not in data)
    if data and operands:
        return OpTraits(VertexKind.STEM, zeroing=_own_zeroing(ctx, *operands), zero_preserving=True)
    return OpTraits(A, zero_preserving=True)


@register(functions=(aten.baddbmm.default, aten.einsum.default, aten.stack.default, aten.maximum.default,
                     aten.minimum.default, aten.pow.Tensor_Tensor, aten.rsub.Tensor, aten.atan2.default))
def _merge(ctx: OpContext) -> OpTraits:
    """Combinations of activations where dropping or zeroing one operand is not an exact rewrite."""
    if len(_data_positions(ctx)) >= 2 or ctx.node.target in (aten.einsum.default, aten.stack.default):
        return OpTraits(VertexKind.MERGE, reason="combines activations in a way that dropping one is not exact")
    return OpTraits(A, zero_preserving=False, channel=B)


@register(functions=(aten.embedding.default,))
def _embedding(ctx: OpContext) -> OpTraits:
    """A table lookup: zero when the table is zero, whatever the indices."""
    return OpTraits(VertexKind.STEM, zeroing=_own_zeroing(ctx, _operand(ctx, 0, "weight")))


# --- normalisation --------------------------------------------------------------------------------------


def _norm(ctx: OpContext, weight: Any, bias: Any, *, running: bool, per_channel: bool, groups_ok: bool = True
          ) -> OpTraits:
    """Affine norms are zeroing (γ = β = 0 gives 0); without β, or without any affine, they map 0 to 0."""
    params = tuple(a.target for a in (weight, bias) if _is_parameter(a))
    passes = per_channel and groups_ok
    channel = ChannelRule.PASS if passes else B
    if weight is not None:
        zeroing = _own_zeroing(ctx, weight, bias)
        # γ·norm(0) = 0 when there is no β and no running mean shifting the zero input
        preserving = bias is None and not running
        return OpTraits(A, zeroing=zeroing, zero_preserving=preserving, channel=channel,
                        per_channel_params=params if passes else ())
    if bias is not None:
        return OpTraits(A, zero_preserving=False, channel=B)
    return OpTraits(A, zero_preserving=not running, resettable=running, channel=channel)


@register(functions=(aten.batch_norm.default, aten.native_batch_norm.default,
                     aten._native_batch_norm_legit_no_training.default, aten._native_batch_norm_legit.default,
                     aten.instance_norm.default))
def _batch_norm(ctx: OpContext) -> OpTraits:
    """(input, weight, bias, running_mean, running_var, training | use_input_stats, ...): per-channel."""
    target = ctx.node.target
    weight, bias = _operand(ctx, 1, "weight"), _operand(ctx, 2, "bias")
    running_mean = _operand(ctx, 3, "running_mean")
    if target is aten._native_batch_norm_legit_no_training.default:
        uses_batch_stats = False
    else:
        uses_batch_stats = bool(_operand(ctx, 5, "use_input_stats" if target is aten.instance_norm.default
                                         else "training"))
    running = running_mean is not None and not uses_batch_stats
    out = _norm(ctx, weight, bias, running=running, per_channel=True)
    if target is not aten.batch_norm.default and target is not aten.instance_norm.default:
        # tuple outputs (out, mean, invstd): the statistics are not zero, nor per-channel in the output layout
        return OpTraits(A, zeroing=False, zero_preserving=False, channel=B)
    return out


@register(functions=(aten.group_norm.default,))
def _group_norm(ctx: OpContext) -> OpTraits:
    """(input, num_groups, weight, bias, eps, cudnn): channels pass in whole groups (a zero group stays zero)."""
    src = _in_shape(ctx)
    groups = _operand(ctx, 1, "num_groups")
    known = src is not None and len(src) > 1 and isinstance(groups, int) and groups > 0 and src[1] % groups == 0
    traits = _norm(ctx, _operand(ctx, 2, "weight"), _operand(ctx, 3, "bias"), running=False, per_channel=known)
    return replace(traits, channel_block=src[1] // groups) if known else traits


@register(functions=(aten.layer_norm.default, aten.native_layer_norm.default))
def _layer_norm(ctx: OpContext) -> OpTraits:
    """(input, normalized_shape, weight, bias, eps, ...): normalises over the last dims, so channels mix."""
    out = _norm(ctx, _operand(ctx, 2, "weight"), _operand(ctx, 3, "bias"), running=False, per_channel=False)
    if ctx.node.target is aten.native_layer_norm.default:  # (out, mean, rstd)
        return OpTraits(A, zeroing=False, zero_preserving=False, channel=B)
    return out


@register(functions=(aten.rms_norm.default,))
def _rms_norm(ctx: OpContext) -> OpTraits:
    """(input, normalized_shape, weight, eps): x / rms(x) · γ maps 0 to 0; γ = 0 gives 0."""
    return _norm(ctx, _operand(ctx, 2, "weight"), None, running=False, per_channel=False)


@register(functions=(aten.native_group_norm.default,))
def _native_group_norm(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=False, channel=B)  # (out, mean, rstd)


# --- attention ------------------------------------------------------------------------------------------


@register(functions=(aten.scaled_dot_product_attention.default,))
def _attention(ctx: OpContext) -> OpTraits:
    """softmax(q kᵀ + mask) v: zero whenever the value is zero (spec §2.2), whatever q, k and the mask."""
    absorbing = (2,) if 2 in _data_positions(ctx) else ()
    return OpTraits(VertexKind.MERGE, absorbing=absorbing, reason="attention combines query, key and value")


@register(functions=(aten._scaled_dot_product_flash_attention_for_cpu.default,
                     aten._scaled_dot_product_efficient_attention.default,
                     aten._scaled_dot_product_flash_attention.default))
def _attention_internals(ctx: OpContext) -> OpTraits:
    """Backend kernels return (out, logsumexp, ...): the statistics are not zero, so nothing is absorbing."""
    return OpTraits(VertexKind.MERGE, reason="attention combines query, key and value")


# --- joints: addition, subtraction, concatenation -------------------------------------------------------


def _constants_are_zero(ctx: OpContext) -> bool:
    """Every non-data operand is a literal 0 (tensors that are not data are parameters, buffers, constants)."""
    data = set(_data_positions(ctx))
    others = [a for i, a in enumerate(ctx.node.args[:2]) if i not in data]
    return all(isinstance(c, int | float) and not isinstance(c, bool) and c == 0 for c in others)


@register(functions=(aten.add.Tensor, aten.add.Scalar))
def _add(ctx: OpContext) -> OpTraits:
    alpha = ctx.node.kwargs.get("alpha", ctx.node.args[2] if len(ctx.node.args) > 2 else 1)
    if len(_data_positions(ctx)) >= 2:
        if alpha != 1:
            return OpTraits(VertexKind.MERGE, reason="adds with a scale factor (alpha), so an operand is not droppable")
        return OpTraits(VertexKind.JOINT, joint=JointRule.ADD, zero_preserving=True)
    # adding a constant, a buffer or a parameter (positional embedding): 0 maps to it
    return OpTraits(A, zero_preserving=_constants_are_zero(ctx), channel=B)


@register(functions=(aten.sub.Tensor, aten.sub.Scalar))
def _sub(ctx: OpContext) -> OpTraits:
    alpha = ctx.node.kwargs.get("alpha", ctx.node.args[2] if len(ctx.node.args) > 2 else 1)
    data = _data_positions(ctx)
    if len(data) >= 2:
        if alpha != 1:
            return OpTraits(VertexKind.MERGE, reason="subtracts with a scale factor (alpha)")
        return OpTraits(VertexKind.JOINT, joint=JointRule.SUB, zero_preserving=True)
    return OpTraits(A, zero_preserving=_constants_are_zero(ctx) and 0 in data, channel=B)


@register(functions=(aten.rsub.Scalar,))
def _rsub(ctx: OpContext) -> OpTraits:
    """other - x: zero-preserving only when other is a literal 0."""
    return OpTraits(A, zero_preserving=_constants_are_zero(ctx), channel=B)


@register(functions=(aten.cat.default, aten.concat.default))
def _cat(ctx: OpContext) -> OpTraits:
    """Channel concat of data operands is an erasable joint; along other dims, or with constants, a merge."""
    tensors = _operand(ctx, 0, "tensors") or ()
    dim = _operand(ctx, 1, "dim") or 0
    ndim = len(ctx.out_shape) if ctx.out_shape is not None else 0
    if not _only(tuple(tensors), _is_data):
        return OpTraits(VertexKind.MERGE, reason="concatenates activations with a parameter or constant")
    if ndim >= 2 and dim % ndim == 1:
        return OpTraits(VertexKind.JOINT, joint=JointRule.CAT, zero_preserving=True)
    return OpTraits(VertexKind.MERGE, reason=f"concatenates along dim {dim}, not the channel axis")


# --- products: scales, gates, quotients -----------------------------------------------------------------


@register(functions=(aten.mul.Tensor, aten.mul.Scalar))
def _mul(ctx: OpContext) -> OpTraits:
    """`a * b` of two activations is absorbing in both (a gate); `x * p` with p a parameter is a scale."""
    data = _data_positions(ctx)
    if len(data) >= 2:
        return OpTraits(VertexKind.MERGE, absorbing=data, reason="multiplies activations (a product, spec §2.2)")
    others = tuple(a for i, a in enumerate(ctx.node.args[:2]) if i not in data)
    channel = _shape_rule(ctx) if _only(others, _scalar_like) else B
    return OpTraits(A, zeroing=_own_zeroing(ctx, *others) if data else False, zero_preserving=True,
                    channel=channel)


@register(functions=(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode))
def _div(ctx: OpContext) -> OpTraits:
    """`a / b` is absorbing in its numerator only; `c / x` maps 0 to infinity."""
    data = _data_positions(ctx)
    numerator, denominator = ctx.node.args[0], ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if len(data) >= 2:
        same = numerator is denominator  # x / x is 0 / 0 at zero
        return OpTraits(VertexKind.MERGE, absorbing=() if same else (0,), reason="divides activations")
    if data and 0 not in data:
        return OpTraits(A, zero_preserving=False, channel=B)
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx) if _scalar_like(denominator) else B)


@register(functions=(aten.pow.Tensor_Scalar,))
def _pow(ctx: OpContext) -> OpTraits:
    exponent = _operand(ctx, 1, "exponent")
    positive = isinstance(exponent, int | float) and exponent > 0
    return OpTraits(A, zero_preserving=positive, channel=_shape_rule(ctx))


@register(functions=(aten.pow.Scalar,))
def _power_of_constant(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=False, channel=B)  # c ** 0 = 1


@register(functions=(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar,
                     aten.masked_fill.Scalar, aten.masked_fill.Tensor))
def _select_values(ctx: OpContext) -> OpTraits:
    """where(cond, x, y) / masked_fill(x, mask, v): zero-preserving in x when the other value is a literal 0."""
    data = set(_data_positions(ctx))
    target = ctx.node.target
    if target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        value, mask = _operand(ctx, 2, "value"), 1
        values_at, fills = 0, (value,)
    else:
        values_at, fills, mask = 1, (_operand(ctx, 2, "other"),), 0
    fill_zero = all(isinstance(v, int | float) and not isinstance(v, bool) and v == 0 for v in fills)
    if values_at in data and fill_zero:
        if mask in data:
            return OpTraits(VertexKind.MERGE, absorbing=(values_at,), reason="selects from an activation by a mask")
        return OpTraits(A, zero_preserving=True, channel=B)
    if len(data) >= 2:
        return OpTraits(VertexKind.MERGE, reason="selects between activations")
    return OpTraits(A, zero_preserving=False, channel=B)


# --- element-wise and shape ops -------------------------------------------------------------------------

_ZERO_PRESERVING = (
    aten.relu.default, aten.relu6.default, aten.gelu.default, aten.silu.default, aten.mish.default,
    aten.elu.default, aten.celu.default, aten.selu.default, aten.leaky_relu.default, aten.hardswish.default,
    aten.tanh.default, aten.neg.default, aten.abs.default, aten.sqrt.default, aten.square.default,
    aten.sin.default, aten.erf.default, aten.sign.default, aten.sgn.default, aten.dropout.default,
    aten.feature_dropout.default, aten.alpha_dropout.default, aten.feature_alpha_dropout.default,
    aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default, aten.avg_pool1d.default,
    aten.avg_pool2d.default, aten.avg_pool3d.default, aten.adaptive_avg_pool1d.default,
    aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool3d.default, aten._adaptive_avg_pool2d.default,
    aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec,
    aten.upsample_linear1d.vec, aten.upsample_bilinear2d.vec, aten.upsample_bicubic2d.vec,
    aten.upsample_trilinear3d.vec, aten.reflection_pad1d.default, aten.reflection_pad2d.default,
    aten.reflection_pad3d.default, aten.replication_pad1d.default, aten.replication_pad2d.default,
    aten.replication_pad3d.default,
    # shape and dtype changes, copies, reductions that keep zeros
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
    aten.unflatten.int, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
    aten.expand.default, aten.expand_as.default, aten.view_as.default, aten.reshape_as.default,
    aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
    aten.lift_fresh_copy.default, aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout,
    aten.to.other, aten.type_as.default, aten.mean.dim, aten.mean.default, aten.sum.dim_IntList,
    aten.sum.default, aten.amax.default, aten.amin.default, aten.var.correction, aten.std.correction,
    aten.linalg_vector_norm.default, aten.norm.ScalarOpt_dim,
)


@register(functions=_ZERO_PRESERVING)
def _elementwise(ctx: OpContext) -> OpTraits:
    """f(0) = 0; channels pass when dims 0 and 1 keep their sizes (or are flattened together)."""
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx))


_REORDERING = (
    aten.permute.default, aten.transpose.int, aten.t.default, aten.swapaxes.default, aten.movedim.int,
    aten.select.int, aten.slice.Tensor, aten.narrow.default, aten.index.Tensor, aten.index_select.default,
    aten.gather.default, aten.repeat.default, aten.roll.default, aten.flip.default, aten.tril.default,
    aten.triu.default, aten.unfold.default, aten.im2col.default, aten.pixel_shuffle.default,
    aten.pixel_unshuffle.default, aten.cumsum.default, aten.glu.default, aten.split.Tensor,
    aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int, aten.tensor_split.sections,
    aten.unsafe_split.Tensor,
)


@register(functions=_REORDERING)
def _reorder(ctx: OpContext) -> OpTraits:
    """Indexing, reordering and splitting keep zeros, but channels cannot be followed through them.

    Indexing a parameter table by an activation (`table[ids]`) does not map a zero index to zero.
    """
    data = _data_positions(ctx)
    return OpTraits(A, zero_preserving=not data or 0 in data, channel=B)


@register(functions=(aten.hardtanh.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default))
def _clamp(ctx: OpContext) -> OpTraits:
    """clamp(0) = 0 when the range contains 0 (hardtanh's default [-1, 1] does)."""
    target = ctx.node.target
    if target is aten.hardtanh.default:
        low, high = _operand(ctx, 1, "min_val"), _operand(ctx, 2, "max_val")
        low, high = -1.0 if low is None else low, 1.0 if high is None else high
    elif target is aten.clamp_min.default:
        low, high = _operand(ctx, 1, "min"), None
    elif target is aten.clamp_max.default:
        low, high = None, _operand(ctx, 1, "max")
    else:
        low, high = _operand(ctx, 1, "min"), _operand(ctx, 2, "max")
    numbers = all(v is None or isinstance(v, int | float) for v in (low, high))
    keeps_zero = numbers and (low is None or low <= 0) and (high is None or high >= 0)
    return OpTraits(A, zero_preserving=keeps_zero, channel=_shape_rule(ctx) if numbers else B)


@register(functions=(aten.constant_pad_nd.default, aten.pad.default))
def _pad(ctx: OpContext) -> OpTraits:
    if ctx.node.target is aten.pad.default:
        mode, value = _operand(ctx, 2, "mode") or "constant", _operand(ctx, 3, "value")
    else:
        mode, value = "constant", _operand(ctx, 2, "value")
    return OpTraits(A, zero_preserving=mode != "constant" or not value, channel=_shape_rule(ctx))


@register(functions=(aten.prelu.default, aten._prelu_kernel.default))
def _prelu(ctx: OpContext) -> OpTraits:
    weight = _attr_value(_operand(ctx, 1, "weight"))
    single = weight is not None and weight.numel() == 1
    return OpTraits(A, zero_preserving=True, channel=_shape_rule(ctx) if single else B)


_NOT_ZERO_PRESERVING = (
    aten.sigmoid.default, aten.hardsigmoid.default, aten.softplus.default, aten.softmax.int, aten._softmax.default,
    aten.log_softmax.int, aten._log_softmax.default, aten.exp.default, aten.log.default, aten.cos.default,
    aten.rsqrt.default, aten.reciprocal.default, aten.logsumexp.default, aten.log_sigmoid_forward.default,
    aten.erfc.default, aten.max_pool2d_with_indices.default, aten.adaptive_max_pool2d.default,
    aten.native_dropout.default, aten.one_hot.default, aten.cumprod.default,
    # comparisons and logic (mask arithmetic): a zero input gives True or False, not "no signal"
    aten.eq.Tensor, aten.eq.Scalar, aten.ne.Tensor, aten.ne.Scalar, aten.lt.Tensor, aten.lt.Scalar,
    aten.le.Tensor, aten.le.Scalar, aten.gt.Tensor, aten.gt.Scalar, aten.ge.Tensor, aten.ge.Scalar,
    aten.__and__.Tensor, aten.__or__.Tensor, aten.bitwise_and.Tensor, aten.bitwise_or.Tensor,
    aten.bitwise_not.default, aten.logical_not.default, aten.logical_and.default, aten.logical_or.default,
    aten.any.dim, aten.all.dim,
    # factories shaped like an input: their values do not depend on it
    aten.new_ones.default, aten.new_full.default, aten.new_empty.default, aten.ones_like.default,
    aten.full_like.default, aten.empty_like.default, aten.arange.default, aten.arange.start,
    aten.arange.start_step, aten.ones.default, aten.full.default,
)


@register(functions=_NOT_ZERO_PRESERVING)
def _not_zero_preserving(ctx: OpContext) -> OpTraits:
    if len(_data_positions(ctx)) >= 2:
        return OpTraits(VertexKind.MERGE, reason="combines activations (a comparison or mask arithmetic)")
    return OpTraits(A, zero_preserving=False, channel=B)


@register(functions=(aten.new_zeros.default, aten.zeros_like.default, aten.zeros.default))
def _zeros(ctx: OpContext) -> OpTraits:
    """Zeros shaped like an input: zero whatever the input."""
    return OpTraits(A, zero_preserving=True, channel=B)
