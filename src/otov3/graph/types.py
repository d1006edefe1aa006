"""Plain-data records of the trace graph (spec §2). No torch here: the graph algorithms stay pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

IN = "@IN"
OUT = "@OUT"


class VertexKind(StrEnum):
    """Vertex classes of spec §2.2, plus `MERGE` for non-erasable multi-input ops (Mul, MatMul, ...)."""

    STEM = "stem"
    JOINT = "joint"
    ACCESSORY = "accessory"
    MERGE = "merge"
    UNKNOWN = "unknown"


class JointRule(StrEnum):
    """How an erasable joint survives the loss of an operand (spec §2.2)."""

    ADD = "add"  # Add(y, 0) = y: remaining operands must already have the output shape
    SUB = "sub"  # only the subtrahend may be dropped
    CAT = "cat"  # channel concat: dependent slices are cut downstream (spec §6.1 pass 2)


class ChannelRule(StrEnum):
    """How a channel interval removed from a Concat operand travels through an op (spec §6.1 pass 2)."""

    PASS = "pass"  # per-channel or element-wise: the interval passes through (its per-channel params are sliced)
    FLATTEN = "flatten"  # (N, C, ...) -> (N, C*s): the interval is expanded by the spatial factor
    CONSUME = "consume"  # a stem whose input channels can be cut (Conv with groups == 1, Linear)
    BLOCK = "block"  # anything else: the interval cannot be followed


@dataclass(frozen=True)
class OpTraits:
    """What the graph algorithms need to know about one op (filled from the op-handler table).

    Attributes:
        kind: the vertex class.
        zeroing: output is identically 0 when all the op's own trainable variables are 0.
        zero_preserving: f(0) = 0.
        joint: the erasable-joint rule, or None when dropping an operand is not an exact rewrite.
        channel: how a removed channel interval travels through the op.
        per_channel_params: parameters indexed by channel along dim 0 (BN gamma/beta); sliced when a
            Concat interval passes through (auxiliary members, spec §3.2 rule 4).
        resettable: zero-preserving once its running mean is zeroed (non-affine BN in eval mode, spec §6.2).
        reason: why the op is unknown or merge-only (for messages).
        absorbing: positions in the call's arguments (``node.args``) of operands in which the op is absorbing:
            when such an operand is identically zero, so is the output (``a * b``, ``a / c``, ``q @ k``,
            attention's value), spec §2.2 "Products are not joints".
        channel_block: channels pass only in whole blocks of this size (GroupNorm's group size); 1 = any.
    """

    kind: VertexKind
    zeroing: bool = False
    zero_preserving: bool = False
    joint: JointRule | None = None
    channel: ChannelRule = ChannelRule.BLOCK
    per_channel_params: tuple[str, ...] = ()
    resettable: bool = False
    reason: str | None = None
    absorbing: tuple[int, ...] = ()
    channel_block: int = 1


@dataclass(frozen=True)
class Vertex:
    """One traced op.

    Attributes:
        name: unique vertex name (the fx node name).
        op: readable op name (``Conv2d``, ``add``, ``cat``...).
        traits: its classification.
        params: qualified names of the trainable parameters the op consumes.
        frozen_params: qualified names of its parameters with ``requires_grad=False``.
        module: qualified path of the module that runs it, if any.
        inputs: data inputs in operand order (duplicates kept); side inputs excluded.
        in_shapes: shapes of those inputs; None where not a tensor.
        out_shape: shape of the output tensor, or None.
        macs: multiply-accumulates for the traced input.
        absorbing: data inputs in which the op is absorbing (a zero there makes the output zero).
        shared: the op's parameters or module are also used by another vertex (weight sharing).
    """

    name: str
    op: str
    traits: OpTraits
    params: tuple[str, ...] = ()
    frozen_params: tuple[str, ...] = ()
    module: str | None = None
    inputs: tuple[str, ...] = ()
    in_shapes: tuple[tuple[int, ...] | None, ...] = ()
    out_shape: tuple[int, ...] | None = None
    macs: int = 0
    absorbing: tuple[str, ...] = ()
    shared: bool = False


@dataclass(frozen=True)
class TraceGraph:
    """Data-flow graph of the traced ops with virtual `IN` and `OUT` vertices (spec §2.1).

    `vertices` is in topological (trace) order. `succ`/`pred` hold distinct data neighbours, `IN` and `OUT`
    included; side inputs (constants, shape arithmetic) are not vertices.
    """

    vertices: dict[str, Vertex]
    succ: dict[str, tuple[str, ...]]
    pred: dict[str, tuple[str, ...]]
    param_sizes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def successors(self, v: str) -> tuple[str, ...]:
        return self.succ.get(v, ())

    def predecessors(self, v: str) -> tuple[str, ...]:
        return self.pred.get(v, ())

    def data_in_degree(self, v: str) -> int:
        """Distinct data predecessors (`IN` counts as one; side inputs are not vertices)."""
        return len(self.pred.get(v, ()))
