"""Properties of the search space on random super-networks (spec §2-§3), checked with hypothesis.

Each test draws a random DAG (tests/supernets.py) and checks one claim: the segments partition the trace, the groups
partition the trainable scalars, GeZIGs are zero-invariant, own exactly the norm channels their concat blocks reach
(or none when the concat is zero-filled), leave only into erasable joints and never from a sigmoid, and the validity
check is monotone and agrees with a brute-force reachability oracle on the trace graph.

OTOV3_PROPERTY_EXAMPLES=N overrides the number of examples per test (for quick local runs).
"""

from __future__ import annotations

import copy
import itertools
import operator
import os
import random
from collections import Counter
from collections.abc import Iterator

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from equivalence import assert_zero_invariant
from otov3 import OTO
from otov3.graph.segments import DependencyGraph
from otov3.graph.types import IN, OUT, TraceGraph
from otov3.graph.validity import valid_basic, valid_strict
from supernets import random_supernets

PROPERTY = settings(
    max_examples=int(os.environ.get("OTOV3_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXHAUSTIVE_UP_TO = 8  # segments; beyond that, random subsets
RANDOM_SUBSETS = 48
ZERO_CHECKS = 2


def _gezig_segments(oto: OTO) -> list[int]:
    return sorted({sid for g in oto.groups for sid in g.segments})


def _subsets(items: list, seed: int) -> Iterator[frozenset]:
    """Every subset of a small list, else a fixed number of random ones (always including empty and full)."""
    if len(items) <= EXHAUSTIVE_UP_TO:
        for r in range(len(items) + 1):
            yield from (frozenset(c) for c in itertools.combinations(items, r))
        return
    rng = random.Random(seed)
    yield frozenset()
    yield frozenset(items)
    for _ in range(RANDOM_SUBSETS):
        yield frozenset(x for x in items if rng.random() < rng.random())


def _reaches_out_without(trace: TraceGraph, dep: DependencyGraph, removed: frozenset[int]) -> bool:
    """Oracle: delete the removed segments' vertices from the trace graph; is every OUT predecessor reachable?"""
    dead = {v for sid in removed for v in dep.segments[sid].vertices}
    seen, stack = {IN}, [IN]
    while stack:
        u = stack.pop()
        for w in trace.successors(u):
            if w not in dead and w not in seen:
                seen.add(w)
                stack.append(w)
    return all(p in seen for p in trace.predecessors(OUT))


@PROPERTY
@given(random_supernets())
def test_segments_partition_the_trace_vertices(example):
    model, x = example
    oto = OTO(model, x)
    trace, dep = oto.space.trace, oto.space.dependency

    counts = Counter(v for s in dep.segments for v in s.vertices)
    assert set(counts) == set(trace.vertices), "segments must cover exactly the trace vertices"
    assert [v for v, n in counts.items() if n != 1] == [], "a vertex lies in several segments"
    assert IN not in counts and OUT not in counts
    for s in dep.segments:
        assert [dep.seg_of[v] for v in s.vertices] == [s.id] * len(s.vertices)
        if s.is_joint:
            assert len(s.vertices) == 1, f"joint segment {s} has several vertices"
        for u, w in itertools.pairwise(s.vertices):  # a segment is a chain of the trace graph
            assert trace.successors(u) == (w,), f"{u} inside segment {s.id} has successors {trace.successors(u)}"
            assert trace.predecessors(w) == (u,), f"{w} inside segment {s.id} has preds {trace.predecessors(w)}"


@PROPERTY
@given(random_supernets())
def test_each_trainable_scalar_lies_in_exactly_one_group(example):
    model, x = example
    oto = OTO(model, x)
    named = dict(model.named_parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]  # shared parameters once
    cover = {id(p): torch.zeros(p.shape, dtype=torch.int64) for p in trainable}

    covered = 0
    for g in (*oto.groups, *oto.complementary):
        for s in g.slices:
            assert s.param is named[s.name], f"slice {s.name} of {g.name} is not the model's parameter"
            counter = cover[id(s.param)]
            (counter if s.index is None else counter[s.index]).add_(1)
            covered += s.numel()

    for name, p in named.items():
        c = cover[id(p)]
        assert torch.all(c == 1), f"{name}: per-element group counts {c.flatten().tolist()}"
    assert covered == sum(p.numel() for p in trainable)


@PROPERTY
@given(random_supernets(), st.data())
def test_every_gezig_is_zero_invariant_in_train_and_eval_mode(example, data):
    model, x = example
    oto = OTO(model, x)
    names = [g.name for g in oto.groups]
    # Up to ZERO_CHECKS GeZIGs per example (each check rebuilds the OTO on a copy); hypothesis picks which.
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=ZERO_CHECKS, unique=True)) if names else []
    inputs = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    for name in chosen:
        for train_mode in (True, False):
            assert_zero_invariant(model, x, name, inputs, train_mode)


_STEMS = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)
# Ops a removed Concat block may pass on its way to a stem (spec §6.1 pass 2), by the generator's vocabulary.
_CHANNEL_PASSING_MODULES = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d,
                            nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)
