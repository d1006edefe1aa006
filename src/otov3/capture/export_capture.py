"""Capture a model with non-strict `torch.export`: aten-level ops, parameters bound to the user's by name.

torch.fx records module calls and Python-level functions and fails on models that inspect shapes in Python,
re-bind `forward` on the instance, or call functions fx cannot proxy. Non-strict `torch.export` runs the real
Python code on fake tensors instead, so it captures most of those; what it records are aten ops (`aten.linear`,
`aten.conv2d`, `aten.scaled_dot_product_attention`, ...) with `nn_module_stack` metadata, and every parameter
as a `get_attr` node whose target is the user's qualified name (spec §2 "Capture backends").

The captured GraphModule reads the user's own `nn.Parameter`s and buffers (looked up by those names), so that
the search space sees training progress like the fx capture does; the sub-network is built on a deep copy.
The graph is the eval-mode computation (batch norm uses its running statistics, dropout is the identity), with
every input dimension left dynamic where torch.export allows it (so the sub-network takes other batch sizes).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils import _pytree as pytree

import otov3.ops.aten  # noqa: F401  (fills the op table with aten entries)
from otov3.capture.fx_capture import Captured, DummyInput, preserved_modes, split_dummy_input
from otov3.capture.recording import ValueRecorder
from otov3.errors import CaptureError

aten = torch.ops.aten

# Run-time checks torch.export leaves in the graph: they return nothing, and they would keep removed nodes
# alive in a sub-network (an assertion reading a removed tensor), so capture drops them.
_CHECKS = frozenset({
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten._assert_async.msg,
    aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
})
_DROPOUTS = frozenset({aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
                       aten.feature_alpha_dropout.default})


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Every dimension of every tensor input as `Dim.AUTO` (export keeps what it can dynamic), by argument name."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    auto = torch.export.Dim.AUTO

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {i: auto for i in range(value.dim())}
        return None

    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def _failing_module(model: nn.Module, err: BaseException) -> str | None:
    """The innermost submodule of `model` whose forward is on the traceback of `err` (or of its causes)."""
    names = {id(m): name for name, m in model.named_modules()}
    found: str | None = None
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                found = names[id(owner)]
        err = err.__cause__ or err.__context__
    return found


def _first_lines(err: BaseException, limit: int = 6) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines[:limit]) if lines else type(err).__name__
    return text if len(text) <= 800 else text[:800] + " ..."


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export prints partial graphs and logs when an attempt fails; the error otov3 raises says what matters."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo",
                  "torch._export.non_strict_utils")


def _has_unit_dimension(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(t, torch.Tensor) and 1 in t.shape for t in pytree.tree_leaves((args, kwargs)))


def _attempts(model: nn.Module, args: tuple, kwargs: dict) -> Iterator[tuple[str, Any, bool]]:
    """(label, dynamic_shapes, size-oblivious) in the order tried: the most general graph first.

    torch.export specializes dimensions of size 1 (a batch-1 dummy would give a batch-1 sub-network); the
    size-oblivious attempt keeps them dynamic. Each attempt's graph is checked against the model's own output.
    """
    dynamic = _dynamic_shapes(model, args, kwargs)
    if dynamic is not None:
        if _has_unit_dimension(args, kwargs):
            yield "dynamic shapes, size-1 dimensions included", dynamic, True
        yield "dynamic shapes", dynamic, False
    yield "static shapes", None, False


def _export(model: nn.Module, args: tuple, kwargs: dict, dynamic: Any, oblivious: bool
            ) -> torch.export.ExportedProgram:
    """One non-strict export attempt, quietly (export warns about library internals, prints partial graphs)."""
    from torch.fx.experimental import _config as shape_config

    with warnings.catch_warnings(), _quiet_torch_logs(), shape_config.patch(backed_size_oblivious=oblivious):
        warnings.simplefilter("ignore")
        return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)


def _export_error(model: nn.Module, err: BaseException) -> CaptureError:
    where = _failing_module(model, err)
    owner = model.get_submodule(where) if where else model
    place = f"inside module '{where}' ({type(owner).__name__})" if where else f"in {type(model).__name__}"
    return CaptureError(
        f"torch.export (non-strict) could not capture the model: failed {place}: "
        f"{type(err).__name__}: {_first_lines(err)}"
    )


def _live_tensor(model: nn.Module, target: str) -> torch.Tensor | None:
    """The user's parameter or buffer called `target`, or None (a constant torch.export created)."""
    for get in (model.get_parameter, model.get_buffer):
        try:
            return get(target)
        except AttributeError:
            continue
    return None


