"""Carry out a `SubnetPlan` on a deep copy of the captured GraphModule (spec §6.1)."""

from __future__ import annotations

import copy
import operator
import warnings

import torch
import torch.fx

from otov3.capture.fx_capture import Captured
from otov3.errors import ConstructionError
from otov3.graph.types import JointRule, TraceGraph
from otov3.subnet.plan import SubnetPlan
from otov3.subnet.slicing import slice_input_channels, slice_node_channels, slice_output_channels


def _zeros_like_recorded(graph: torch.fx.Graph, ref: torch.fx.Node | None, ref_batch: int | None,
                         value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
    """A node producing zeros of the recorded shape; the batch dimension follows the model input."""
    shape = tuple(value.shape)
    with graph.inserting_before(before):
        if ref is not None and shape and shape[0] == ref_batch:
            batch = graph.call_method("size", (ref, 0))
            return graph.call_method("new_zeros", (ref, (batch, *shape[1:])), {"dtype": value.dtype})
        if ref is not None:
            return graph.call_method("new_zeros", (ref, shape), {"dtype": value.dtype})
        return graph.call_function(torch.zeros, (shape,), {"dtype": value.dtype})


def _live_cat_sibling(node: torch.fx.Node, zero_names: set[str], trace: TraceGraph) -> torch.fx.Node | None:
    """A kept operand of a channel concat that is fed a zero block, to take every other dimension from."""
    vert = trace.vertices.get(node.name)
    if vert is None or vert.traits.joint is not JointRule.CAT:
        return None
    return next((i for i in node.all_input_nodes if i.name not in zero_names and i.name in trace.vertices), None)


def _zeros_beside(graph: torch.fx.Graph, sibling: torch.fx.Node, value: torch.Tensor,
                  before: torch.fx.Node) -> torch.fx.Node:
    """Zeros with the recorded channel count and the sibling's other sizes, so any resolution and batch work."""
    with graph.inserting_before(before):
        size = graph.call_method("size", (sibling,))
        batch = graph.call_function(operator.getitem, (size, 0))
        rest = graph.call_function(operator.getitem, (size, slice(2, None)))
        shape = graph.call_function(operator.add, ((batch, int(value.shape[1])), rest))
        return graph.call_method("new_zeros", (sibling, shape), {"dtype": value.dtype})


def _operands(node: torch.fx.Node) -> list[torch.fx.Node]:
    args = list(node.args) + [node.kwargs[k] for k in ("input", "other") if k in node.kwargs]
    return [a for a in args if isinstance(a, torch.fx.Node)]


def _drop_inputs(node: torch.fx.Node, drop: set[str], rule: JointRule) -> None:
    if rule is JointRule.CAT:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        kept = [t for t in tensors if t.name not in drop]
        if len(kept) == 1:
            node.replace_all_uses_with(kept[0])
            return
        if node.args:
            node.args = (kept, *node.args[1:])
        else:
            node.kwargs = {**node.kwargs, "tensors": kept}
        return
    # Add(y, 0) = y and y - 0 = y: the node becomes its remaining operand.
    remaining = [a for a in _operands(node) if a.name not in drop]
    node.replace_all_uses_with(remaining[0])


def apply_plan(captured: Captured, trace: TraceGraph, plan: SubnetPlan) -> torch.fx.GraphModule:
    """A new GraphModule with zero vertices removed, joints bypassed and dependent channels cut."""
    with warnings.catch_warnings():  # torch deprecates copying export's LeafSpec input/output specs; harmless
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        gm = copy.deepcopy(captured.gm)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    values = captured.values
    ref = next((n for n in graph.nodes if n.op == "placeholder" and isinstance(values.get(n.name), torch.Tensor)),
               None)
    ref_batch = values[ref.name].shape[0] if ref is not None and values[ref.name].dim() > 0 else None

    def fill(node: torch.fx.Node, zero_names: set[str]) -> None:
        cat_sibling = _live_cat_sibling(node, zero_names, trace)
        for z in list(node.all_input_nodes):
            if z.name in zero_names:
                zeros = (_zeros_beside(graph, cat_sibling, values[z.name], node) if cat_sibling is not None
                         else _zeros_like_recorded(graph, ref, ref_batch, values[z.name], node))
                node.replace_input_with(z, zeros)

    for name, zero_inputs in plan.zero_fill.items():
        fill(nodes[name], set(zero_inputs))
    output = next(n for n in graph.nodes if n.op == "output")
    fill(output, set(plan.zero))
    for name, zero_inputs in plan.drop.items():
        _drop_inputs(nodes[name], set(zero_inputs), trace.vertices[name].traits.joint)

    sliced: dict[int, tuple[str, tuple[int, ...]]] = {}
    sliced_tensors: dict[str, tuple[int, tuple[int, ...]]] = {}

    def cut(name: str, keep: tuple[int, ...], how: str) -> None:
        node = nodes[name]
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            slice_node_channels(gm, node, keep, how, sliced_tensors)  # aten op: get_attr tensors (export)
            return
        if node.op != "call_module":
            return
        module = gm.get_submodule(node.target)
        stateless = not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())
        if stateless and not isinstance(module, torch.nn.GroupNorm):  # a GroupNorm's group count follows
            return  # element-wise, pooling: nothing to cut, so one instance may serve calls of any width
        previous = sliced.get(id(module))
        if previous is not None:
            if previous != (how, keep):
                raise ConstructionError(
                    f"Module '{node.target}' is called at several places that need different channels cut; "
                    "give each call its own module."
                )
            return
        sliced[id(module)] = (how, keep)
        (slice_output_channels if how == "out" else slice_input_channels)(module, keep)

    for name, keep in plan.out_keep.items():
        if trace.vertices[name].traits.per_channel_params or trace.vertices[name].module:
            cut(name, keep, "out")
    for name, keep in plan.in_keep.items():
        cut(name, keep, "in")

    for node in graph.nodes:
        if isinstance(node.type, str):  # string annotations (PEP 563 models) break TorchScript and codegen
            node.type = None
    graph.eliminate_dead_code(is_impure_node=_mutates if captured.backend == "export" else None)
    gm.delete_all_unused_submodules()
    _delete_unused_tensors(gm)  # e.g. the LayerScale factor of a removed block, read by get_attr only
    graph.lint()
    gm.recompile()
    return gm


def _mutates(node: torch.fx.Node) -> bool:
    """Export graphs are functional eval-mode graphs: only a mutating op must stay when its result is unused.

    fx counts ops that may draw random numbers as impure, which would keep a removed attention branch alive
    (`scaled_dot_product_attention` has a dropout argument, 0 in eval mode).
    """
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.is_mutable
    return node.is_impure()


def _delete_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Drop parameters and buffers that neither a `get_attr` nor a called module reads any more."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
    for name, _ in named:
        if name in used or any(name.startswith(f"{m}.") for m in called):
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
