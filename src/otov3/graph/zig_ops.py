"""What pruning mode needs to know about one op (spec §4): plain records, filled by `otov3.ops.channel_ops`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ChannelKind(StrEnum):
    """How an op treats the channel axis of its data inputs."""

    STEM = "stem"  # writes new channels (rows of `out_rows`) on `axis`; reads channels of input 0 on `in_axis`
    PER_CHANNEL = "per_channel"  # channel j of the output depends on channel j at `axis` only (BN, depthwise conv)
    ELEMENTWISE = "elementwise"  # element by element over broadcast data operands (activations, Add, gates)
    LOCAL = "local"  # mixes values along `dims` only (pooling, resizing, padding, softmax, LayerNorm)
    RESHAPE = "reshape"  # row-major view/reshape/flatten/squeeze: followed through the traced shapes
    PERMUTE = "permute"  # output axis i is input axis `dims[i]`
    REDUCE = "reduce"  # reduces `dims` (keeps them as size 1 with `keepdim`); select/index too
    CAT = "cat"  # concatenates its data operands along `dims[0]`
    MATMUL = "matmul"  # product of two activations (q @ kᵀ, attention @ v)
    ATTENTION = "attention"  # scaled dot-product attention of (q, k, v[, mask])
    OPAQUE = "opaque"  # channels cannot be followed (`reason`)


@dataclass(frozen=True)
class ChannelOp:
    """One op's channel behaviour. Tensor names are the captured module's dotted attribute paths.

    Attributes:
        kind: see `ChannelKind`.
        out_rows: (tensor, dim) indexed by the output channels of a stem (weight rows, bias).
        in_cols: (tensor, dim) indexed by the input channels a stem reads (weight columns); empty: none are cut.
        per_channel: (tensor, dim) indexed by channel at `axis` (BN gamma/beta/statistics, depthwise weights).
        resets: running means among `per_channel` that must be zeroed with the channel (non-affine BN, spec §6.2).
        axis: channel axis of a stem's output or a per-channel op (negative counts from the end).
        in_axis: channel axis of a stem's input.
        dims: LOCAL/REDUCE axes (negative from the end for LOCAL), PERMUTE permutation, CAT axis.
        keepdim: REDUCE keeps reduced dims.
        block: channels pass in whole blocks of this size (GroupNorm).
        side_shapes: shapes of tensor operands that are not data (parameters, buffers, constants).
        zero_rows: zero rows zero the stem's output channels (its weight and bias are trainable parameters).
        rewrite: node arguments that hold a channel count: "sizes" (view/reshape/expand), "groups" (depthwise
            conv), "num_groups" (GroupNorm), or None.
        reason: why an OPAQUE op, or a STEM whose channels cannot be removed (grouped conv), stops channels.
    """

    kind: ChannelKind
    out_rows: tuple[tuple[str, int], ...] = ()
    in_cols: tuple[tuple[str, int], ...] = ()
    per_channel: tuple[tuple[str, int], ...] = ()
    resets: tuple[str, ...] = ()
    axis: int = 1
    in_axis: int = 1
    dims: tuple[int, ...] = ()
    keepdim: bool = False
    block: int = 1
    side_shapes: tuple[tuple[int, ...], ...] = ()
    zero_rows: bool = True
    rewrite: str | None = None
    reason: str | None = None


def opaque(reason: str) -> ChannelOp:
    return ChannelOp(ChannelKind.OPAQUE, reason=reason)
