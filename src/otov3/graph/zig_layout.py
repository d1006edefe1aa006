"""Channel layouts for pruning mode (spec §4.1-4.2): which channels of which node group sit where in a tensor.

A *space* is a candidate node group: the channels one or more stems write. A tensor's *layout* says which axis
holds channels and, position by position along it, which space's channel sits there: a stem output holds one
space from offset 0; a channel concat shifts its operands' blocks by offsets; a flatten stretches each channel
over `f` features; a head split packs `D` channels into one position (so only whole heads can be removed).
No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction


@dataclass(frozen=True)
class Seg:
    """Positions `[off, off + width)` of the channel axis; channel j of `space` sits at `[off + j*scale, ...)`.

    `space` is None for positions no node group owns (the model input, outputs of opaque ops).
    """

    space: int | None
    off: int
    width: int
    scale: Fraction = Fraction(1)


@dataclass(frozen=True)
class Layout:
    """The channel axis of a tensor (non-negative) and the blocks along it, in order."""

    axis: int
    segs: tuple[Seg, ...]

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segs)

    def spaces(self) -> list[int]:
        return [s.space for s in self.segs if s.space is not None]

    def shifted(self, base: int) -> tuple[Seg, ...]:
        return tuple(replace(s, off=s.off + base) for s in self.segs)

    def scaled(self, axis: int, factor: Fraction) -> Layout | None:
        """Every position stretched (`factor` > 1, a flatten) or packed (< 1, a split); None when misaligned."""
        segs = []
        for s in self.segs:
            off, width = s.off * factor, s.width * factor
            if off.denominator != 1 or width.denominator != 1:
                return None
            segs.append(Seg(s.space, int(off), int(width), s.scale * factor))
        return Layout(axis, tuple(segs))


class Spaces:
    """Union-find over spaces, with each root's width, unit (channels removed together) and block reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.width: list[int] = []
        self.unit: list[int] = []
        self.reasons: dict[int, str] = {}

    def new(self, width: int) -> int:
        self.parent.append(len(self.parent))
        self.width.append(width)
        self.unit.append(1)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.width[ra] != self.width[rb]:
            self.block(ra, f"{where} ties channel groups of different sizes")
            self.block(rb, f"{where} ties channel groups of different sizes")
        self.parent[rb] = ra
        self.unit[ra] = math.lcm(self.unit[ra], self.unit[rb])
        if rb in self.reasons:
            self.reasons.setdefault(ra, self.reasons[rb])

    def block(self, a: int, reason: str) -> None:
        self.reasons.setdefault(self.find(a), reason)

    def need_unit(self, a: int, unit: int) -> None:
        root = self.find(a)
        self.unit[root] = math.lcm(self.unit[root], unit)

    def reason(self, a: int) -> str | None:
        root = self.find(a)
        if root in self.reasons:
            return self.reasons[root]
        if self.width[root] % self.unit[root]:
            return f"its {self.width[root]} channels do not split into whole blocks of {self.unit[root]}"
        return None


def block_layout(spaces: Spaces, layout: Layout | None, reason: str) -> None:
    if layout is not None:
        for s in layout.spaces():
            spaces.block(s, reason)


def unify(spaces: Spaces, layouts: list[Layout], axis: int, where: str) -> Layout | None:
    """One layout for tensors whose channels must stay aligned (an Add, a gate, a shared stem's inputs).

    Blocks match block by block and their spaces merge; when the blocks differ, every space involved is blocked.
    """
    first = layouts[0]
    for other in layouts[1:]:
        same = len(other.segs) == len(first.segs) and all(
            (a.off, a.width, a.scale, a.space is None) == (b.off, b.width, b.scale, b.space is None)
            for a, b in zip(first.segs, other.segs, strict=True)
        )
        if not same:
            for lay in layouts:
                block_layout(spaces, lay, f"{where} combines tensors whose channels are laid out differently")
            return None
        for a, b in zip(first.segs, other.segs, strict=True):
            if a.space is not None:
                spaces.union(a.space, b.space, where)
    return Layout(axis, first.segs)


def need_blocks(spaces: Spaces, layout: Layout, block: int, where: str) -> bool:
    """Channels pass only in whole blocks of `block` positions (GroupNorm groups): align, or block."""
    if block <= 1:
        return True
    for s in layout.segs:
        per_block = Fraction(block) / s.scale
        if s.off % block or s.width % block or per_block.denominator != 1:
            block_layout(spaces, layout, f"{where} normalises groups of {block} channels that cut across "
                                         "these channel groups")
            return False
    for s in layout.segs:
        if s.space is not None:
            spaces.need_unit(s.space, int(Fraction(block) / s.scale))
    return True


def reshape_layout(layout: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> tuple[Layout | None, int]:
    """The layout after a row-major reshape from `src` to `out`, or (None, 0) when channels mix.

    Returns the layout and, for a split, the number of channels packed into one position (else 1).
    """
    a = layout.axis
    width, pre = src[a], math.prod(src[:a])
    # An exact match first: size-1 dims (a batch-1 dummy) let several output dims share the prefix product, and
    # (1, C, 1, 1) -> (1, C) must keep C on dim 1, not read it as C channels packed into dim 0.
    for b in range(len(out)):
        if math.prod(out[:b]) == pre and out[b] == width:
            return Layout(b, layout.segs), 1
    for b in range(len(out)):
        if math.prod(out[:b]) != pre:
            continue
        if out[b] and out[b] % width == 0 and _is_prefix_product(out[b] // width, src[a + 1:]):
            return layout.scaled(b, Fraction(out[b] // width)), 1
        if out[b] and width % out[b] == 0 and _is_prefix_product(width // out[b], out[b + 1:]):
            return layout.scaled(b, Fraction(out[b], width)), width // out[b]
    return None, 0


def _is_prefix_product(factor: int, dims: tuple[int, ...]) -> bool:
    prod = 1
    for d in dims:
        prod *= d
        if prod == factor:
            return True
        if prod > factor:
            return False
    return factor == 1
