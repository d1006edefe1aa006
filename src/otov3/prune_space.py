"""Pruning mode (OTOv2, spec §4): channel groups bound to the user's parameters, validity, sub-network, summary.

The graph layer (`otov3.graph.zig`) names tensors by their paths in the captured module; here they become the
user's `nn.Parameter`s, and each node group's channels (or whole GroupNorm groups / attention heads) become
`Group`s of kind CHANNEL that optimizers treat like any other group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from otov3.capture.trace_graph import canonical_param_names
from otov3.graph.zig import NodeGroupSpec, ZigAnalysis, partition_channels
from otov3.graph.zig_ops import ChannelOp
from otov3.ops.channel_ops import channel_ops
from otov3.search_space import SearchSpace
from otov3.space import Group, GroupKind, ParamSlice
from otov3.subnet.prune_plan import plan_channels
from otov3.subnet.prune_surgery import apply_channel_plan


@dataclass(frozen=True)
class PruneSpace:
    """The pruning-mode search space.

    Attributes:
        analysis: the torch-free partition (node groups, layouts).
        ops: each trace vertex's channel behaviour.
        groups: removable channel groups (kind CHANNEL), node group by node group.
        complementary: everything else: node groups kept whole (with the reason) and parameters no node group
            owns; together with `groups` they cover every trainable scalar once.
        names: node-group id -> readable name.
        group_divisible: kept channel counts are rounded up to multiples of this at construction.
    """

    analysis: ZigAnalysis
    ops: dict[str, ChannelOp]
    groups: tuple[Group, ...]
    complementary: tuple[Group, ...]
    names: dict[int, str]
    group_divisible: int

    @property
    def node_groups(self) -> tuple[NodeGroupSpec, ...]:
        return self.analysis.groups


def _owner(space: SearchSpace, v: str) -> str:
    vert = space.trace.vertices[v]
    if vert.module:
        return vert.module
    owners = [p.rsplit(".", 1)[0] for p in vert.params]
    return owners[0] if owners else v


def _tensor(gm: torch.fx.GraphModule, path: str) -> torch.Tensor | None:
    owner_path, _, name = path.rpartition(".")
    try:
        return getattr(gm.get_submodule(owner_path) if owner_path else gm, name)
    except AttributeError:
        return None


def build_prune_space(space: SearchSpace, model: nn.Module, *, group_divisible: int = 1) -> PruneSpace:
    """Partition the captured model's channels into node groups and bind them (spec §4.1-§4.2)."""
    gm = space.captured.gm
    ops = channel_ops(gm, space.trace, space.captured.values)
    paths = {p for op in ops.values() for p, _ in (*op.out_rows, *op.in_cols, *op.per_channel)}
    canon = canonical_param_names(model)
    live: dict[str, tuple[str, nn.Parameter]] = {}
    for path in paths:
        t = _tensor(gm, path)
        if isinstance(t, nn.Parameter) and id(t) in canon:
            live[path] = (canon[id(t)], t)
    trainable = {p for p, (_, t) in live.items() if t.requires_grad}
    frozen = {p for p, (_, t) in live.items() if not t.requires_grad}
    analysis = partition_channels(space.trace, ops, trainable=trainable, frozen=frozen,
                                  group_divisible=group_divisible)

    names: dict[int, str] = {}
    used: dict[str, int] = {}
    for g in analysis.groups:
        name = "+".join(dict.fromkeys(_owner(space, v) for v in g.stems))
        used[name] = used.get(name, -1) + 1
        names[g.id] = name if not used[name] else f"{name}#{used[name]}"

    groups: list[Group] = []
    claimed: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # canonical name -> (dim, start, stop)
    for g in analysis.groups:
        if not g.prunable:
            continue
        macs = sum(space.trace.vertices[v].macs for v in g.stems) // max(g.num_groups, 1)
        for u in range(g.num_groups):
            slices, resets = [], []
            for m in g.members:
                name, param = live[m.param]
                start, stop = m.span(u * g.unit, (u + 1) * g.unit)
                slices.append(ParamSlice(name, param, slice(start, stop), m.dim))
                claimed[name].append((m.dim, start, stop))
            for r in g.resets:
                buf = _tensor(gm, r.param)
                if isinstance(buf, torch.Tensor):
                    start, stop = r.span(u * g.unit, (u + 1) * g.unit)
                    resets.append(buf.narrow(r.dim, start, stop - start))
            groups.append(Group(f"{names[g.id]}:{u}", GroupKind.CHANNEL, tuple(slices), g.vertices, g.id,
                                reset_buffers=tuple(resets), macs=macs, node_group=g.id))
    complementary = _complementary(model, analysis, live, names, claimed)
    return PruneSpace(analysis, ops, tuple(groups), complementary, names, group_divisible)