_CHANNEL_PASSING_FUNCTIONS = (torch.relu, torch.cat)
_CUT, _EITHER, _BLOCKED = "cut", "cut or zero-filled", "zero-filled"


class _Perturbed(torch.fx.Interpreter):
    """Records every node's output, adding large noise to chosen channel blocks of chosen nodes.

    With `clean` values given, every stem returns its clean output: the noise then travels only along
    stem-free paths, which is where a removed Concat operand's channels have to be cut.
    """

    def __init__(
        self, gm: torch.fx.GraphModule, noisy: dict[str, list[tuple[int, int]]], clean: dict | None = None
    ) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.noisy, self.clean, self.values = noisy, clean, {}

    def run_node(self, n: torch.fx.Node):
        out = super().run_node(n)
        if self.clean is not None and n.op == "call_module" and isinstance(self.module.get_submodule(n.target), _STEMS):
            out = self.clean[n.name]
        for start, stop in self.noisy.get(n.name, []):
            noise = torch.zeros_like(out)
            block = noise[:, start:stop]
            block.copy_(5.0 + 10.0 * torch.randn(block.shape, generator=torch.Generator().manual_seed(1)))
            out = out + noise
        self.values[n.name] = out
        return out


def _operand_blocks(cat: torch.fx.Node, operands: set[str], values: dict) -> list[tuple[int, int]]:
    """Channel blocks that the nodes `operands` occupy in the output of the concat `cat`."""
    blocks, offset = [], 0
    for arg in cat.args[0]:
        width = values[arg.name].shape[1]
        if arg.name in operands:
            blocks.append((offset, offset + width))
        offset += width
    return blocks


