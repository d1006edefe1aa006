"""Where each GeZIG's parameter slices live among an optimizer's parameters.

H2SPG reduces ``⟨x,d⟩``, ``‖x‖²`` and ``‖d‖²`` per slice with foreach/BLAS calls and sums them per group
(`kernels.segment_sum`); this module precomputes the index arrays that make that a few tensor ops per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from otov3.space import Group

# Chunks of the cache-blocked SGD pass: three float32 chunks (x, g, b) of 512 KiB stay in a 2 MiB L2 cache.
CHUNK = 131072


@dataclass(frozen=True)
class ActiveSet:
    """The slices of some GeZIGs, ready for batched reductions.

    Attributes:
        groups: GeZIG indices, in the order of the per-group result vectors.
        slices: slice ids (into `GroupLayout`) of those groups.
        local_group: for each slice, the position of its group in ``groups`` (for `segment_sum`).
        param_positions: optimizer positions of every parameter those slices touch.
        pieces: per parameter position, its flat range cut into chunks ``(lo, hi, k)``, where ``k`` is the
            position in ``slices`` of the slice the chunk belongs to, or -1.
    """

    groups: tuple[int, ...]
    slices: tuple[int, ...]
    local_group: Tensor
    local_list: tuple[int, ...]
    param_positions: frozenset[int]
    pieces: dict[int, tuple[tuple[int, int, int], ...]]


class GroupLayout:
    """Index arrays binding GeZIG slices to the optimizer's flat parameter order.

    Args:
        gezigs: the removable groups.
        params: every parameter of the optimizer, in ``param_groups`` order.

    Raises:
        ValueError: a GeZIG is empty, holds a parameter the optimizer does not own, or two GeZIGs overlap.
    """

    def __init__(self, gezigs: Sequence[Group], params: Sequence[nn.Parameter]) -> None:
        position = {id(p): i for i, p in enumerate(params)}
        self.numel = [p.numel() for p in params]
        self.slice_pos: list[int] = []
        self.slice_index: list[slice | None] = []
        self.slice_group: list[int] = []
        self.slice_name: list[str] = []
        self.slice_flat: list[tuple[int, int]] = []  # the slice's range in the flattened parameter
        self.group_slices: list[tuple[int, ...]] = []
        claimed: dict[int, list[tuple[int, int, str]]] = {}
        for g_idx, group in enumerate(gezigs):
            if not group.slices:
                raise ValueError(f"gezigs[{g_idx}] ({group.name!r}) has no parameters; a GeZIG must own some")
            ids = []
            for s in group.slices:
                if id(s.param) not in position:
                    raise ValueError(
                        f"gezigs[{g_idx}] ({group.name!r}) holds parameter {s.name!r}, which is not among the "
                        "optimizer's params; pass every trainable parameter of the model"
                    )
                start, stop, _ = (s.index or slice(None)).indices(s.param.shape[0] if s.param.dim() else 1)
                for other_start, other_stop, other in claimed.get(id(s.param), []):
                    if start < other_stop and other_start < stop:
                        raise ValueError(
                            f"parameter {s.name!r} rows [{start}, {stop}) of GeZIG {group.name!r} overlap "
                            f"GeZIG {other!r}; every scalar belongs to at most one group"
                        )
                claimed.setdefault(id(s.param), []).append((start, stop, group.name))
                row = s.param.numel() // s.param.shape[0] if s.param.dim() else 1
                self.slice_flat.append((start * row, stop * row))
                ids.append(len(self.slice_pos))
                self.slice_pos.append(position[id(s.param)])
                self.slice_index.append(s.index)
                self.slice_group.append(g_idx)
                self.slice_name.append(s.name)
            self.group_slices.append(tuple(ids))
        self.n_groups = len(gezigs)
        self.group_numel_list = [float(g.numel()) for g in gezigs]
        self.group_numel = torch.tensor(self.group_numel_list, dtype=torch.float64)
        self.plain_pieces = [chunk_pieces(n) for n in self.numel]
        self.active = lru_cache(maxsize=8)(self._active)

    def _active(self, groups: tuple[int, ...]) -> ActiveSet:
        slices: list[int] = []
        local: list[int] = []
        for j, g in enumerate(groups):
            slices.extend(self.group_slices[g])
            local.extend([j] * len(self.group_slices[g]))
        marks: dict[int, list[tuple[int, int, int]]] = {}
        for k, i in enumerate(slices):
            marks.setdefault(self.slice_pos[i], []).append((*self.slice_flat[i], k))
        return ActiveSet(
            groups=groups,
            slices=tuple(slices),
            local_group=torch.tensor(local, dtype=torch.long),
            local_list=tuple(local),
            param_positions=frozenset(marks),
            pieces={pos: chunk_pieces(self.numel[pos], m) for pos, m in marks.items()},
        )

    def view(self, slice_id: int, tensor: Tensor) -> Tensor:
        """The rows of ``tensor`` (a parameter or a same-shaped buffer) that slice ``slice_id`` owns."""
        index = self.slice_index[slice_id]
        return tensor if index is None else tensor[index]


def chunk_pieces(numel: int, marked: Sequence[tuple[int, int, int]] = ()) -> tuple[tuple[int, int, int], ...]:
    """Cuts ``[0, numel)`` into chunks of at most `CHUNK` scalars, none straddling a marked range.

    Args:
        numel: size of the flattened tensor.
        marked: disjoint ``(lo, hi, mark)`` ranges.

    Returns:
        ``(lo, hi, mark)`` pieces covering ``[0, numel)`` in order; unmarked pieces carry -1.
    """
    bounds: list[tuple[int, int, int]] = []
    at = 0
    for lo, hi, mark in sorted(marked):
        if lo > at:
            bounds.append((at, lo, -1))
        bounds.append((lo, hi, mark))
        at = hi
    if at < numel:
        bounds.append((at, numel, -1))
    return tuple((s, min(s + CHUNK, hi), mark) for lo, hi, mark in bounds for s in range(lo, hi, CHUNK))
