"""Build the search space of a model: capture -> trace graph -> dependency graph -> bound groups."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from otov3.capture.backends import capture_model
from otov3.capture.fx_capture import Captured, DummyInput
from otov3.capture.trace_graph import build_trace_graph, canonical_param_names
from otov3.errors import CaptureError, SearchSpaceError
from otov3.graph.gezig import GroupSpec, partition
from otov3.graph.segments import DependencyGraph, build_dependency_graph
from otov3.graph.types import TraceGraph
from otov3.space import Group, GroupKind, ParamSlice


@dataclass(frozen=True)
class SearchSpace:
    """Everything OTO knows about a model's structure."""

    captured: Captured
    trace: TraceGraph
    dependency: DependencyGraph
    gezigs: tuple[Group, ...]
    complementary: tuple[Group, ...]


def _owner_names(trace: TraceGraph, v: str) -> list[str]:
    """The module path of a vertex, or for a function reading parameters (F.layer_norm, `gamma * x`) their
    owners' paths (`blocks.0.norm`, `blocks.0.layer_scale`), or the vertex name."""
    vert = trace.vertices[v]
    if vert.module:
        return [vert.module]
    owners = [p.removesuffix(".weight").removesuffix(".bias") for p in vert.params]
    return list(dict.fromkeys(owners)) or [v]


def _group_name(trace: TraceGraph, spec: GroupSpec) -> str:
    parts = [n for v in spec.vertices if trace.vertices[v].params for n in _owner_names(trace, v)]
    parts = parts or [n for v in spec.vertices for n in _owner_names(trace, v)]
    return "+".join(dict.fromkeys(parts))


def _bind(model: nn.Module, trace: TraceGraph, spec: GroupSpec, name: str, params: dict[str, nn.Parameter]) -> Group:
    slices = tuple(
        ParamSlice(m.param, params[m.param], None if m.whole else slice(m.start, m.stop)) for m in spec.members
    )
    resets = []
    for v in spec.reset_vertices:
        module = model.get_submodule(trace.vertices[v].module)
        if getattr(module, "running_mean", None) is not None:
            resets.append(module.running_mean)
    return Group(
        name=name,
        kind=GroupKind.GEZIG if spec.is_gezig else GroupKind.COMPLEMENTARY,
        slices=slices,
        vertices=spec.vertices,
        segment=spec.segments[0],
        reason=spec.reason,
        reset_buffers=tuple(resets),
        macs=sum(trace.vertices[v].macs for v in spec.vertices),
        segments=spec.segments,
    )


def build_search_space(
    model: nn.Module, dummy_input: DummyInput, *, leaf_modules: Sequence[type] = (), capture: str = "auto"
) -> SearchSpace:
    """Trace `model`, grow segments, and partition its trainable parameters into groups (spec §2-§3).

    `capture` chooses the backend: "fx", "export" (non-strict torch.export), or "auto" (fx, then export).
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__!r}")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise SearchSpaceError(
            f"{type(model).__name__} has no trainable parameters, so there is nothing to search or train. "
            "Unfreeze the parameters (requires_grad=True) of the operations you want searched."
        )
    captured = capture_model(model, dummy_input, capture_backend=capture, leaf_modules=leaf_modules)
    trace = build_trace_graph(captured, model)
    dependency = build_dependency_graph(trace)
    specs = partition(trace, dependency)

    by_name = {n: p for n, p in model.named_parameters()}
    names: dict[str, int] = {}
    gezigs, complementary = [], []
    for spec in specs:
        name = _group_name(trace, spec)
        if name in names:
            names[name] += 1
            name = f"{name}#{names[name]}"
        else:
            names[name] = 0
        group = _bind(model, trace, spec, name, by_name)
        (gezigs if group.is_gezig else complementary).append(group)

    reached = {s.name for g in (*gezigs, *complementary) for s in g.slices}
    canon = set(canonical_param_names(model).values())
    missed = [n for n in trainable if n in canon and n not in reached]
    if missed:
        warnings.warn(
            f"{len(missed)} trainable parameter(s) are not used by the traced forward pass and are left out of "
            f"the search: {', '.join(missed[:8])}{' ...' if len(missed) > 8 else ''}. They stay trainable "
            "as a complementary group.",
            stacklevel=3,
        )
        complementary.append(
            Group(
                name="<unused>",
                kind=GroupKind.COMPLEMENTARY,
                slices=tuple(ParamSlice(n, trainable[n]) for n in missed),
                vertices=(),
                segment=-1,
                reason="not used by the traced forward pass",
            )
        )
    return SearchSpace(captured, trace, dependency, tuple(gezigs), tuple(complementary))