def _differs(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape != b.shape or not torch.equal(a, b)
    if isinstance(a, list | tuple):
        return any(_differs(u, v) for u, v in zip(a, b, strict=True))
    return False


def _channels_reached(
    gm: torch.fx.GraphModule, x: torch.Tensor, cat: torch.fx.Node, operands: set[str]
) -> tuple[set[str], dict[str, set[int]], dict]:
    """Perturb the blocks of `operands` in `cat` (the perturbation does not pass through stems).

    Returns the nodes whose value changes, for every changed 2D+ tensor the dim-1 channels that change, and the
    clean value of every node.
    """
    with torch.no_grad():
        clean = _Perturbed(gm, {})
        clean.run(x)
        noisy = _Perturbed(gm, {cat.name: _operand_blocks(cat, operands, clean.values)}, clean.values)
        noisy.run(x)
    changed, reached = set(), {}
    for name, a in clean.values.items():
        b = noisy.values[name]
        if not _differs(a, b):
            continue
        changed.add(name)
        if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape == b.shape:
            differs = (a != b).transpose(0, 1).reshape(a.shape[1], -1).any(dim=1)
            reached[name] = {int(i) for i in differs.nonzero().flatten()}
    return changed, reached, clean.values


def _cut_verdict(gm: torch.fx.GraphModule, cat: torch.fx.Node, changed: set[str], reached: dict, values: dict) -> str:
    """Whether a removed block of `cat` can be cut out downstream (spec §6.1 pass 2), read from the perturbation.

    Blocked when the block reaches the output or an op other than a per-channel op, a nested concat or a stem
    that absorbs input channels. Non-affine BN (running statistics only), weights used elsewhere and GroupNorm
    groups split by the block leave the library free to zero-fill instead.
    """
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    verdict = _CUT
    for n in gm.graph.nodes:
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(module, _STEMS):
            if not any(i.name in changed for i in n.all_input_nodes):
                continue
            if isinstance(module, nn.MultiheadAttention) or getattr(module, "groups", 1) != 1:
                return _BLOCKED
            if isinstance(module, nn.Linear) and values[n.args[0].name].dim() != 2:
                return _BLOCKED  # a Linear over tokens mixes features along the last dim, not dim 1
            if calls[n.target] > 1:
                verdict = _EITHER
            continue
        if n.name not in changed or n is cat:
            continue
        if n.op == "output":
            return _BLOCKED
        if module is not None and isinstance(module, _CHANNEL_PASSING_MODULES):
            if calls[n.target] > 1 and any(True for _ in module.parameters()):
                verdict = _EITHER
            if isinstance(module, nn.BatchNorm2d) and not module.affine:
                verdict = _EITHER
            if isinstance(module, nn.GroupNorm):
                size = module.num_channels // module.num_groups
                channels = reached.get(n.args[0].name, set())
                if any(not set(range(c - c % size, c - c % size + size)) <= channels for c in channels):
                    verdict = _EITHER
            continue
        if n.op == "call_function" and n.target in _CHANNEL_PASSING_FUNCTIONS:
            continue
        return _BLOCKED
    return verdict


@PROPERTY
@given(random_supernets())
def test_auxiliary_slices_are_exactly_the_channels_their_concat_operand_reaches(example):
    """A GeZIG feeding a Concat owns, of every affine norm before the next stems, the channels its block reaches;
    when the block cannot be cut out downstream (it meets an Add, a reshape, the output...), the concat is fed a
    zero block instead and the GeZIG owns no such slices."""
    model, x = example
    model = copy.deepcopy(model).eval()
    oto = OTO(model, x)
    gm, trace = oto.space.captured.gm, oto.space.trace
    nodes = {n.name: n for n in gm.graph.nodes}
    for g in oto.groups:
        inside = set(g.vertices)
        own = {p for v in inside for p in trace.vertices[v].params}
        claimed: dict[str, set[int]] = {}
        for s in g.slices:
            if s.index is not None and s.name not in own:
                claimed.setdefault(s.name, set()).update(range(s.index.start, s.index.stop))
        cats: dict[torch.fx.Node, set[str]] = {}
        for v in inside:
            for u in nodes[v].users:
                if u.target is torch.cat and u.name not in inside:
                    cats.setdefault(u, set()).add(v)
        required: dict[str, set[int]] = {}
        optional: list[tuple[torch.fx.Node, dict[str, set[int]]]] = []
        for cat, operands in cats.items():
            changed, reached, values = _channels_reached(gm, x, cat, operands)
            verdict = _cut_verdict(gm, cat, changed, reached, values)
            expected: dict[str, set[int]] = {}
            for n in gm.graph.nodes:
                module = gm.get_submodule(n.target) if n.op == "call_module" else None
                if isinstance(module, nn.BatchNorm2d | nn.GroupNorm) and module.affine and n.name in changed:
                    for p in ("weight", "bias"):
                        expected.setdefault(f"{n.target}.{p}", set()).update(reached[n.args[0].name])
            if verdict == _CUT:
                for k, v in expected.items():
                    required.setdefault(k, set()).update(v)
            elif verdict == _EITHER:
                optional.append((cat, expected))
        allowed = []
        for r in range(len(optional) + 1):
            for chosen in itertools.combinations(optional, r):
                union = {k: set(v) for k, v in required.items()}
                for _, expected in chosen:
                    for k, v in expected.items():
                        union.setdefault(k, set()).update(v)
                allowed.append(union)
        assert claimed in allowed, (
            f"GeZIG {g.name}: auxiliary channels {claimed}, but its blocks reach {required} (cut) plus any of "
            f"{[(c.name, e) for c, e in optional]} (cut or zero-filled)"
        )


@PROPERTY
@given(random_supernets())
def test_removal_structures_leave_only_into_erasable_joints_never_from_a_sigmoid(example):
    """Every edge leaving a GeZIG enters an Add or a channel Concat (products and gates are inside, spec §2.2),
    and never carries a sigmoid or softmax output; a branch that ends in a sigmoid is never removable."""
    model, x = example
    oto = OTO(model, x)
    gm = oto.space.captured.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    non_zero_preserving = (torch.sigmoid, torch.softmax, "softmax", "sigmoid")

    # Read from the fx graph itself, not from the op table. Dead code (a value the output never reads) may hang
    # off a GeZIG: it goes with the structure and is no joint.
    live, todo = set(), [n for n in gm.graph.nodes if n.op == "output"]
    while todo:
        n = todo.pop()
        if n.name not in live:
            live.add(n.name)
            todo.extend(n.all_input_nodes)
    for g in oto.groups:
        inside = set(g.vertices)
        leaving = [(v, u) for v in g.vertices for u in nodes[v].users if u.name not in inside and u.name in live]
        assert leaving, f"GeZIG {g.name} feeds nothing outside itself"
        for v, u in leaving:
            assert u.op == "call_function" and u.target in (operator.add, torch.cat), (
                f"GeZIG {g.name}: '{v}' feeds '{u.name}' ({u.target}), which is not an erasable joint"
            )
            assert nodes[v].target not in non_zero_preserving, f"GeZIG {g.name} ends in '{v}' ({nodes[v].target})"

    # And from the generator's own record of what it wired.
    gezig_vertices = {v for g in oto.groups for v in g.vertices}
    for name in model.joint_sigmoid_inputs:
        calls = [n for n in nodes.values() if n.op == "call_module" and n.target == f"ops.{name}"]
        assert calls, f"module ops.{name} was not traced"
        for n in calls:
            assert n.name not in gezig_vertices, f"ops.{name} (node {n.name}) ends in a sigmoid but is in a GeZIG"


@PROPERTY
@given(random_supernets(), st.integers(0, 2**16))
def test_valid_basic_is_monotone(example, seed):
    model, x = example
    oto = OTO(model, x)
    dep = oto.space.dependency
    segments = _gezig_segments(oto)
    rng = random.Random(seed)
    for small in _subsets(segments, seed):
        if valid_basic(dep, small):
            continue
        rest = [s for s in segments if s not in small]
        for extra in ([e] for e in rest) if len(segments) <= EXHAUSTIVE_UP_TO else [rng.sample(rest, len(rest) // 2)]:
            bigger = small | set(extra)
            assert not valid_basic(dep, bigger), f"valid_basic({sorted(small)}) is False but {sorted(bigger)} is valid"


@PROPERTY
@given(random_supernets(), st.integers(0, 2**16))
def test_valid_strict_implies_valid_basic(example, seed):
    model, x = example
    oto = OTO(model, x)
    dep = oto.space.dependency
    for removed in _subsets(_gezig_segments(oto), seed):
        if valid_strict(dep, removed):
            assert valid_basic(dep, removed), f"{sorted(removed)} is strict-valid but not basic-valid"


@PROPERTY
@given(random_supernets(), st.integers(0, 2**16))
def test_valid_basic_agrees_with_a_reachability_oracle_on_the_trace_graph(example, seed):
    model, x = example
    oto = OTO(model, x)
    trace, dep = oto.space.trace, oto.space.dependency
    for removed in _subsets(_gezig_segments(oto), seed):
        expected = _reaches_out_without(trace, dep, removed)
        assert valid_basic(dep, removed) == expected, f"removing segments {sorted(removed)}: oracle says {expected}"
    # The facade, by groups, agrees too.
    for chosen in _subsets(list(range(len(oto.groups))), seed):
        removed = frozenset(s for i in chosen for s in oto.groups[i].segments)
        expected = _reaches_out_without(trace, dep, removed)
        assert oto.is_valid_indices(sorted(chosen), strict=False) == expected
        assert oto.is_valid_removal([oto.groups[i] for i in chosen], strict=False) == expected
