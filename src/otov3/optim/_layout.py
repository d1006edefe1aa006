"""Where each group's scalars live among an optimizer's parameters, as per-parameter row index tensors.

Every parameter a group touches is seen as ``R`` rows along one dimension (``dim``; 0 unless a channel lives
elsewhere, e.g. ConvTranspose output channels): a whole-parameter slice is one row holding everything, a dim-``k``
block ``[a, b)`` is rows ``a..b-1``. Each row belongs to one group (or to none: the sentinel ``G``). All owned
rows of all parameters are numbered globally, so per-row reductions sum into per-group totals with one
``index_add`` and per-group decisions expand back to rows with one gather, whether there are five GeZIGs or
tens of thousands of pruning-mode channels: no Python loop over groups per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from otov3.space import Group

# Chunks of the cache-blocked passes: three float32 chunks (x, g, b) of 512 KiB stay in a 2 MiB L2 cache.
CHUNK = 131072


@dataclass(frozen=True)
class Rows:
    """One parameter seen as rows: ``dim`` None means one row holding the whole parameter.

    Attributes:
        pos: the parameter's position among the optimizer's parameters.
        dim: the dimension the rows run along, or None (whole parameter).
        n: number of rows ``R``.
        offset: global number of the first row.
        group: ``(R,)`` group of each row (``G`` for rows no group owns).
    """

    pos: int
    dim: int | None
    n: int
    offset: int
    group: Tensor

    def view(self, t: Tensor) -> Tensor:
        """``t`` (the parameter or a same-shaped buffer) as an ``(R, -1)`` matrix (dim 0 / whole only)."""
        return t.reshape(self.n, -1)

    def shape_for(self, t: Tensor) -> list[int]:
        """Broadcast shape of a per-row vector against ``t``."""
        if self.dim is None:
            return [1] * t.dim()
        shape = [1] * t.dim()
        shape[self.dim] = self.n
        return shape


class RowLayout:
    """Index tensors binding the groups' slices to the optimizer's flat parameter order.

    Args:
        groups: the groups (GeZIGs or pruning-mode channels).
        params: every parameter of the optimizer, in ``param_groups`` order.

    Raises:
        ValueError: a group is empty, holds a parameter the optimizer does not own, cuts one parameter along two
            dimensions, or two groups overlap.
    """

    def __init__(self, groups: Sequence[Group], params: Sequence[nn.Parameter], *, noun: str = "group") -> None:
        position = {id(p): i for i, p in enumerate(params)}
        self.n_groups = g_none = len(groups)
        self.numel = [p.numel() for p in params]
        self.first_name: dict[int, str] = {}  # parameter position -> name of its first slice
        self.owner: dict[int, str] = {}  # parameter position -> name of the first group owning part of it
        claims: dict[int, list[tuple[int | None, int, int, int, str]]] = {}
        for g_idx, group in enumerate(groups):
            if not group.slices:
                raise ValueError(f"{noun.lower()}s[{g_idx}] ({group.name!r}) has no parameters; a {noun} must own some")
            for s in group.slices:
                pos = position.get(id(s.param))
                if pos is None:
                    raise ValueError(
                        f"{noun.lower()}s[{g_idx}] ({group.name!r}) holds parameter {s.name!r}, which is not among the "
                        "optimizer's params; pass every trainable parameter of the model"
                    )
                if s.index is None:
                    dim, start, stop = None, 0, 1
                else:
                    dim = s.dim
                    start, stop, step = s.index.indices(s.param.shape[dim])
                    if step != 1 or stop <= start:
                        raise ValueError(f"parameter slice {s.name!r}[{s.index}] of {group.name!r} is empty or strided")
                claims.setdefault(pos, []).append((dim, start, stop, g_idx, group.name))
                self.first_name.setdefault(pos, s.name)
                self.owner.setdefault(pos, group.name)
        self.rows: dict[int, Rows] = {}
        offset = 0
        for pos in sorted(claims):
            cl = claims[pos]
            dims = {c[0] for c in cl}
            name = self.first_name[pos]
            if len(dims) > 1:
                if None in dims:
                    raise ValueError(f"parameter {name!r} is owned whole by one group and in part by another "
                                     f"({cl[0][4]!r}, {cl[1][4]!r}); every scalar belongs to at most one group")
                raise ValueError(f"parameter {name!r} is cut along dimensions {sorted(dims)}; one only")
            dim = cl[0][0]
            n = 1 if dim is None else params[pos].shape[dim]
            owner = torch.full((n,), g_none, dtype=torch.long)
            for _, start, stop, g_idx, gname in cl:
                taken = owner[start:stop] != g_none
                if bool(taken.any()):
                    other = groups[int(owner[start:stop][taken][0])].name
                    raise ValueError(f"parameter {name!r} rows [{start}, {stop}) of {noun} {gname!r} overlap {noun} "
                                     f"{other!r}; every scalar belongs to at most one group")
                owner[start:stop] = g_idx
            self.rows[pos] = Rows(pos, dim, n, offset, owner)
            offset += n
        self.n_rows = offset
        if self.rows:
            self.row_group = torch.cat([r.group for r in self.rows.values()])
            self.row_param = torch.cat([torch.full((r.n,), r.pos, dtype=torch.long) for r in self.rows.values()])
        else:
            self.row_group = self.row_param = torch.zeros(0, dtype=torch.long)
        self.group_numel = torch.tensor([float(g.numel()) for g in groups], dtype=torch.float64)
        self.groups_of_param = {pos: frozenset(r.group[r.group < g_none].tolist()) for pos, r in self.rows.items()}
        self.params_of_group: list[list[int]] = [[] for _ in groups]
        for pos, gs in self.groups_of_param.items():
            for g in gs:
                self.params_of_group[g].append(pos)
        self.row_size = torch.tensor([self.numel[r.pos] // r.n for r in self.rows.values() for _ in range(r.n)],
                                     dtype=torch.float64) if self.rows else torch.zeros(0, dtype=torch.float64)
        self._pieces: dict[int, tuple[Piece, ...]] = {}
        self._piece_rows: dict[int, tuple[Tensor, Tensor]] = {}

    def params_of(self, mask: Tensor) -> list[int]:
        """Positions of the parameters holding a row of a group in ``mask`` (a ``(G,)`` bool tensor)."""
        hit = mask[self.row_group.clamp(max=self.n_groups - 1)] & (self.row_group < self.n_groups)
        return sorted(set(self.row_param[hit].tolist()))

    def pieces(self, pos: int) -> tuple[Piece, ...]:
        """`Piece`s of parameter ``pos`` for the cache-blocked passes (dim-0 or whole rows only)."""
        if pos not in self._pieces:
            rows = self.rows.get(pos)
            owned = [False] if rows is None else (rows.group < self.n_groups).tolist()
            self._pieces[pos] = chunk_rows(self.numel[pos], owned)
        return self._pieces[pos]


    def piece_rows(self, pos: int) -> tuple[Tensor, Tensor]:
        """Global rows of the reductions a cache-blocked pass of ``pos`` emits: of its one-row pieces (three dots
        each) and of its multi-row blocks, owned pieces only, in order."""
        if pos not in self._piece_rows:
            off = self.rows[pos].offset
            owned = [p for p in self.pieces(pos) if p.owned]
            single = [p.r0 for p in owned if p.r1 - p.r0 == 1]
            block = [r for p in owned if p.r1 - p.r0 > 1 for r in range(p.r0, p.r1)]
            self._piece_rows[pos] = (torch.tensor(single, dtype=torch.long) + off,
                                     torch.tensor(block, dtype=torch.long) + off)
        return self._piece_rows[pos]


@dataclass(frozen=True)
class Piece:
    """A flat range ``[lo, hi)`` of a parameter covering rows ``[r0, r1)`` (a part of one row when ``partial``);
    ``owned``: some row in it belongs to a group (its reductions are wanted)."""

    lo: int
    hi: int
    r0: int
    r1: int
    partial: bool
    owned: bool


def chunk_rows(numel: int, owned: Sequence[bool]) -> tuple[Piece, ...]:
    """Cuts a parameter of ``len(owned)`` equal rows into pieces of at most `CHUNK` scalars that never straddle
    a row boundary unless a single row is larger than `CHUNK` (then each piece is part of one row)."""
    n_rows = len(owned)
    width = numel // n_rows
    out = []
    if width >= CHUNK:
        for r in range(n_rows):
            for lo in range(r * width, (r + 1) * width, CHUNK):
                out.append(Piece(lo, min(lo + CHUNK, (r + 1) * width), r, r + 1, True, owned[r]))
    else:
        per = max(1, CHUNK // max(width, 1))
        for r0 in range(0, n_rows, per):
            r1 = min(r0 + per, n_rows)
            out.append(Piece(r0 * width, r1 * width, r0, r1, False, any(owned[r0:r1])))
    return tuple(out)
