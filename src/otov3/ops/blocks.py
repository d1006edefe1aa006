"""Op-table entries for today's building blocks (spec §2.2 "Attention, recurrent and other composite ops").

Functional norms and stems (ConvNeXt's `LayerNorm2d` calls `F.layer_norm`), stochastic depth, attention modules
and fx-wrapped attention functions, recurrent modules. Functions of libraries otov3 does not depend on
(torchvision, timm) are keyed by their qualified name. Importing this module fills the table.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from otov3.graph.types import ChannelRule, OpTraits, VertexKind
from otov3.ops.registry import OpContext, register

A = VertexKind.ACCESSORY


# --- functional norms and stems: their weights arrive as (side) parameters -------------------------------


def _optional_arg(ctx: OpContext, index: int, name: str) -> object:
    return ctx.arg(index, name, None)


@register(functions=(F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm, F.batch_norm))
def _functional_norm(ctx: OpContext) -> OpTraits:
    """Affine (weight and bias given) norms are zeroing; without weights they normalise 0 to 0."""
    target = ctx.node.target
    if target is F.batch_norm:
        weight, bias = _optional_arg(ctx, 3, "weight"), _optional_arg(ctx, 4, "bias")
        running = _optional_arg(ctx, 1, "running_mean") is not None
    elif target is F.group_norm:
        weight, bias, running = _optional_arg(ctx, 2, "weight"), _optional_arg(ctx, 3, "bias"), False
    elif target is F.instance_norm:
        weight, bias = _optional_arg(ctx, 3, "weight"), _optional_arg(ctx, 4, "bias")
        running = _optional_arg(ctx, 1, "running_mean") is not None
    elif target is F.rms_norm:
        weight, bias, running = _optional_arg(ctx, 2, "weight"), "no bias needed", False
    else:
        weight, bias, running = _optional_arg(ctx, 2, "weight"), _optional_arg(ctx, 3, "bias"), False
    affine = weight is not None and bias is not None
    if affine:
        return OpTraits(A, zeroing=ctx.side_zeroing, channel=ChannelRule.BLOCK)
    return OpTraits(A, zero_preserving=not running and weight is None and bias is None, channel=ChannelRule.BLOCK)


@register(functions=(F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                     F.conv_transpose3d))
def _functional_stem(ctx: OpContext) -> OpTraits:
    bias = _optional_arg(ctx, 2, "bias")
    return OpTraits(VertexKind.STEM, zeroing=ctx.side_zeroing, zero_preserving=bias is None)


@register(functions=(F.embedding,))
def _functional_embedding(ctx: OpContext) -> OpTraits:
    return OpTraits(VertexKind.STEM, zeroing=ctx.side_zeroing)


# --- stochastic depth / DropPath: a random per-sample mask, zero-preserving in train and eval --------------


@register(qualnames=("torchvision.ops.stochastic_depth.stochastic_depth", "timm.layers.drop.drop_path",
                     "timm.models.layers.drop.drop_path", "torchvision.ops.stochastic_depth.StochasticDepth",
                     "timm.layers.drop.DropPath", "timm.models.layers.drop.DropPath"),
          functions=(F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d, F.dropout3d))
def _random_mask(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=True, channel=ChannelRule.PASS if _same_shape(ctx) else ChannelRule.BLOCK)


def _same_shape(ctx: OpContext) -> bool:
    return bool(ctx.in_shapes) and ctx.in_shapes[0] == ctx.out_shape


# --- attention --------------------------------------------------------------------------------------------


@register(modules=(nn.MultiheadAttention,))
def _multihead_attention(ctx: OpContext) -> OpTraits:
    """Zero output projection (weight and bias) gives a zero output; the output is `(out, weights | None)`."""
    return OpTraits(VertexKind.STEM, zeroing=True, zero_preserving=False)


@register(qualnames=("torchvision.models.swin_transformer.shifted_window_attention",))
def _window_attention(ctx: OpContext) -> OpTraits:
    """Swin's fx-wrapped attention: its output projection is among its parameters, so zeroing them zeroes it."""
    return OpTraits(VertexKind.STEM, zeroing=ctx.side_zeroing or bool(ctx.side_params))


@register(qualnames=("torchvision.models.swin_transformer._patch_merging_pad",))
def _patch_merging_pad(ctx: OpContext) -> OpTraits:
    return OpTraits(A, zero_preserving=True)


# --- recurrent modules: opaque stems with tuple outputs -------------------------------------------------


@register(modules=(nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell))
def _recurrent(ctx: OpContext) -> OpTraits:
    """LSTM/GRU/RNN: the hidden state feeds back through gates, so treated as neither zeroing nor preserving."""
    return OpTraits(VertexKind.STEM, reason="a recurrent module is opaque to otov3")


# --- indexing into tuple outputs --------------------------------------------------------------------------


@register(functions=(operator.getitem,))
def _getitem(ctx: OpContext) -> OpTraits:
    """Indexing keeps zeros, except the attention weights of `nn.MultiheadAttention` (uniform, not zero)."""
    source = ctx.node.args[0] if ctx.node.args else None
    index = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if isinstance(source, torch.fx.Node) and source.op == "call_module" and index != 0:
        owner = source.graph.owning_module
        module = owner.get_submodule(source.target) if owner is not None else None
        if isinstance(module, nn.MultiheadAttention):
            return OpTraits(A, zero_preserving=False, channel=ChannelRule.BLOCK)
    return OpTraits(A, zero_preserving=True, channel=ChannelRule.BLOCK)