def _attr(root: nn.Module, target: str) -> Any:
    owner = root
    for part in target.split("."):
        owner = getattr(owner, part)
    return owner


def _bind(exported: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """A GraphModule on the exported graph whose `get_attr` targets are the user's live tensors.

    `ExportedProgram.module()` holds parameters under the user's qualified names; whether they are the same
    objects is an implementation detail of torch.export, so they are looked up in `model` by name.
    """
    graph = exported.graph
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            live = _live_tensor(model, node.target)
            root[node.target] = live if live is not None else _attr(exported, node.target)
        elif node.op == "call_module":
            root[node.target] = exported.get_submodule(node.target)
    gm = torch.fx.GraphModule(root, graph, class_name=type(model).__name__)
    gm.meta.update(exported.meta)
    return gm


def _mutated_first_argument_only(op: torch._ops.OpOverload) -> bool:
    arguments = op._schema.arguments
    writes = [a.alias_info is not None and a.alias_info.is_write for a in arguments]
    return bool(writes) and writes[0] and not any(writes[1:])


def _functional_variant(op: Any) -> Any:
    """`aten.relu_.default` -> `aten.relu.default`: the out-of-place twin of an in-place op, or None."""
    if not isinstance(op, torch._ops.OpOverload) or not op._schema.is_mutable:
        return None
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.endswith("__") or not _mutated_first_argument_only(op):
        return None
    packet = getattr(aten, name[:-1], None)
    twin = getattr(packet, op._overloadname, None) if packet is not None else None
    if twin is None or twin._schema.is_mutable:
        return None
    return twin


def _returns_alias(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return node.op != "call_module"  # placeholders and parameters belong to the caller
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return any(r.alias_info is not None for r in target._schema.returns)
    return True  # getitem of a split, Python functions: may be views


def _out_of_place(gm: torch.fx.GraphModule) -> bool:
    """Rewrite in-place ops (`relu_`, `add_` from `nn.ReLU(inplace=True)`, `x += y`) as their functional twins.

    Only where nothing can observe the difference: the mutated tensor is a fresh op result (no view, no input,
    no parameter), nobody reads it after the mutation, and no view of it exists. Returns False when some
    mutation could not be rewritten (the caller then functionalizes the whole program).
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if not node.target._schema.is_mutable or node.target in _CHECKS:
            continue
        twin = _functional_variant(node.target)
        base = node.args[0] if node.args else None
        if twin is None or not isinstance(base, torch.fx.Node) or _returns_alias(base):
            return False
        for user in base.users:
            if user is node:
                continue
            if order[user] > order[node] or _returns_alias(user):
                return False
        node.target = twin
    return True


def _is_eval_dropout(node: torch.fx.Node) -> bool:
    """`aten.dropout(x, p, train=False)`: the identity, but marked random, so dead-code elimination keeps it."""
    if node.op != "call_function" or node.target not in _DROPOUTS:
        return False
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return train is False


def _drop_checks(gm: torch.fx.GraphModule) -> None:
    """Remove export's input guards, run-time assertions and eval-mode dropouts: not part of the computation.

    The guards only re-check input shapes; an input the graph cannot take still fails in the op that needs
    the shape, and a standalone sub-network cannot carry torch.export's private guard module.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _CHECKS and not node.users:
            graph.erase_node(node)
        elif _is_eval_dropout(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _innermost_module(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    path = path.split("@")[0].replace("[", ".").replace("]", "")  # 'layers[0]@1' -> 'layers.0'
    return path or None


def _annotate(gm: torch.fx.GraphModule) -> None:
    """`otov3_module`: the innermost module that ran the op; `otov3_data`: the value depends on an input."""
    data: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(i in data for i in node.all_input_nodes):
            data.add(node)
        node.meta["otov3_data"] = node in data
        if node.op == "call_function":
            path = _innermost_module(node)
            if path is not None:
                node.meta["otov3_module"] = path


def flat_inputs(gm: torch.fx.GraphModule, args: tuple, kwargs: dict) -> list[Any]:
    """The graph's placeholder values for a call `gm(*args, **kwargs)`, in placeholder order."""
    spec = getattr(gm, "_in_spec", None)
    if spec is None:
        return [*args, *kwargs.values()]
    from torch.fx import _pytree as fx_pytree

    args_and_kwargs = (spec.type is tuple and spec.num_children == 2 and spec.child(0).type is tuple
                       and spec.child(1).type is dict)  # how torch.export records a call with keywords
    return list(fx_pytree.tree_flatten_spec((tuple(args), kwargs) if args_and_kwargs else list(args), spec))


def _explain_failure(n: torch.fx.Node, err: Exception, values: dict[str, Any]) -> str:
    where = n.meta.get("otov3_module")
    return (f"Running the exported graph on dummy_input failed at node '{n.name}' ({n.target}"
            f"{f', in module {where!r}' if where else ''}): {_first_lines(err)}")


def _all_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _functional_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """`program.module()` without in-place ops (rewritten where safe, else the program is functionalized)."""
    exported = program.module()
    if _out_of_place(exported):
        return exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = program.run_decompositions({}).module()  # functionalize: in-place ops on views or inputs
    if not _out_of_place(exported):
        raise CaptureError("torch.export produced a graph that modifies tensors in place; otov3 cannot analyse "
                           "it. Rewrite the in-place operations (x += y -> x = x + y).")
    return exported


def _difference(reference: Any, other: Any) -> float:
    """max |a - b| / max |a| over the tensors of two outputs (inf when their structures differ)."""
    ref, got = pytree.tree_leaves(reference), pytree.tree_leaves(other)
    if len(ref) != len(got):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, got, strict=True):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            a, b = a.detach().double(), b.detach().double()
            worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    return worst


def capture_export(model: nn.Module, dummy_input: DummyInput) -> Captured:
    """Export `model` (non-strict, eval mode), bind it to the user's tensors and record every node's value.

    Dimensions are kept dynamic where torch.export can (the sub-network then takes other batch sizes and
    lengths), and the exported graph must reproduce the model's output on `dummy_input` (else the next, more
    static attempt is used). The model is left exactly as it was: its modules' training flags are restored, and
    its parameters and buffers keep their objects and values (checked; export runs the forward on fake tensors).

    Raises:
        CaptureError: torch.export failed (the message names the innermost module on the failing call), or
            no exported graph reproduces the model's output.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model)!r}")
    args, kwargs = split_dummy_input(dummy_input)
    before = [(name, id(t), t._version) for name, t in _all_tensors(model)]
    failure: CaptureError | None = None
    for label, dynamic, oblivious in _attempts(model, args, kwargs):
        with preserved_modes(model):
            try:
                exported = _functional_module(_export(model, args, kwargs, dynamic, oblivious))
            except CaptureError:
                raise
            except Exception as err:  # noqa: BLE001 (the next attempt is more static; the last error is reported)
                failure = _export_error(model, err)
                failure.__cause__ = err
                continue
        gm = _bind(exported, model)
        _drop_checks(gm)
        _annotate(gm)
        recorder = ValueRecorder(gm, _explain_failure)
        with preserved_modes(model), torch.no_grad():
            recorder.run(*flat_inputs(gm, args, kwargs), enable_io_processing=False)
            difference = _difference(model(*args, **kwargs), gm(*args, **kwargs))
        if difference <= 1e-5:
            _check_unchanged(model, before)
            return Captured(gm, args, kwargs, recorder.values, backend="export")
        failure = CaptureError(f"the graph torch.export recorded with {label} differs from the model's output by "
                               f"{difference:.3g} (relative) on dummy_input")
    _check_unchanged(model, before)
    assert failure is not None
    raise failure


def _check_unchanged(model: nn.Module, before: list[tuple[str, int, int]]) -> None:
    after = {name: (id(t), t._version) for name, t in _all_tensors(model)}
    changed = [name for name, key, version in before if after.get(name) != (key, version)]
    if changed:
        raise CaptureError(f"torch.export modified the model's tensors {changed[:4]}; please report this model.")
