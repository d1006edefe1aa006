"""Turn a captured fx graph into the plain `TraceGraph` the graph algorithms work on (spec §2.1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

import otov3.ops.handlers  # noqa: F401  (fills the op table)
from otov3.capture.fx_capture import Captured
from otov3.graph.types import IN, OUT, TraceGraph, Vertex
from otov3.ops.registry import OpContext, lookup, unknown_traits


def _is_data_value(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _node_occurrences(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Input nodes in operand order, repeated when used twice (x + x)."""
    found: list[torch.fx.Node] = []
    torch.fx.node.map_aggregate((node.args, node.kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Node)
                                else None)
    return found


def op_name(node: torch.fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def canonical_param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first qualified name (shared parameters get one name)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return names


def build_trace_graph(cap: Captured, model: nn.Module) -> TraceGraph:
    """Data vertices are the nodes reachable from the inputs whose value is a tensor (or tensors)."""
    gm, values = cap.gm, cap.values
    canon = canonical_param_names(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]

    data: set[str] = set()
    for node in gm.graph.nodes:  # topological order
        if node.op == "placeholder":
            continue
        if node.op in ("call_module", "call_function", "call_method") and _is_data_value(values.get(node.name)):
            if any(i.op == "placeholder" or i.name in data for i in node.all_input_nodes):
                data.add(node.name)

    vertices: dict[str, Vertex] = {}
    succ: dict[str, list[str]] = {IN: []}
    pred: dict[str, list[str]] = {}
    param_sizes: dict[str, tuple[int, ...]] = {}

    def link(u: str, v: str) -> None:
        if v not in succ.setdefault(u, []):
            succ[u].append(v)
            pred.setdefault(v, []).append(u)

    for node in gm.graph.nodes:
        if node.name not in data:
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        occurrences = _node_occurrences(node)
        data_inputs = [i for i in occurrences if i.name in data or i.op == "placeholder"]
        ctx = OpContext(
            node=node,
            module=module,
            in_shapes=tuple(_shape(values.get(i.name)) for i in data_inputs),
            out_shape=_shape(values.get(node.name)),
            tensor_operands=sum(1 for i in occurrences if isinstance(values.get(i.name), torch.Tensor)),
            path=str(node.target) if module is not None else None,
        )
        handler = lookup(node, module)
        traits = handler.describe(ctx) if handler else unknown_traits(node, module)
        macs = handler.macs(ctx) if handler else 0

        owned: list[nn.Parameter] = list(module.parameters()) if module is not None else []
        for i in occurrences:
            if i.op == "get_attr":
                attr = gm.get_parameter(i.target) if _is_param(gm, i.target) else None
                if attr is not None:
                    owned.append(attr)
        trainable, frozen = [], []
        for p in owned:
            name = canon.get(id(p))
            if name is None:
                continue
            (trainable if p.requires_grad else frozen).append(name)
            param_sizes[name] = tuple(p.shape)
        vertices[node.name] = Vertex(
            name=node.name,
            op=op_name(node, module),
            traits=traits,
            params=tuple(dict.fromkeys(trainable)),
            frozen_params=tuple(dict.fromkeys(frozen)),
            module=str(node.target) if module is not None else None,
            inputs=tuple(IN if i.op == "placeholder" else i.name for i in data_inputs),
            in_shapes=ctx.in_shapes,
            out_shape=ctx.out_shape,
            macs=int(macs),
        )
        for i in data_inputs:
            link(IN if i.op == "placeholder" else i.name, node.name)

    output = next(n for n in gm.graph.nodes if n.op == "output")
    for i in _node_occurrences(output):
        if i.name in data:
            link(i.name, OUT)
        elif i in placeholders:
            link(IN, OUT)
    return TraceGraph(
        vertices=vertices,
        succ={k: tuple(v) for k, v in succ.items()},
        pred={k: tuple(v) for k, v in pred.items()},
        param_sizes=param_sizes,
    )


def _is_param(gm: torch.fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False
