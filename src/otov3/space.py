"""Torch-side records of the search space: which parameter slices form each group.

The graph layer (`otov3.graph`) works on names only; these records bind those names to the user's live
`nn.Parameter`s so that the optimizer and the sub-network builder can act on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import nn


class GroupKind(StrEnum):
    GEZIG = "gezig"
    COMPLEMENTARY = "complementary"
    CHANNEL = "channel"  # pruning mode: one channel (or head, or hidden unit) of a node group


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """A whole parameter (`index is None`) or a contiguous block of it along dimension `dim` (0 unless a
    channel lives elsewhere, e.g. the output channels of a ConvTranspose weight, dim 1)."""

    name: str
    param: nn.Parameter
    index: slice | None = None
    dim: int = 0

    def _select(self, data: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return data
        return data[self.index] if self.dim == 0 else data[(slice(None),) * self.dim + (self.index,)]

    def view(self) -> torch.Tensor:
        """The slice as a view of the live parameter's data (writes go to the model)."""
        return self._select(self.param.data)

    def grad_view(self) -> torch.Tensor | None:
        grad = self.param.grad
        return None if grad is None else self._select(grad)

    def numel(self) -> int:
        return self.view().numel()


@dataclass(frozen=True, eq=False)
class Group:
    """One group of the partition: a GeZIG (removable operations) or a complementary segment.

    Attributes:
        name: stable readable name built from module paths, e.g. ``branch2.0+branch2.1``.
        kind: GeZIG or complementary.
        slices: the parameter (slices) the group owns; together all groups cover every trainable scalar once.
        vertices: names of the trace vertices (fx nodes) the group spans.
        segment: id of the (first) dependency-graph segment the group comes from.
        reason: why a complementary group is not removable (``None`` for GeZIGs).
        reset_buffers: running means of non-affine norms inside the group; zeroed when the group is projected,
            so that a zero group outputs exactly 0 in eval mode too (spec §6.2).
        macs: multiply-accumulates of the group's operations for one sample (tie-breaks, reports).
        segments: every segment the group spans (several only when segments share weights).
        node_group: pruning mode: id of the node group the channel group belongs to (groups of one node group
            have identical layouts, so optimizers may batch their rows); -1 in erasing mode.
    """

    name: str
    kind: GroupKind
    slices: tuple[ParamSlice, ...]
    vertices: tuple[str, ...]
    segment: int
    reason: str | None = None
    reset_buffers: tuple[torch.Tensor, ...] = field(default=())
    macs: int = 0
    segments: tuple[int, ...] = ()
    node_group: int = -1

    @property
    def is_gezig(self) -> bool:
        return self.kind is GroupKind.GEZIG

    @property
    def removable(self) -> bool:
        """A GeZIG (erasing mode) or a channel group (pruning mode): the optimizer may zero it."""
        return self.kind in (GroupKind.GEZIG, GroupKind.CHANNEL)

    def params(self) -> list[nn.Parameter]:
        """The distinct `nn.Parameter`s this group touches (whole or in part)."""
        seen: dict[int, nn.Parameter] = {}
        for s in self.slices:
            seen.setdefault(id(s.param), s.param)
        return list(seen.values())

    def param_names(self) -> list[str]:
        return list(dict.fromkeys(s.name for s in self.slices))

    def numel(self) -> int:
        return sum(s.numel() for s in self.slices)

    def norm(self) -> float:
        """Euclidean norm of the group's current values."""
        if not self.slices:
            return 0.0
        return float(torch.sqrt(sum((s.view().double() ** 2).sum() for s in self.slices)))

    def is_zero(self) -> bool:
        """True when every scalar of the group is exactly zero."""
        return all(bool((s.view() == 0).all()) for s in self.slices)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, {self.kind.value}, params={self.numel()})"
