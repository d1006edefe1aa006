"""Merging duplicate parameter-free ops: fewer calls, bit-identical outputs, and never a merge that could differ."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from torch import nn

from otov3 import OTO
from otov3.subnet.dedupe import merge_duplicate_ops
from otov3.zoo.darts import SearchCell
from subnet_equivalence import assert_onnx_matches, assert_subnet_equivalent, load_generated, randomize_
from supernets import random_supernets


def _calls(gm: torch.fx.GraphModule, kind: type[nn.Module]) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind))


class Twins(nn.Module):
    """Pairs of identical pure ops on one input, next to near-twins that must stay apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.max_a = nn.MaxPool2d(3, stride=1, padding=1)
        self.max_b = nn.MaxPool2d(3, stride=1, padding=1)
        self.max_strided = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg_a = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.avg_b = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.avg_padded = nn.AvgPool2d(3, stride=1, padding=1)  # same repr, counts the padding: different op
        self.relu_a = nn.ReLU()
        self.relu_b = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        pools = self.max_a(y) + self.max_b(y) + self.avg_a(y) + self.avg_b(y) + self.avg_padded(y)
        acts = self.relu_a(y) * self.relu_b(y) + F.relu(y) - F.relu(y) + F.relu(x).sum()
        return pools + acts + F.interpolate(self.max_strided(y), scale_factor=2.0)


def test_identical_pure_calls_are_merged_and_outputs_stay_bit_identical():
    model = Twins().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = torch.fx.symbolic_trace(model)
    expected = gm(x)
    merged = merge_duplicate_ops(gm)
    # max_b, avg_b, relu_b and the second F.relu(y)
    assert merged == 4
    assert _calls(gm, nn.MaxPool2d) == 2  # max_a and the strided one
    assert _calls(gm, nn.AvgPool2d) == 2  # count_include_pad True and False stay apart
    assert _calls(gm, nn.ReLU) == 1
    assert not hasattr(gm, "max_b") and not hasattr(gm, "avg_b")
    assert torch.equal(gm(x), expected)
    gm.graph.lint()


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool_a = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool_b = nn.MaxPool2d(3, stride=1, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool_a(x)
        b = self.act(self.pool_b(x))  # overwrites pool_b's result: sharing it with `a` would change `a`
        return a + b


def test_graphs_that_modify_tensors_in_place_are_left_alone():
    gm = torch.fx.symbolic_trace(InPlace())
    x = torch.randn(1, 2, 5, 5)
    expected = gm(x)
    nodes = len(gm.graph.nodes)
    assert merge_duplicate_ops(gm) == 0
    assert len(gm.graph.nodes) == nodes
    assert torch.equal(gm(x), expected)


def test_positional_inplace_flags_count_as_in_place():
    def twice(x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(x, 3, 1, 1)
        return F.relu(y, True) + F.max_pool2d(x, 3, 1, 1)  # the first pool's result is overwritten
        # (fx records torch.nn.functional calls with keyword arguments, so `inplace=True` is visible)

    gm = torch.fx.symbolic_trace(twice)
    x = torch.randn(1, 2, 5, 5)
    expected = gm(x)
    assert merge_duplicate_ops(gm) == 0
    assert torch.equal(gm(x), expected)


class TwoDropouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop_a = nn.Dropout(0.5)
        self.drop_b = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_a(x) - self.drop_b(x) + torch.rand_like(x) - torch.rand_like(x)


def test_random_ops_are_never_merged():
    gm = torch.fx.symbolic_trace(TwoDropouts().train())
    assert merge_duplicate_ops(gm) == 0
    assert gm(torch.ones(64, 64)).abs().sum() > 0  # still two independent masks and draws


class Cell(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.cell = SearchCell(c, c, c, reduction=False, reduction_prev=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell(x, x)


def test_darts_cell_subnet_pools_each_state_once(tmp_path):
    """14 edges read 5 distinct states (2 inputs, 3 non-final nodes): 5 max-pools instead of 14."""
    torch.manual_seed(0)
    model = Cell()
    x = torch.randn(2, 4, 8, 8)
    randomize_(model, seed=0)
    oto = OTO(model, x)
    sep = [g for g in oto.groups if "sep_conv_3x3" in g.name]
    with torch.no_grad():
        for g in sep:
            for s in g.slices:
                s.view().zero_()
    plain = oto.construct_subnet(merge_duplicates=False)
    merged = oto.construct_subnet(tmp_path)
    assert _calls(plain, nn.MaxPool2d) == 14 and _calls(merged, nn.MaxPool2d) == 5
    assert _calls(merged, nn.AvgPool2d) == 5
    # pre0 and pre1 both read x: one ReLU; every candidate opens with a ReLU of its state: one per state; the
    # inner ReLU of each edge's sep_conv_5x5 reads that edge's own tensor: 14
    assert _calls(plain, nn.ReLU) == 2 + 14 * 3 + 14
    assert _calls(merged, nn.ReLU) == 1 + 5 + 14
    assert sorted(merged.state_dict()) == sorted(plain.state_dict())
    assert_subnet_equivalent(model, merged, (x,), super_gm=oto.space.captured.gm)
    # the shared calls survive the round trips: standalone source + state_dict, and ONNX
    rebuilt = load_generated(tmp_path / "subnet.py").SubNet()
    rebuilt.load_state_dict(torch.load(tmp_path / "state_dict.pt", weights_only=True))
    assert_subnet_equivalent(model, rebuilt, (x,))
    pytest.importorskip("onnxruntime")
    assert_onnx_matches(tmp_path / "subnet.onnx", model, x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=random_supernets())
def test_merging_random_supernets_changes_no_output_bit(net):
    model, x = net
    model.eval()
    gm = copy.deepcopy(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        expected = gm(x)
        merge_duplicate_ops(gm)
        gm.graph.lint()
        assert torch.equal(gm(x), expected)
