"""`otov3.register_op`: the public extension point of the op table (spec §2.2).

A user declares what a custom module class or function is, without editing otov3: its kind, whether it maps zero
to zero, whether zeroing its own parameters zeroes its output, how channels pass through it, and in which operands
it is absorbing (a product). The declaration is exact-keyed like every other entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from otov3.graph.types import ChannelRule, JointRule, OpTraits, VertexKind
from otov3.ops.registry import OpContext, register

_KINDS = {"stem": VertexKind.STEM, "accessory": VertexKind.ACCESSORY, "merge": VertexKind.MERGE,
          "unknown": VertexKind.UNKNOWN, "add": VertexKind.JOINT, "cat": VertexKind.JOINT}
_CHANNELS = {"pass": ChannelRule.PASS, "block": ChannelRule.BLOCK, "consume": ChannelRule.CONSUME}
_LEAF_CLASSES: list[type[nn.Module]] = []  # registry: module classes users declared, traced as one op


def user_leaf_classes() -> tuple[type[nn.Module], ...]:
    """Module classes declared with `register_op`: fx records them as one op instead of tracing into them."""
    return tuple(_LEAF_CLASSES)


def register_op(
    target: type[nn.Module] | Callable[..., Any] | str,
    *,
    kind: str = "accessory",
    zero_preserving: bool = False,
    zeroing: bool = False,
    channels: str = "block",
    absorbing: Sequence[int] = (),
) -> None:
    """Declare how otov3 treats a custom module class or function (or a Tensor method, by name).

    Example:
        >>> otov3.register_op(MySwish, zero_preserving=True, channels="pass")        # an activation
        >>> otov3.register_op(my_gate, kind="merge", absorbing=(0, 1))               # a product of two inputs
        >>> otov3.register_op(MyAttention, kind="stem", zeroing=True)                 # zero params -> zero output

    Args:
        target: an `nn.Module` subclass (fx then records each call as one op instead of tracing into it), a
            function (as it appears in the traced graph, e.g. one wrapped with `torch.fx.wrap`), or a
            `torch.Tensor` method name such as ``"my_op"``.
        kind: "stem" (owns parameters and may change the channel count), "accessory" (one input, shape kept),
            "merge" (several inputs, dropping one is not exact), "add" or "cat" (an erasable joint that sums or
            concatenates along the channel axis), or "unknown".
        zero_preserving: f(0) = 0 for every zero input.
        zeroing: its output is identically 0 when all its own trainable parameters are 0.
        channels: "pass" (element-wise or per-channel: a removed channel block passes through), "consume" (a
            Linear/Conv-like stem whose input channels can be cut) or "block" (channels cannot be followed).
        absorbing: positions of the call's arguments in which the op is absorbing: a zero operand there makes the
            output zero (``a * b`` -> ``(0, 1)``).

    Raises:
        ValueError: an unknown `kind` or `channels`, or `zeroing` declared for an op that cannot own parameters.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if channels not in _CHANNELS:
        raise ValueError(f"channels must be one of {sorted(_CHANNELS)}, got {channels!r}")
    if channels == "consume" and kind != "stem":
        raise ValueError("channels='consume' is for stems (kind='stem'), whose input channels can be cut")
    joint = {"add": JointRule.ADD, "cat": JointRule.CAT}.get(kind)
    traits = OpTraits(
        _KINDS[kind],
        zeroing=zeroing,
        zero_preserving=zero_preserving or joint is not None,
        joint=joint,
        channel=_CHANNELS[channels],
        absorbing=tuple(absorbing),
        reason=f"declared {kind} by otov3.register_op" if kind in ("merge", "unknown") else None,
    )

    def describe(ctx: OpContext) -> OpTraits:
        return traits

    describe.__name__ = f"_user_{getattr(target, '__name__', target)}"
    if isinstance(target, str):
        register(methods=(target,))(describe)
    elif isinstance(target, type) and issubclass(target, nn.Module):
        register(modules=(target,))(describe)
        if target not in _LEAF_CLASSES:
            _LEAF_CLASSES.append(target)
    elif callable(target):
        register(functions=(target,))(describe)
    else:
        raise ValueError(f"target must be an nn.Module subclass, a function or a method name, got {target!r}")
