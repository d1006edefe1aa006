"""Turn a captured fx graph into the plain `TraceGraph` the graph algorithms work on (spec §2.1)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.fx
from torch import nn

import otov3.ops.blocks  # noqa: F401  (fills the op table)
import otov3.ops.handlers  # noqa: F401
from otov3.capture.fx_capture import Captured
from otov3.graph.types import IN, OUT, TraceGraph, Vertex
from otov3.ops.registry import OpContext, lookup, unknown_traits


def _is_data_value(value: Any) -> bool:
    """A tensor, or a (nested) tuple/list holding at least one tensor and otherwise only tensors or None.

    `nn.MultiheadAttention` returns `(out, None)`, `nn.LSTM` returns `(out, (h, c))`: both are data.
    """
    if isinstance(value, torch.Tensor):
        return True
    if not isinstance(value, list | tuple) or not value:
        return False
    leaves = list(_leaves(value))
    return any(isinstance(v, torch.Tensor) for v in leaves) and all(
        v is None or isinstance(v, torch.Tensor) for v in leaves
    )


def _leaves(value: Any):
    if isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


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


def _side_params(
    gm: torch.fx.GraphModule, node: torch.fx.Node, data: set[str], values: dict[str, Any]
) -> tuple[list[torch.nn.Parameter], bool]:
    """Parameters an op reads through non-data operands (get_attr, possibly behind views or casts), in
    argument order.

    Returns the parameters and whether the side chain maps zero parameters to zero operands (views, reshapes,
    casts, scaling do; `exp` does not), i.e. whether zeroing them zeroes those operands. Shape arithmetic
    (`x.size(0)`, symbolic sizes) carries no parameter values and is skipped.
    """
    found: list[torch.nn.Parameter] = []
    preserving = True
    seen: set[str] = set()

    def side_inputs(n: torch.fx.Node) -> list[torch.fx.Node]:
        return [i for i in reversed(n.all_input_nodes) if i.name not in data and i.op != "placeholder"]

    stack = side_inputs(node)
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.op == "get_attr":
            attr = _param_or_none(gm, n.target)
            if attr is not None:
                found.append(attr)
            continue
        if n.name in values and not isinstance(values[n.name], torch.Tensor):
            continue  # sizes and other non-tensor values
        if n.op in ("call_function", "call_method", "call_module"):
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            handler = lookup(n, module)
            try:
                traits = handler.describe(_side_context(n, module)) if handler else None
            except Exception:  # a handler that needs shapes: be conservative
                traits = None
            if traits is None or not traits.zero_preserving:
                preserving = False
            stack.extend(side_inputs(n))
    return found, preserving


def _side_context(node: torch.fx.Node, module: nn.Module | None) -> OpContext:
    return OpContext(node=node, module=module, in_shapes=(), out_shape=None, tensor_operands=1)


def _param_or_none(gm: torch.fx.GraphModule, target: str) -> torch.nn.Parameter | None:
    try:
        return gm.get_parameter(target)
    except AttributeError:
        return None


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

    users_of: dict[int, int] = {}  # id(parameter) -> number of data vertices reading it
    keys_of: dict[str, set[int]] = {}
    for node in gm.graph.nodes:
        if node.name not in data:
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        occurrences = _node_occurrences(node)
        data_inputs = [i for i in occurrences if i.name in data or i.op == "placeholder"]
        is_data = {i.name for i in data_inputs}
        side, side_preserving = _side_params(gm, node, data, values)
        side_trainable = [p for p in side if p.requires_grad and id(p) in canon]
        ctx = OpContext(
            node=node,
            module=module,
            in_shapes=tuple(_shape(values.get(i.name)) for i in data_inputs),
            out_shape=_shape(values.get(node.name)),
            tensor_operands=sum(1 for i in occurrences if isinstance(values.get(i.name), torch.Tensor)),
            path=str(node.target) if module is not None else node.meta.get("otov3_module"),
            data_args=tuple(k for k, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.name in is_data),
            side_params=tuple(canon[id(p)] for p in side_trainable),
            side_zeroing=bool(side_trainable) and side_preserving,
        )
        handler = lookup(node, module)
        traits = handler.describe(ctx) if handler else unknown_traits(node, module)
        macs = handler.macs(ctx) if handler else 0

        owned: list[nn.Parameter] = [*(module.parameters() if module is not None else ()), *side]
        trainable, frozen = [], []
        for p in owned:
            name = canon.get(id(p))
            if name is None:
                continue
            (trainable if p.requires_grad else frozen).append(name)
            param_sizes[name] = tuple(p.shape)
        # A parameter-free module reused at several places computes independently per call: not shared.
        keys_of[node.name] = {id(p) for p in owned}
        for k in keys_of[node.name]:
            users_of[k] = users_of.get(k, 0) + 1
        absorbing = tuple(
            node.args[k].name for k in traits.absorbing
            if k < len(node.args) and isinstance(node.args[k], torch.fx.Node) and node.args[k].name in is_data
        )
        vertices[node.name] = Vertex(
            name=node.name,
            op=op_name(node, module),
            traits=traits,
            params=tuple(dict.fromkeys(trainable)),
            frozen_params=tuple(dict.fromkeys(frozen)),
            module=ctx.path,
            inputs=tuple(IN if i.op == "placeholder" else i.name for i in data_inputs),
            in_shapes=ctx.in_shapes,
            out_shape=ctx.out_shape,
            macs=int(macs),
            absorbing=absorbing,
        )
        for i in data_inputs:
            link(IN if i.op == "placeholder" else i.name, node.name)
    for name, keys in keys_of.items():
        if any(users_of[k] > 1 for k in keys):
            vertices[name] = replace(vertices[name], shared=True)

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