def _complementary(model: nn.Module, analysis: ZigAnalysis, live: dict, names: dict[int, str],
                   claimed: dict[str, list[tuple[int, int, int]]]) -> tuple[Group, ...]:
    """The rest of every trainable parameter, under the node group that keeps it (or one group for the rest)."""
    home: dict[str, NodeGroupSpec] = {}
    for g in analysis.groups:
        if not g.prunable:
            for m in g.members:
                home.setdefault(live[m.param][0], g)
    slices: dict[int, list[ParamSlice]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        dims = {d for d, _, _ in claimed.get(name, [])}
        dim = dims.pop() if dims else 0
        pos, rest = 0, []
        for _, start, stop in sorted(claimed.get(name, []), key=lambda c: c[1]):
            if start > pos:
                rest.append(slice(pos, start))
            pos = max(pos, stop)
        size = param.shape[dim] if param.dim() else 1
        if not claimed.get(name):
            rest = [None]
        elif pos < size:
            rest.append(slice(pos, size))
        key = home[name].id if name in home else -1
        slices[key].extend(ParamSlice(name, param, index, dim) for index in rest)
    out = []
    for key, found in sorted(slices.items()):
        if not found:
            continue
        spec = next((g for g in analysis.groups if g.id == key), None)
        reason = spec.reason if spec is not None else "no node group owns its channels (kept whole)"
        out.append(Group(names.get(key, "<not channel-prunable>"), GroupKind.COMPLEMENTARY, tuple(found),
                         spec.vertices if spec else (), key, reason=reason, node_group=key))
    return tuple(out)


def removed_units(groups: Iterable[Group]) -> dict[int, list[int]]:
    """Node-group id -> indices of the given channel groups within it."""
    out: dict[int, list[int]] = defaultdict(list)
    for g in groups:
        out[g.node_group].append(int(g.name.rsplit(":", 1)[1]))
    return out


def is_valid_channels(prune: PruneSpace, groups: Iterable[Group]) -> bool:
    """Any set of channel groups is valid unless it empties a node group (spec §4: keep at least one)."""
    sizes = {g.id: g.num_groups for g in prune.node_groups}
    return all(len(set(units)) < sizes[ng] for ng, units in removed_units(groups).items())


def build_channel_subnet(space: SearchSpace, prune: PruneSpace, zero: list[Group]) -> torch.fx.GraphModule:
    """The slimmer network without the zero channel groups `zero` (spec §4.4); kept modules keep their names."""
    plan = plan_channels(prune.analysis, removed_units(zero), divisible=prune.group_divisible)
    return apply_channel_plan(space.captured, prune.ops, plan)


def prune_summary(space: SearchSpace, prune: PruneSpace) -> str:
    """One row per node group: name, channel groups, parameters per group, status or reason."""
    rows = [("node group", "groups x unit", "#params/group", "status")]
    for g in prune.node_groups:
        mine = [c for c in prune.groups if c.node_group == g.id]
        per = mine[0].numel() if mine else 0
        zero = sum(1 for c in mine if c.is_zero())
        status = (f"prunable ({zero} zero)" if zero else "prunable") if g.prunable else f"kept: {g.reason}"
        rows.append((prune.names[g.id], f"{g.num_groups} x {g.unit}", f"{per:,}", status))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(3)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
        if i == 0:
            lines.append("-" * (sum(widths) + 16))
    prunable = [g for g in prune.node_groups if g.prunable]
    lines.append(f"{len(prune.groups)} channel groups in {len(prunable)} prunable node groups "
                 f"({len(prune.node_groups) - len(prunable)} kept whole); group_divisible={prune.group_divisible}; "
                 f"{len(space.trace.vertices)} traced ops, captured with {space.captured.backend}.")
    return "\n".join(lines)
