"""Both modes at once: the GeZIGs of erasing mode and the channel groups of pruning mode over one parameter set.

A GeZIG (whole operations) and a channel group (one channel of a node group) can share scalars: channel ``j`` of a
convolution inside a removable branch belongs to both. An optimizer needs disjoint groups, so the parameters are
cut into *atoms*, the non-empty intersections ``GeZIG ∩ channel group`` (and the parts of each that the other
family does not reach). Every GeZIG and every channel group is a union of atoms; the optimizer reduces per atom
and adds atoms up into whichever family a decision is about (`otov3.optim.joint`).

A channel group that cuts a parameter along another dimension than a GeZIG's partial slice of it (a DenseNet
consumer's input columns, say) cannot be split into atoms; it is left out of the search with that reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from otov3.space import Group, GroupKind, ParamSlice


@dataclass(frozen=True)
class BothSpace:
    """The both-modes search space.

    Attributes:
        gezigs: removable operations (erasing mode's groups).
        channels: channel groups that can be searched together with the GeZIGs.
        left_out: channel groups that cannot (with the reason), kept whole.
        atoms: disjoint pieces; each GeZIG and each channel group is a union of them.
        atom_gezig: ``(A,)`` index of each atom's GeZIG, -1 for none.
        atom_channel: ``(A,)`` index of each atom's channel group, -1 for none.
    """

    gezigs: tuple[Group, ...]
    channels: tuple[Group, ...]
    left_out: tuple[tuple[Group, str], ...]
    atoms: tuple[Group, ...]
    atom_gezig: Tensor
    atom_channel: Tensor


def _span(s: ParamSlice) -> tuple[int | None, int, int]:
    """(dim, start, stop) of a slice; dim None for a whole parameter."""
    if s.index is None:
        return None, 0, 1
    start, stop, _ = s.index.indices(s.param.shape[s.dim])
    return s.dim, start, stop


def _conflicts(gezigs: tuple[Group, ...], channels: tuple[Group, ...]) -> dict[int, str]:
    """Channel groups that cut a parameter along another dimension than a GeZIG's partial slice of it."""
    partial: dict[int, tuple[int, str]] = {}
    for g in gezigs:
        for s in g.slices:
            if s.index is not None:
                partial[id(s.param)] = (s.dim, g.name)
    out = {}
    for h, c in enumerate(channels):
        for s in c.slices:
            hit = partial.get(id(s.param))
            if hit is not None and hit[0] != s.dim:
                out[h] = (f"cuts {s.name!r} along dim {s.dim}, which GeZIG {hit[1]!r} holds in part along dim "
                          f"{hit[0]}; kept whole in both modes")
                break
    return out


def build_both_space(gezigs: tuple[Group, ...], channels: tuple[Group, ...]) -> BothSpace:
    """Cuts the parameters of `gezigs` and `channels` into atoms (see the module docstring)."""
    refused = _conflicts(gezigs, channels)
    kept = tuple(c for h, c in enumerate(channels) if h not in refused)
    left_out = tuple((channels[h], why) for h, why in sorted(refused.items()))
    # Per parameter: the row dimension and, per row range, the GeZIG / channel group that owns it.
    params: dict[int, nn.Parameter] = {}
    names: dict[int, str] = {}
    claims: dict[int, list[tuple[str, int, int | None, int, int]]] = defaultdict(list)  # family, idx, dim, a, b
    for family, groups in (("g", gezigs), ("c", kept)):
        for i, group in enumerate(groups):
            for s in group.slices:
                params[id(s.param)] = s.param
                names.setdefault(id(s.param), s.name)
                claims[id(s.param)].append((family, i, *_span(s)))
    pieces: dict[tuple[int, int], list[ParamSlice]] = defaultdict(list)  # (gezig, channel) -> slices
    for key, found in claims.items():
        param, name = params[key], names[key]
        dims = {dim for _, _, dim, _, _ in found if dim is not None}
        dim = dims.pop() if dims else None
        n = 1 if dim is None else param.shape[dim]
        owner = {"g": torch.full((n,), -1, dtype=torch.long), "c": torch.full((n,), -1, dtype=torch.long)}
        for family, i, d, a, b in found:
            if d is None:
                a, b = 0, n  # a whole-parameter slice owns every row
            owner[family][a:b] = i
        label = list(zip(owner["g"].tolist(), owner["c"].tolist(), strict=True))
        start = 0
        for r in range(1, n + 1):
            if r == n or label[r] != label[start]:
                if label[start] != (-1, -1):
                    index = None if dim is None else slice(start, r)
                    pieces[label[start]].append(ParamSlice(name, param, index, dim or 0))
                start = r
    atoms, atom_gezig, atom_channel = [], [], []
    for (g, h), slices in sorted(pieces.items()):
        gezig = gezigs[g] if g >= 0 else None
        channel = kept[h] if h >= 0 else None
        name = " & ".join(x.name for x in (gezig, channel) if x is not None)
        resets = (gezig.reset_buffers if gezig is not None else ()) + (channel.reset_buffers if channel else ())
        atoms.append(Group(name, GroupKind.CHANNEL if channel else GroupKind.GEZIG, tuple(slices),
                           (gezig or channel).vertices, (gezig or channel).segment, reset_buffers=resets,
                           node_group=channel.node_group if channel else -1))
        atom_gezig.append(g)
        atom_channel.append(h)
    return BothSpace(tuple(gezigs), kept, left_out, tuple(atoms), torch.tensor(atom_gezig, dtype=torch.long),
                     torch.tensor(atom_channel, dtype=torch.long))

