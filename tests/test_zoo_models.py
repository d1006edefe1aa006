"""The super-network zoo: every registered model runs, traces, uses only known ops, and has the stated counts.

The segment checks run a small, self-contained copy of spec §3.1's segment growth over the fx graph, so the zoo's
topology is pinned independently of the library's capture code.
"""

from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass
from functools import cache

import pytest
import torch
import torch.fx
from torch import nn

from otov3.errors import OTOError
from otov3.metrics import count_flops, count_params
from otov3.zoo import (
    DartsSuperNet,
    DemoSupNet,
    StackedUnets,
    SuperResNet,
    create_supernet,
    get_supernet_spec,
    list_supernets,
    register_supernet,
)
from otov3.zoo.darts import DARTS14_MACS_224

NAMES = list_supernets()
ALLOWED_MODULES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Upsample,
    nn.Flatten,
    nn.Linear,
    nn.Identity,
)
SHORT = {
    nn.Conv2d: "conv",
    nn.BatchNorm2d: "bn",
    nn.ReLU: "relu",
    nn.MaxPool2d: "maxpool",
    nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool2d: "globalavgpool",
    nn.Upsample: "resize",
    nn.Flatten: "flatten",
    nn.Linear: "linear",
    nn.Identity: "identity",
}


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Run this module's big forward passes on one thread, then restore the setting.

    On a small machine shared with other jobs, torch's intra-op threads spin against them: the DARTS passes
    took minutes instead of seconds (measured on 2 cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_supernet(name).eval()


@cache
def _traced(name: str) -> torch.fx.GraphModule:
    return torch.fx.symbolic_trace(_model(name))


def _dummy(name: str) -> torch.Tensor:
    return torch.randn(get_supernet_spec(name).input_shape, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_five_supernets() -> None:
    assert NAMES == ["darts14", "darts8", "demo_supnet", "stacked_unets", "super_resnet"]


def test_registry_rejects_a_duplicate_name() -> None:
    with pytest.raises(OTOError, match="'demo_supnet' is already registered"):
        register_supernet("demo_supnet", input_shape=(1, 1, 28, 28), num_classes=10, params=0, macs=0)(DemoSupNet)


def test_registry_names_the_choices_for_an_unknown_name() -> None:
    with pytest.raises(OTOError, match="unknown super-network 'resnet50'; registered: darts14, darts8"):
        create_supernet("resnet50")


def test_create_supernet_passes_keyword_overrides_to_the_factory() -> None:
    model = create_supernet("demo_supnet", num_classes=3, width=0.25)
    assert isinstance(model, DemoSupNet)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_registered_factories_build_the_documented_classes() -> None:
    expected = {
        "darts8": DartsSuperNet,
        "darts14": DartsSuperNet,
        "demo_supnet": DemoSupNet,
        "stacked_unets": StackedUnets,
        "super_resnet": SuperResNet,
    }
    assert {name: type(_model(name)) for name in NAMES} == expected


# ---------------------------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_the_default_input_gives_one_row_of_logits(name: str) -> None:
    spec = get_supernet_spec(name)
    with torch.no_grad():
        out = _model(name)(_dummy(name))
    assert out.shape == (1, spec.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_reproduces_the_eager_output(name: str) -> None:
    x = _dummy(name)
    with torch.no_grad():
        assert torch.equal(_traced(name)(x), _model(name)(x))


@pytest.mark.parametrize("name", NAMES)
def test_graph_uses_only_ops_the_tracer_knows(name: str) -> None:
    gm = _traced(name)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        assert node.op in {"placeholder", "call_module", "call_function", "output"}, node.format_node()
        if node.op == "call_module":
            module = modules[node.target]
            assert type(module) in ALLOWED_MODULES, f"{node.target}: {type(module).__name__}"
            if isinstance(module, nn.ReLU):
                assert not module.inplace, node.target
            if isinstance(module, nn.BatchNorm2d):
                assert module.affine, node.target
            if isinstance(module, nn.Upsample):
                assert (module.scale_factor, module.mode) == (2.0, "nearest"), node.target
        elif node.op == "call_function":
            assert node.target in (operator.add, torch.cat), node.format_node()
            if node.target is torch.cat:
                assert node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1
            else:
                assert all(isinstance(a, torch.fx.Node) for a in node.args), node.format_node()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_registered_and_documented_one(name: str) -> None:
    spec = get_supernet_spec(name)
    assert count_params(_model(name)) == spec.params
    assert f"{spec.params:,}" in type(_model(name)).__doc__


@pytest.mark.parametrize("name", NAMES)
def test_mac_count_is_the_registered_and_documented_one(name: str) -> None:
    spec = get_supernet_spec(name)
    assert count_flops(_model(name), _dummy(name)) == spec.macs
    assert f"{spec.macs:,}" in type(_model(name)).__doc__


def test_darts14_macs_at_imagenet_resolution_are_the_documented_ones() -> None:
    assert count_flops(_model("darts14"), torch.zeros(1, 3, 224, 224)) == DARTS14_MACS_224
    assert f"{DARTS14_MACS_224:,}" in DartsSuperNet.__doc__


# ---------------------------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class _Segment:
    ops: tuple[str, ...]
    label: str  # common module path of its ops, or the fx node name of a joint
    has_params: bool
    is_joint: bool


def _segments(name: str) -> tuple[list[_Segment], set[tuple[str, str]]]:
    """Spec §3.1 segment growth over the fx graph; returns the segments and the labelled segment edges."""
    gm = _traced(name)
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function")]
    succ: dict[str, list[str]] = {n.name: [] for n in nodes}
    pred: dict[str, list[str]] = {n.name: [] for n in nodes}
    starts = []
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for p in dict.fromkeys(n.all_input_nodes):
            if p.op == "placeholder":
                pred[n.name].append("IN")
                starts.append(n.name)
            else:
                pred[n.name].append(p.name)
                succ[p.name].append(n.name)
    for n in gm.graph.nodes:
        if n.op == "output":
            for p in n.all_input_nodes:
                succ[p.name].append("OUT")

    def joint(v: str) -> bool:
        return by_name[v].op == "call_function" or len(pred[v]) > 1

    seg_of: dict[str, int] = {}
    chains: list[list[str]] = []
    queue = deque(starts)
    while queue:
        v = queue.popleft()
        if v in seg_of:
            continue
        chain = [v]
        seg_of[v] = len(chains)
        while not joint(chain[0]) and len(succ[chain[-1]]) == 1:
            w = succ[chain[-1]][0]
            if w == "OUT" or w in seg_of or joint(w):
                break
            chain.append(w)
            seg_of[w] = len(chains)
        chains.append(chain)
        queue.extend(w for w in succ[chain[-1]] if w != "OUT")

    segments = []
    for chain in chains:
        if joint(chain[0]):
            segments.append(
                _Segment(("add" if by_name[chain[0]].target is operator.add else "cat",), chain[0], False, True)
            )
            continue
        paths = [by_name[v].target.split(".") for v in chain]
        common = []
        for parts in zip(*paths, strict=False):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        ops = tuple(SHORT[type(modules[by_name[v].target])] for v in chain)
        has_params = any(any(True for _ in modules[by_name[v].target].parameters()) for v in chain)
        segments.append(_Segment(ops, ".".join(common), has_params, False))
    edges = set()
    for sid, chain in enumerate(chains):
        if "IN" in pred[chain[0]]:
            edges.add(("IN", segments[sid].label))
        for w in succ[chain[-1]]:
            edges.add((segments[sid].label, "OUT" if w == "OUT" else segments[seg_of[w]].label))
    return segments, edges


def _gezigs(segments: list[_Segment], edges: set[tuple[str, str]]) -> set[str]:
    """Spec §3.2: segments with parameters whose outgoing segments are all joints (and exist)."""
    joints = {s.label for s in segments if s.is_joint}
    out: set[str] = set()
    for s in segments:
        targets = {b for a, b in edges if a == s.label}
        if s.has_params and targets and targets <= joints:
            out.add(s.label)
    return out


def test_demo_supnet_has_the_segments_and_gezigs_of_spec_3_4() -> None:
    segments, edges = _segments("demo_supnet")
    assert {s.label: s.ops for s in segments} == {
        "stem": ("conv", "bn", "relu"),
        "branch2": ("conv", "bn", "relu"),
        "branch3": ("maxpool", "conv", "bn", "relu"),
        "branch4": ("avgpool", "conv", "bn", "relu", "conv", "bn", "relu"),
        "cat": ("cat",),
        "fuse": ("conv", "bn", "relu"),
        "branch7": ("conv", "bn", "relu"),
        "branch8": ("conv", "bn", "relu"),
        "add": ("add",),
        "head": ("globalavgpool", "flatten", "linear"),
    }
    assert edges == {
        ("IN", "stem"),
        ("stem", "branch2"),
        ("stem", "branch3"),
        ("stem", "branch4"),
        ("branch2", "cat"),
        ("branch3", "cat"),
        ("branch4", "cat"),
        ("cat", "fuse"),
        ("fuse", "branch7"),
        ("fuse", "branch8"),
        ("branch7", "add"),
        ("branch8", "add"),
        ("add", "head"),
        ("head", "OUT"),
    }
    assert _gezigs(segments, edges) == {"branch2", "branch3", "branch4", "branch7", "branch8"}


def test_stacked_unets_has_the_22_segments_and_6_gezigs_of_the_official_graph() -> None:
    segments, edges = _segments("stacked_unets")
    adds = [s.label for s in segments if s.is_joint]
    assert len(segments) == 22
    assert sum(s.has_params for s in segments) == 13
    assert len(adds) == 7
    assert sorted(s.label for s in segments if not s.has_params and not s.is_joint) == ["left.up", "right.up"]
    # Name the Adds by their official vertex numbers (spec §3.5) through the segments that feed them.
    official = {}
    for side, (a1, a2, a3) in {"left": (20, 25, 34), "right": (57, 62, 71)}.items():
        official[next(b for a, b in edges if a == f"{side}.bottom")] = a1
        official[next(b for a, b in edges if a == f"{side}.up")] = a2
        official[next(b for a, b in edges if a == f"{side}.dec")] = a3
    official[next(b for a, b in edges if a == "left.out")] = 76
    assert sorted(official.values()) == [20, 25, 34, 57, 62, 71, 76]
    named = {(official.get(a, a), official.get(b, b)) for a, b in edges}
    assert named == {
        ("IN", "left.enc0"),
        ("left.enc0", "left.enc1"),
        ("left.enc0", 34),
        ("left.enc1", "left.enc2"),
        ("left.enc1", 25),
        ("left.enc2", "left.bottom"),
        ("left.enc2", 20),
        ("left.bottom", 20),
        (20, "left.up"),
        ("left.up", 25),
        (25, "left.dec"),
        ("left.dec", 34),
        (34, "left.out"),
        ("left.out", 76),
        ("IN", "right.enc0"),
        ("right.enc0", "right.enc1"),
        ("right.enc0", 71),
        ("right.enc1", "right.enc2"),
        ("right.enc1", 62),
        ("right.enc2", "right.bottom"),
        ("right.enc2", 57),
        ("right.bottom", 57),
        (57, "right.up"),
        ("right.up", 62),
        (62, "right.dec"),
        ("right.dec", 71),
        (71, "right.out"),
        ("right.out", 76),
        (76, "head"),
        ("head", "OUT"),
    }
    assert {s.label: s.ops for s in segments if not s.is_joint} == {
        "left.enc0": ("conv", "bn", "relu", "conv"),  # 0-3
        "left.enc1": ("maxpool", "conv", "relu", "conv", "relu", "bn"),  # 4-9
        "left.enc2": ("maxpool", "conv", "conv"),  # 10-12
        "left.bottom": ("maxpool", "conv", "conv", "resize"),  # 13-19
        "left.up": ("resize",),  # 24
        "left.dec": ("conv", "conv", "bn", "relu", "resize"),  # 26-33
        "left.out": ("relu", "conv", "relu", "bn"),  # 35-38
        "right.enc0": ("conv", "bn", "relu"),  # 39-41
        "right.enc1": ("conv", "conv", "relu"),  # 42-44
        "right.enc2": ("conv", "relu", "bn", "conv", "conv"),  # 45-49
        "right.bottom": ("conv", "conv", "conv", "resize"),  # 50-56
        "right.up": ("resize",),  # 61
        "right.dec": ("conv", "conv", "bn", "relu", "resize"),  # 63-70
        "right.out": ("relu", "conv", "relu", "bn"),  # 72-75
        "head": ("globalavgpool", "flatten", "linear"),  # 77-82
    }
    assert _gezigs(segments, edges) == {
        "left.bottom",
        "left.dec",
        "left.out",
        "right.bottom",
        "right.dec",
        "right.out",
    }


def test_super_resnet_candidates_and_projections_are_the_gezigs() -> None:
    segments, edges = _segments("super_resnet")
    blocks = [f"stages.{i}.{j}" for i in range(3) for j in range(2)]
    expected = {f"{b}.k{k}" for b in blocks for k in (3, 5, 7)} | {"stages.1.0.shortcut", "stages.2.0.shortcut"}
    assert _gezigs(segments, edges) == expected
    assert {s.ops for s in segments if s.label.endswith(".k5")} == {("conv", "bn", "relu", "conv", "bn")}


def test_darts8_every_parametric_candidate_is_a_gezig() -> None:
    segments, edges = _segments("darts8")
    gezigs = _gezigs(segments, edges)
    # 6 normal cells × 14 edges × 4 conv candidates + 2 reduction cells × (8 stride-2 edges × 5 + 6 edges × 4)
    assert len(gezigs) == 6 * 14 * 4 + 2 * (8 * 5 + 6 * 4)
    kinds = {g.rsplit(".", 1)[1] for g in gezigs}
    assert kinds == {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "skip_connect"}
    assert {s.ops for s in segments if s.label.endswith("sep_conv_3x3")} == {
        ("relu", "conv", "conv", "bn", "relu", "conv", "conv", "bn")
    }
