"""Unit tests of the search-space layer.

Most tests build small `TraceGraph`s by hand (plain data, no torch) and check segment growth (spec §3.1), GeZIG
admission (§3.2) and validity (§3.3). The last part walks the whole op-handler table with torch (spec §2.2).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import warnings
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

import otov3.ops.handlers  # noqa: F401  (fills the op table)
from otov3 import OTO
from otov3.graph.channels import cat_cut_blocked, follow_channels
from otov3.graph.gezig import GroupSpec, SliceRef, partition
from otov3.graph.segments import VIRTUAL, DependencyGraph, build_dependency_graph
from otov3.graph.types import IN, OUT, ChannelRule, JointRule, OpTraits, TraceGraph, Vertex, VertexKind
from otov3.graph.validity import starved_segments, valid_basic, valid_strict
from otov3.ops.registry import OpContext, lookup, table_entries

# --- a tiny DSL for hand-built trace graphs ----------------------------------------------------------------

CONV = OpTraits(VertexKind.STEM, zeroing=True, channel=ChannelRule.CONSUME)
RELU = OpTraits(VertexKind.ACCESSORY, zero_preserving=True, channel=ChannelRule.PASS)
SIGMOID = OpTraits(VertexKind.ACCESSORY, zero_preserving=False, channel=ChannelRule.PASS)
ADD = OpTraits(VertexKind.JOINT, joint=JointRule.ADD)
CAT = OpTraits(VertexKind.JOINT, joint=JointRule.CAT, zero_preserving=True)
MUL = OpTraits(VertexKind.MERGE, reason="multiplies activations")
WEIRD = OpTraits(VertexKind.UNKNOWN, reason="'Weird' is not in otov3's op table")


def bn_traits(name: str) -> OpTraits:
    per_channel = (f"{name}.weight", f"{name}.bias")
    return OpTraits(VertexKind.ACCESSORY, zeroing=True, channel=ChannelRule.PASS, per_channel_params=per_channel)


def V(
    name: str,
    traits: OpTraits,
    *src: str,
    ch: int = 4,
    params: bool | None = None,
    frozen: bool = False,
    shape: tuple[int, ...] | None = None,
) -> Vertex:
    """A vertex with data inputs `src` (default: the model input) and `ch` output channels (or `shape`).

    Stems and affine norms own `<name>.weight` and `<name>.bias` (trainable, or frozen with `frozen=True`).
    """
    owns = params if params is not None else traits.zeroing
    names = (f"{name}.weight", f"{name}.bias") if owns else ()
    return Vertex(
        name=name,
        op=name.rstrip("0123456789"),
        traits=traits,
        params=() if frozen else names,
        frozen_params=names if frozen else (),
        inputs=src or (IN,),
        out_shape=shape or (1, ch, 8, 8),
    )


def shared(v: Vertex, owner: str) -> Vertex:
    """The same vertex, but consuming the parameters of `owner` (weight sharing)."""
    return dataclasses.replace(v, params=(f"{owner}.weight", f"{owner}.bias"))


def graph(*vertices: Vertex, outputs: tuple[str, ...], in_ch: int = 3) -> TraceGraph:
    """Wire vertices by their `inputs`; fill in input shapes and dim-0 parameter sizes."""
    shape = {IN: (1, in_ch, 8, 8)} | {v.name: v.out_shape for v in vertices}
    succ: dict[str, list[str]] = {IN: []}
    pred: dict[str, list[str]] = {}
    verts, sizes = {}, {}
    for v in vertices:
        verts[v.name] = dataclasses.replace(v, in_shapes=tuple(shape[i] for i in v.inputs))
        for i in dict.fromkeys(v.inputs):
            succ.setdefault(i, []).append(v.name)
            pred.setdefault(v.name, []).append(i)
        for p in (*v.params, *v.frozen_params):
            sizes.setdefault(p, (v.out_shape[1],))
    for o in outputs:
        succ.setdefault(o, []).append(OUT)
        pred.setdefault(OUT, []).append(o)
    return TraceGraph(verts, {k: tuple(x) for k, x in succ.items()}, {k: tuple(x) for k, x in pred.items()}, sizes)


def analyse(trace: TraceGraph) -> tuple[DependencyGraph, dict[tuple[str, ...], GroupSpec]]:
    dep = build_dependency_graph(trace)
    return dep, {g.vertices: g for g in partition(trace, dep)}


def segments(dep: DependencyGraph) -> list[tuple[str, ...]]:
    return [s.vertices for s in dep.segments]


def seg(dep: DependencyGraph, vertex: str) -> int:
    return dep.seg_of[vertex]


# --- segment growth (spec §3.1) ----------------------------------------------------------------------------


def _residual() -> TraceGraph:
    """stem-relu feeds two branches and the Add directly; the Add is followed by relu-head into OUT."""
    return graph(
        V("stem", CONV),
        V("relu0", RELU, "stem"),
        V("conv1", CONV, "relu0"),
        V("bn1", bn_traits("bn1"), "conv1"),
        V("conv2", CONV, "relu0"),
        V("add", ADD, "bn1", "conv2", "relu0"),
        V("relu3", RELU, "add"),
        V("head", CONV, "relu3", ch=2),
        outputs=("head",),
    )


def test_a_joint_is_a_one_vertex_segment_and_the_next_segment_starts_after_it():
    dep, _ = analyse(_residual())
    assert segments(dep) == [("stem", "relu0"), ("conv1", "bn1"), ("conv2",), ("add",), ("relu3", "head")]
    add = dep.segments[seg(dep, "add")]
    assert add.is_joint and add.vertices == ("add",)
    assert set(dep.pred[add.id]) == {seg(dep, "conv1"), seg(dep, "conv2"), seg(dep, "stem")}
    assert dep.succ[add.id] == (seg(dep, "head"),)


def test_a_multi_outgoing_vertex_ends_its_segment_and_stays_in_it():
    dep, _ = analyse(_residual())
    stem = dep.segments[seg(dep, "relu0")]
    assert stem.vertices == ("stem", "relu0") and stem.last == "relu0"
    assert set(dep.succ[stem.id]) == {seg(dep, "conv1"), seg(dep, "conv2"), seg(dep, "add")}


def test_a_segment_runs_into_out():
    trace = graph(V("conv", CONV), V("bn", bn_traits("bn"), "conv"), V("relu", RELU, "bn"), outputs=("relu",))
    dep, groups = analyse(trace)
    assert segments(dep) == [("conv", "bn", "relu")]
    assert dep.outputs == (0,) and dep.succ[0] == (VIRTUAL,) and dep.pred[0] == (VIRTUAL,)
    only = groups[("conv", "bn", "relu")]
    assert not only.is_gezig and only.reason == "feeds the model output"


def test_in_with_several_successors_starts_one_segment_per_successor():
    trace = graph(V("a", CONV), V("b", CONV), V("add", ADD, "a", "b"), V("head", CONV, "add"), outputs=("head",))
    dep, groups = analyse(trace)
    assert segments(dep) == [("a",), ("b",), ("add",), ("head",)]
    assert dep.pred[seg(dep, "a")] == (VIRTUAL,) and dep.pred[seg(dep, "b")] == (VIRTUAL,)
    assert groups[("a",)].is_gezig and groups[("b",)].is_gezig


def test_a_non_joint_vertex_with_two_data_inputs_becomes_a_one_vertex_segment():
    two_inputs = OpTraits(VertexKind.ACCESSORY, zero_preserving=True, channel=ChannelRule.PASS)
    trace = graph(
        V("a", CONV),
        V("b", CONV),
        V("relu_a", RELU, "a"),
        V("mix", two_inputs, "relu_a", "b"),
        V("relu", RELU, "mix"),
        V("head", CONV, "relu"),
        outputs=("head",),
    )
    dep, _ = analyse(trace)
    assert segments(dep) == [("a", "relu_a"), ("b",), ("mix",), ("relu", "head")]
    assert dep.segments[seg(dep, "mix")].is_joint
    assert trace.data_in_degree("mix") == 2


# --- validity (spec §3.3) ----------------------------------------------------------------------------------


def _darts() -> TraceGraph:
    """Node n1 sums edges e01, e02 from the stem; node n2 sums e12 (from n1) and e03 (from the stem)."""
    return graph(
        V("s0", CONV),
        V("s0r", RELU, "s0"),
        V("e01", CONV, "s0r"),
        V("e02", CONV, "s0r"),
        V("n1", ADD, "e01", "e02"),
        V("e12", CONV, "n1"),
        V("e03", CONV, "s0r"),
        V("n2", ADD, "e12", "e03"),
        V("head", CONV, "n2", ch=2),
        outputs=("head",),
    )


def test_strict_validity_detects_a_starved_joint_that_still_feeds_later_nodes():
    dep, groups = analyse(_darts())
    assert {g.vertices for g in groups.values() if g.is_gezig} == {("e01",), ("e02",), ("e12",), ("e03",)}
    e01, e02, e12, e03 = (seg(dep, v) for v in ("e01", "e02", "e12", "e03"))

    starving = {e01, e02}  # n1 loses every input but still feeds n2 through e12
    assert valid_basic(dep, starving)
    assert starved_segments(dep, starving) == {seg(dep, "n1"), e12}
    assert not valid_strict(dep, starving)

    # Removing e12 too makes n1 dead code rather than starved: strict validity is not monotone (spec §3.3).
    assert valid_strict(dep, starving | {e12})
    assert valid_strict(dep, {e01}) and valid_strict(dep, {e03})
    assert not valid_basic(dep, {e12, e03}), "n2 lost both inputs: no path to OUT"
    assert not valid_basic(dep, {e01, e02, e03})
    assert not valid_strict(dep, {e12, e03})


def test_validity_of_the_empty_removal_and_of_a_graph_without_gezigs():
    dep, _ = analyse(_darts())
    assert valid_basic(dep, ()) and valid_strict(dep, ()) and starved_segments(dep, ()) == set()


# --- GeZIG admission (spec §3.2) -------------------------------------------------------------------------


def _dense(order: tuple[str, ...]) -> TraceGraph:
    """Operands of widths 3 (conv3), 5 (conv5) and 4 (conv4-sigmoid, not removable) go Concat->BN->ReLU->Conv."""
    branches = {"conv3": V("conv3", CONV, "sr", ch=3), "conv5": V("conv5", CONV, "sr", ch=5)}
    return graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        *branches.values(),
        V("conv4", CONV, "sr"),
        V("sig4", SIGMOID, "conv4"),
        V("cat", CAT, *order, ch=12),
        V("bn", bn_traits("bn"), "cat", ch=12),
        V("relu", RELU, "bn", ch=12),
        V("conv", CONV, "relu", ch=6),
        outputs=("conv",),
    )


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (("conv3", "conv5", "sig4"), {"conv3": (0, 3), "conv5": (3, 8), "rest": [(8, 12)]}),
        (("conv3", "sig4", "conv5"), {"conv3": (0, 3), "conv5": (7, 12), "rest": [(3, 7)]}),
        (("sig4", "conv5", "conv3"), {"conv3": (9, 12), "conv5": (4, 9), "rest": [(0, 4)]}),
    ],
    ids=["3-5-4", "3-4-5", "4-5-3"],
)
def test_concat_operand_gets_the_bn_slices_it_feeds_and_the_complement_keeps_the_rest(order, expected):
    trace = _dense(order)
    path = follow_channels(trace, "cat")
    assert path.blocked is None and path.passes == ("bn", "relu") and path.consumers == ("conv",)

    _, groups = analyse(trace)
    for op in ("conv3", "conv5"):
        g = groups[(op,)]
        start, stop = expected[op]
        assert g.is_gezig
        assert g.members == (
            SliceRef(f"{op}.weight"),
            SliceRef(f"{op}.bias"),
            SliceRef("bn.weight", start, stop),
            SliceRef("bn.bias", start, stop),
        )
    sig = groups[("conv4", "sig4")]
    assert not sig.is_gezig and "sig4" in sig.reason and "does not map zero to zero" in sig.reason
    rest = groups[("bn", "relu", "conv")]
    assert not rest.is_gezig
    bn_members = [(m.param, m.start, m.stop) for m in rest.members if m.param.startswith("bn.")]
    assert bn_members == [("bn.weight", a, b) for a, b in expected["rest"]] + [
        ("bn.bias", a, b) for a, b in expected["rest"]
    ]
    assert SliceRef("conv.weight") in rest.members and SliceRef("conv.bias") in rest.members


def test_nested_concat_operands_get_their_offsets_in_the_outer_concat():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("c", CONV, "sr", ch=3),
        V("a", CONV, "sr", ch=2),
        V("b", CONV, "sr", ch=2),
        V("inner", CAT, "a", "b"),
        V("outer", CAT, "c", "inner", ch=7),
        V("bn", bn_traits("bn"), "outer", ch=7),
        V("conv", CONV, "bn", ch=2),
        outputs=("conv",),
    )
    _, groups = analyse(trace)
    for op, (start, stop) in {"c": (0, 3), "a": (3, 5), "b": (5, 7)}.items():
        assert groups[(op,)].is_gezig
        assert SliceRef("bn.weight", start, stop) in groups[(op,)].members, groups[(op,)].members


def test_concat_operand_after_a_flatten_gets_the_expanded_feature_interval():
    flatten = OpTraits(VertexKind.ACCESSORY, zero_preserving=True, channel=ChannelRule.FLATTEN)
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("a", CONV, "sr", shape=(1, 2, 2, 2)),
        V("b", CONV, "sr", shape=(1, 2, 2, 2)),
        V("cat", CAT, "a", "b", shape=(1, 4, 2, 2)),
        V("flat", flatten, "cat", shape=(1, 16)),
        V("bn", bn_traits("bn"), "flat", shape=(1, 16)),
        V("fc", CONV, "bn", shape=(1, 2)),
        outputs=("fc",),
    )
    _, groups = analyse(trace)
    assert SliceRef("bn.weight", 0, 8) in groups[("a",)].members, groups[("a",)].members
    assert SliceRef("bn.weight", 8, 16) in groups[("b",)].members, groups[("b",)].members


def test_concat_whose_channels_cannot_be_followed_admits_its_operands_with_a_zero_block_instead():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("a", CONV, "sr", ch=2),
        V("b", CONV, "sr", ch=2),
        V("cat", CAT, "a", "b"),
        V("add", ADD, "cat", "sr"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    _, groups = analyse(trace)
    reason = cat_cut_blocked(trace, "cat", {"a"})
    assert "'cat'" in reason and "'add'" in reason, reason
    for op in ("a", "b"):  # the sub-network feeds the concat zeros: exact, and nothing downstream is cut
        g = groups[(op,)]
        assert g.is_gezig and g.members == (SliceRef(f"{op}.weight"), SliceRef(f"{op}.bias"))


def test_shared_weights_in_two_parallel_branches_merge_into_one_gezig():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("p", CONV, "sr"),
        shared(V("q", CONV, "sr"), "p"),
        V("add", ADD, "p", "q"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    dep, groups = analyse(trace)
    merged = groups[("p", "q")]
    assert merged.is_gezig and merged.segments == (seg(dep, "p"), seg(dep, "q"))
    assert merged.members == (SliceRef("p.weight"), SliceRef("p.bias"))
    assert sum(1 for g in groups.values() for m in g.members if m.param == "p.weight") == 1


def test_shared_weights_with_one_inadmissible_user_go_to_the_complement_together():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("p", CONV, "sr"),
        shared(V("q", CONV, "sr"), "p"),
        V("sq", SIGMOID, "q"),
        V("add", ADD, "p", "sq"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    _, groups = analyse(trace)
    merged = groups[("p", "q", "sq")]
    assert not merged.is_gezig and "shares parameters" in merged.reason and "sq" in merged.reason


def test_a_frozen_only_segment_is_not_a_group():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("frozen", CONV, "sr", frozen=True),
        V("live", CONV, "sr"),
        V("add", ADD, "frozen", "live"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    dep, groups = analyse(trace)
    assert not any(seg(dep, "frozen") in g.segments for g in groups.values())
    assert not any(m.param.startswith("frozen.") for g in groups.values() for m in g.members)
    assert groups[("live",)].is_gezig


def test_a_segment_feeding_a_mul_or_an_unknown_op_is_never_a_gezig():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("g", CONV, "sr"),
        V("mul", MUL, "g", "sr"),
        V("u", CONV, "mul"),
        V("weird", WEIRD, "u", params=True),  # an unknown op holding parameters
        V("v", CONV, "mul"),
        V("add", ADD, "weird", "v"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    _, groups = analyse(trace)
    assert "dropping an input is not exact" in groups[("g",)].reason and "'mul'" in groups[("g",)].reason
    assert "dropping an input is not exact" in groups[("u",)].reason and "'weird'" in groups[("u",)].reason
    assert not groups[("weird",)].is_gezig and "no op that outputs zero" in groups[("weird",)].reason
    assert [vs for vs, g in groups.items() if g.is_gezig] == [("v",)]


# --- the op-handler table (spec §2.2) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _In:
    """A placeholder for a tensor input of a representative call."""

    name: str


_INPUTS = {
    "x4": lambda: torch.randn(2, 4, 6, 6),
    "x3": lambda: torch.randn(2, 4, 6),
    "x3t": lambda: torch.randn(2, 6, 4),
    "x5": lambda: torch.randn(2, 4, 4, 4, 4),
    "x2": lambda: torch.randn(2, 4),
    "idx": lambda: torch.randint(0, 3, (2, 5)),
    "x2t": lambda: torch.randn(4, 2),
    "w_lin": lambda: torch.randn(3, 6),
    "w_conv1": lambda: torch.randn(3, 4, 1),
    "w_conv2": lambda: torch.randn(3, 4, 1, 1),
    "w_conv3": lambda: torch.randn(3, 4, 1, 1, 1),
    "w_convt1": lambda: torch.randn(4, 3, 1),
    "w_convt2": lambda: torch.randn(4, 3, 1, 1),
    "w_convt3": lambda: torch.randn(4, 3, 1, 1, 1),
}
X4, X3, X3T, X5, X2, IDX, X2T, W_LIN, W_C1, W_C2, W_C3, W_T1, W_T2, W_T3 = (_In(k) for k in _INPUTS)

# Tried in order; the first call that runs is the entry's representative call.
_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((X4,), {}),
    ((X4, X4), {}),
    ((X4, 1), {}),
    ((X4, 2), {}),
    (([X4, X4], 1), {}),
    ((X4, 1, 2), {}),
    ((X4, (0, 2, 3, 1)), {}),
    ((X4, (2, -1)), {}),
    ((X4,), {"scale_factor": 2}),
    ((X4, (1, 1, 1, 1)), {}),
    ((X4, torch.float32), {}),
    ((X4, 2, 4, 6, 6), {}),
    ((X3, 2), {}),
    ((X5, 2), {}),
    ((X3, X3T), {}),
    (("bij,bjk->bik", X3, X3T), {}),
    ((X2, X2T), {}),
    ((X3,), {}),
    ((X3, X3, X3), {}),
    ((X4, (6,)), {}),
    ((X4, None, None), {"training": True}),
    ((X4, W_LIN), {}),
    ((X3, W_C1), {}),
    ((X4, W_C2), {}),
    ((X5, W_C3), {}),
    ((X3, W_T1), {}),
    ((X4, W_T2), {}),
    ((X5, W_T3), {}),
    ((IDX, W_LIN), {}),
]
_CONSTRUCTORS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((4,), {}),
    ((2,), {}),
    ((6,), {}),
    ((4, 6), {}),
    ((2, 4), {}),
    ((4, 6, 3), {}),
    ((1, 0.0), {}),
    ((1, (2, 2)), {}),
    ((), {"scale_factor": 2}),
    ((4, 2), {}),
]
_MODULE_INPUTS = [X4, X3, X5, X2, IDX, X3T]


def _inputs_of(args: Any) -> list[_In]:
    found: list[_In] = []
    torch.fx.node.map_aggregate(args, lambda a: found.append(a) if isinstance(a, _In) else None)
    return list(dict.fromkeys(found))


def _graph_call(kind: str, target: Any, args: tuple, kwargs: dict, module: nn.Module | None):
    """One-op GraphModule: placeholders for the `_In`s, then the call. Returns (gm, node, placeholders)."""
    g = torch.fx.Graph()
    ins = _inputs_of((args, kwargs))
    ph = {i: g.placeholder(i.name) for i in ins}
    sub = lambda a: torch.fx.node.map_aggregate(a, lambda v: ph[v] if isinstance(v, _In) else v)  # noqa: E731
    root = nn.Module()
    if kind == "module":
        root.add_module("m", module)
        node = g.call_module("m", sub(args), sub(kwargs))
    elif kind == "function":
        node = g.call_function(target, sub(args), sub(kwargs))
    else:
        node = g.call_method(target, sub(args), sub(kwargs))
    g.output(node)
    return torch.fx.GraphModule(root, g), node, ins


def _run(gm: torch.fx.GraphModule, ins: list[_In], values: dict[_In, torch.Tensor]) -> dict[str, Any]:
    recorded: dict[str, Any] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            recorded[n.name] = out = super().run_node(n)
            return out

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        Rec(gm).run(*(values[i] for i in ins))
    return recorded


def _representative(kind: str, key: Any):
    """The first candidate call of this table key that runs: (gm, node, module, inputs, recorded values)."""
    if kind == "module":
        classes = [key, *key.__subclasses__()] if key.__name__.startswith("_") else [key]
        candidates = []
        for cls in classes:
            for c_args, c_kwargs in _CONSTRUCTORS:
                try:
                    module = cls(*c_args, **c_kwargs)
                except Exception:
                    continue
                candidates.extend((module, ((x,), {})) for x in _MODULE_INPUTS)
                candidates.append((module, ((X3T, X3T, X3T), {"need_weights": False})))  # attention
    else:
        calls = [((X4, *c[0]), c[1]) for c in [((), {}), ((X4,), {}), ((1,), {}), ((2, -1), {}),
                                                  ((torch.float32,), {}), ((0, 2, 3, 1), {}), ((1, 2), {}),
                                                  ((2, 4, 6, 6), {})]]
        calls += [((X3, X3T), {})]
        candidates = [(None, c) for c in (_CALLS if kind == "function" else calls)]
    for module, (args, kwargs) in candidates:
        if module is not None:
            module.eval()
        try:  # codegen or the call itself may reject the candidate's arguments
            gm, node, ins = _graph_call(kind, key, args, kwargs, module)
            values = {i: _INPUTS[i.name]() for i in ins}
            recorded = _run(gm, ins, values)
        except Exception:
            continue
        return gm, node, module, ins, values, recorded
    raise AssertionError(f"no representative call runs for table entry {key!r}; add one to _CALLS/_CONSTRUCTORS")


def _context(node: torch.fx.Node, module: nn.Module | None, recorded: dict[str, Any]) -> OpContext:
    """The OpContext build_trace_graph makes: data inputs in operand order, their shapes, the output shape."""
    occ: list[torch.fx.Node] = []
    torch.fx.node.map_aggregate((node.args, node.kwargs), lambda a: occ.append(a) if isinstance(a, torch.fx.Node)
                                else None)
    shape = lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else None  # noqa: E731
    return OpContext(
        node=node,
        module=module,
        in_shapes=tuple(shape(recorded[i.name]) for i in occ),
        out_shape=shape(recorded[node.name]),
        tensor_operands=sum(1 for i in occ if isinstance(recorded[i.name], torch.Tensor)),
        path="m" if module is not None else None,
    )


def _entries() -> list[tuple[str, Any]]:
    table = table_entries()
    return [
        *(("module", k) for k in table["modules"]),
        # aten entries (torch.export graphs) read parameters through get_attr: tests/test_capture_export.py walks them
        *(("function", k) for k in table["functions"] if not isinstance(k, torch._ops.OpOverload)),
        *(("method", k) for k in table["methods"]),
    ]


def _id(entry: tuple[str, Any]) -> str:
    kind, key = entry
    name = key if isinstance(key, str) else f"{getattr(key, '__module__', '')}.{getattr(key, '__name__', key)}"
    return f"{kind}:{name}"


def _all_zero(value: Any) -> bool:
    if value is None:  # e.g. the attention weights nn.MultiheadAttention did not compute
        return True
    if isinstance(value, torch.Tensor):
        return bool((value == 0).all())
    return all(_all_zero(v) for v in value)


@pytest.mark.parametrize("entry", _entries(), ids=_id)
def test_every_op_table_entry_describes_a_representative_call_with_valid_traits(entry):
    kind, key = entry
    gm, node, module, ins, values, recorded = _representative(kind, key)
    handler = lookup(node, module)
    assert handler is table_entries()[f"{kind}s"][key], "lookup does not return the table entry"
    ctx = _context(node, module, recorded)
    traits = handler.describe(ctx)
    macs = handler.macs(ctx)

    assert isinstance(traits, OpTraits)
    assert isinstance(traits.kind, VertexKind) and isinstance(traits.channel, ChannelRule)
    assert traits.joint is None or isinstance(traits.joint, JointRule)
    assert (traits.joint is not None) == (traits.kind is VertexKind.JOINT), "joints and only joints carry a rule"
    if traits.kind in (VertexKind.MERGE, VertexKind.UNKNOWN):
        assert isinstance(traits.reason, str) and traits.reason
    assert isinstance(macs, int) and macs >= 0
    own = {f"m.{n}" for n, _ in module.named_parameters()} if module is not None else set()
    assert set(traits.per_channel_params) <= own, "per-channel params must be the op's own parameters"
    if traits.zeroing:
        assert own, "a zeroing op must own trainable parameters"
    if traits.resettable:
        assert getattr(module, "running_mean", None) is not None

    # The claims are true of the op: zero parameters give zero; a zero input gives zero.
    if traits.zeroing:
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()
        assert _all_zero(_run(gm, ins, values)[node.name]), "zeroing op with zero parameters gave non-zero"
    if traits.zero_preserving and all(v.is_floating_point() for v in values.values()):
        zeros = {i: torch.zeros_like(v) for i, v in values.items()}
        assert _all_zero(_run(gm, ins, zeros)[node.name]), "zero-preserving op maps zero to non-zero"
    for position in traits.absorbing:  # a zero operand there gives a zero output, whatever the others
        operand = node.args[position]
        zeroed = {i: torch.zeros_like(v) if i.name == operand.name else v for i, v in values.items()}
        assert _all_zero(_run(gm, ins, zeroed)[node.name]), f"op is not absorbing in operand {position}"


def test_conv_macs_count_one_multiply_per_weight_per_output_position():
    gm, node, module, ins, values, recorded = _representative("module", nn.Conv2d)
    ctx = _context(node, module, recorded)
    out = recorded[node.name]
    expected = math.prod(out.shape[1:]) * module.in_channels * math.prod(module.kernel_size)
    assert lookup(node, module).macs(ctx) == expected


def test_a_subclass_of_a_registered_module_inherits_its_entry():
    class MyConv(nn.Conv2d):
        pass

    node = _graph_call("module", None, (X4,), {}, MyConv(4, 4, 1))[1]
    assert lookup(node, MyConv(4, 4, 1)) is table_entries()["modules"][nn.Conv2d]


def test_add_and_mul_with_a_constant_are_accessories_not_joints():
    for target, zero_preserving in ((operator.add, False), (operator.mul, True), (operator.sub, False)):
        gm, node, ins = _graph_call("function", target, (X4, 3.0), {}, None)
        values = {i: _INPUTS[i.name]() for i in ins}
        traits = lookup(node, None).describe(_context(node, None, _run(gm, ins, values)))
        assert traits.kind is VertexKind.ACCESSORY and traits.zero_preserving is zero_preserving, target


def test_a_constant_divided_by_an_activation_is_not_zero_preserving():
    gm, node, ins = _graph_call("function", operator.truediv, (1.0, X4), {}, None)
    values = {i: _INPUTS[i.name]() for i in ins}
    traits = lookup(node, None).describe(_context(node, None, _run(gm, ins, values)))
    assert not traits.zero_preserving


class _Transposed(nn.Module):
    """Two concat operands whose channels are moved to dim 2 by transpose(1, 2); C == H keeps the shape."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 2, 1)
        self.b = nn.Conv2d(4, 2, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.head(self.bn(y.transpose(1, 2)))


def test_a_transpose_that_moves_the_channel_axis_does_not_pass_channel_intervals():
    oto = OTO(_Transposed(), torch.randn(2, 3, 4, 4))
    assert oto.space.trace.vertices["transpose"].traits.channel is not ChannelRule.PASS
    assert not any(s.name.startswith("bn.") for g in oto.groups for s in g.slices)


def test_cat_along_a_non_channel_axis_is_a_merge_not_a_joint():
    gm, node, ins = _graph_call("function", torch.cat, ([X4, X4], 2), {}, None)
    values = {i: _INPUTS[i.name]() for i in ins}
    traits = lookup(node, None).describe(_context(node, None, _run(gm, ins, values)))
    assert traits.kind is VertexKind.MERGE and "dim 2" in traits.reason


# --- unknown ops end to end ----------------------------------------------------------------------------------


class Weird(nn.Module):
    """A custom op otov3 cannot know: a leaf with parameters and data-dependent control flow."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.mean() > 0 else -x


class WithUnknowns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 1)
        self.weird = Weird(4)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.weird(self.a(x)) + torch.erf(self.b(x)) + self.c(x)
        return self.head(y.mean((2, 3)))


def test_unknown_ops_become_unknown_with_a_reason_and_never_form_a_gezig():
    oto = OTO(WithUnknowns(), torch.randn(2, 3, 8, 8), leaf_modules=[Weird])
    verts = oto.space.trace.vertices
    weird, erf = verts["weird"], verts["erf"]
    assert weird.traits.kind is VertexKind.UNKNOWN and "'Weird' is not in otov3's op table" in weird.traits.reason
    assert erf.traits.kind is VertexKind.UNKNOWN and "'erf' is not in otov3's op table" in erf.traits.reason
    assert {g.name for g in oto.groups} == {"c"}
    reasons = {g.name: g.reason for g in oto.complementary}
    assert "'weird'" in reasons["a"] and "'erf'" in reasons["b"]
    assert "no op that outputs zero" in reasons["weird"]


def test_dead_by_products_of_a_structure_go_with_it_even_through_their_own_joint():
    """Attention with a rotary-style Add on the query: zeroing the value zeroes the sublayer, and everything
    that only fed it (query, key, their Add, the pre-norm) goes with it; the residual stream stays."""
    absorbing = OpTraits(VertexKind.MERGE, absorbing=(0, 1), reason="multiplies activations")
    no_bias = OpTraits(VertexKind.STEM, zeroing=True, zero_preserving=True, channel=ChannelRule.CONSUME)
    trace = graph(
        V("stem", CONV),
        V("x", RELU, "stem"),
        V("ln", bn_traits("ln"), "x"),
        V("q", CONV, "ln"),
        V("k", CONV, "ln"),
        V("v", no_bias, "ln"),
        V("qa", RELU, "q"),
        V("qb", RELU, "q"),
        V("rot", ADD, "qa", "qb"),
        V("scores", absorbing, "rot", "k"),
        V("soft", SIGMOID, "scores"),
        V("mix", absorbing, "soft", "v"),
        V("o", no_bias, "mix"),
        V("add", ADD, "x", "o"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    _, groups = analyse(trace)
    (sublayer,) = [g for g in groups.values() if g.is_gezig]
    assert {"ln", "q", "k", "v", "rot", "o"} <= set(sublayer.vertices), sublayer.vertices
    assert "x" not in sublayer.vertices and "add" not in sublayer.vertices


def test_a_segment_whose_result_is_never_used_is_not_said_to_feed_the_output():
    trace = graph(
        V("stem", CONV),
        V("sr", RELU, "stem"),
        V("unused", CONV, "sr"),
        V("b", CONV, "sr"),
        V("add", ADD, "sr", "b"),
        V("head", CONV, "add", ch=2),
        outputs=("head",),
    )
    _, groups = analyse(trace)
    assert groups[("unused",)].reason == "never reaches the model output (its result is not used)"
    assert groups[("head",)].reason == "feeds the model output"
    assert groups[("b",)].is_gezig
