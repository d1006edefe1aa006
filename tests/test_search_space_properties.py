"""Properties of the search space on random super-networks (spec §2-§3), checked with hypothesis.

Each test draws a random DAG (tests/supernets.py) and checks one claim: the segments partition the trace, the groups
partition the trainable scalars, GeZIGs are zero-invariant, non-zero-preserving or gated segments are never GeZIGs,
and the validity check is monotone and agrees with a brute-force reachability oracle on the trace graph.
"""

from __future__ import annotations

import copy
import itertools
import operator
import random
from collections import Counter
from collections.abc import Iterator

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equivalence import assert_zero_invariant
from otov3 import OTO
from otov3.graph.segments import DependencyGraph
from otov3.graph.types import IN, OUT, TraceGraph
from otov3.graph.validity import valid_basic, valid_strict
from supernets import random_supernets

PROPERTY = settings(
    max_examples=100,
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


_STEMS = (torch.nn.Conv2d, torch.nn.Linear)


class _Perturbed(torch.fx.Interpreter):
    """Records every node's output, adding large noise to chosen channel blocks of chosen nodes.

    With `clean` values given, every Conv/Linear returns its clean output: the noise then travels only along
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


def _channels_reached(gm: torch.fx.GraphModule, x: torch.Tensor, operands: set[str]) -> dict[str, set[int]]:
    """For every node, the dim-1 channels of its output that change when the blocks of `operands` in the concats
    they feed are perturbed (the perturbation does not pass through convs or linears)."""
    with torch.no_grad():
        clean = _Perturbed(gm, {})
        clean.run(x)
        cats = {u for n in gm.graph.nodes if n.name in operands for u in n.users if u.target is torch.cat}
        noisy = _Perturbed(gm, {c.name: _operand_blocks(c, operands, clean.values) for c in cats}, clean.values)
        noisy.run(x)
    reached = {}
    for name, a in clean.values.items():
        b = noisy.values[name]
        if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape == b.shape:
            differs = (a != b).transpose(0, 1).reshape(a.shape[1], -1).any(dim=1)
            reached[name] = {int(i) for i in differs.nonzero().flatten()}
    return reached


@PROPERTY
@given(random_supernets())
def test_auxiliary_slices_are_exactly_the_channels_their_concat_operand_reaches(example):
    """A GeZIG feeding a Concat owns, of every affine BN before the next conv, the channels its block reaches."""
    model, x = example
    model = copy.deepcopy(model).eval()
    oto = OTO(model, x)
    gm, dep = oto.space.captured.gm, oto.space.dependency
    for g in oto.groups:
        reached = _channels_reached(gm, x, {dep.segments[sid].last for sid in g.segments})
        claimed: dict[str, set[int]] = {}
        for s in g.slices:
            if s.index is not None:
                claimed.setdefault(s.name, set()).update(range(s.index.start, s.index.stop))
        expected: dict[str, set[int]] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.BatchNorm2d):
                if gm.get_submodule(n.target).affine and reached.get(n.args[0].name):
                    for p in ("weight", "bias"):
                        expected.setdefault(f"{n.target}.{p}", set()).update(reached[n.args[0].name])
        assert claimed == expected, f"GeZIG {g.name}: auxiliary channels {claimed}, but its block reaches {expected}"


@PROPERTY
@given(random_supernets())
def test_segments_ending_in_sigmoid_or_feeding_a_mul_are_never_gezigs(example):
    model, x = example
    oto = OTO(model, x)
    dep = oto.space.dependency
    nodes = {n.name: n for n in oto.space.captured.gm.graph.nodes}
    gezig_segments = set(_gezig_segments(oto))

    # Read from the fx graph itself, not from the op table.
    for sid in gezig_segments:
        last = nodes[dep.segments[sid].last]
        assert last.target is not torch.sigmoid, f"GeZIG segment {sid} ends in sigmoid"
        assert not any(u.target is operator.mul for u in last.users), f"GeZIG segment {sid} feeds a Mul"

    # And from the generator's own record of what it wired.
    for name in (*model.sigmoid_inputs, *model.mul_inputs):
        calls = [n for n in nodes.values() if n.op == "call_module" and n.target == f"ops.{name}"]
        assert calls, f"module ops.{name} was not traced"
        for n in calls:
            assert dep.seg_of[n.name] not in gezig_segments, f"ops.{name} (node {n.name}) is inside a GeZIG"


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
