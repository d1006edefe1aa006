"""What a user does with a sub-network: reload it without otov3, script it, export it, measure it, see it."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from otov3 import OTO
from otov3.metrics import count_flops, count_params
from otov3.zoo.demo_supnet import DemoSupNet
from subnet_equivalence import assert_onnx_matches, assert_subnet_equivalent, load_generated, randomize_, zero_groups_

X = torch.randn(1, 1, 28, 28)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = randomize_(DemoSupNet(), 5)
    oto = OTO(model, X)
    zero_groups_([oto.group("branch3.conv3+branch3.bn3"), oto.group("branch7.conv7+branch7.bn7")])
    out = tmp_path_factory.mktemp("subnet")
    subnet = oto.construct_subnet(out)
    return model, oto, subnet, out


def test_generated_source_and_state_dict_rebuild_the_subnet_without_otov3(built):
    model, _, subnet, out = built
    state = torch.load(out / "state_dict.pt", weights_only=True)
    source = (out / "subnet.py").read_text()
    assert "otov3" not in source.split('"""', 2)[2]  # nothing but the docstring mentions otov3
    rebuilt = load_generated(out / "subnet.py").SubNet()
    rebuilt.load_state_dict(state)  # strict: every key matches
    assert_subnet_equivalent(model, rebuilt, (X,))


def test_state_dict_reloads_into_the_returned_graph_module(built):
    model, _, subnet, out = built
    fresh = randomize_(copy.deepcopy(subnet), seed=99)  # same structure, other values
    assert not torch.equal(fresh.head.linear.weight, subnet.head.linear.weight)
    fresh.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    assert_subnet_equivalent(model, fresh, (X,))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_subnet_can_be_torchscripted_and_fine_tuned(built):
    model, _, subnet, _ = built
    scripted = torch.jit.script(subnet.eval())
    with torch.no_grad():
        assert torch.allclose(scripted(X), subnet(X), atol=1e-6)
    subnet.train()
    loss = subnet(torch.randn(4, 1, 28, 28)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in subnet.parameters())
    subnet.zero_grad(set_to_none=True)
    subnet.eval()


def test_onnx_export_matches_on_another_batch_size(built):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model, _, _, out = built
    assert_onnx_matches(out / "subnet.onnx", model, torch.randn(3, 1, 28, 28))


def test_summary_json_reports_removed_groups_and_counts(built):
    model, oto, subnet, out = built
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["removed_groups"]) == ["branch3.conv3+branch3.bn3", "branch7.conv7+branch7.bn7"]
    assert summary["params_before"] == count_params(model) and summary["params_after"] == count_params(subnet)
    assert summary["macs_after"] == count_flops(subnet, X) < summary["macs_before"] == count_flops(model, X)


def test_compression_report_matches_the_counters(built):
    model, oto, subnet, _ = built
    report = oto.compression_report()
    assert report["params_ratio"] == pytest.approx(count_params(subnet) / count_params(model))
    assert 0 < report["macs_ratio"] < 1


def test_visualize_writes_dot_and_marks_zero_groups(built, tmp_path):
    _, oto, _, _ = built
    files = oto.visualize(tmp_path)
    names = {f.name for f in files}
    assert {"trace_graph.dot", "dependency_graph.dot", "subnet_graph.dot"} <= names
    dep = (tmp_path / "dependency_graph.dot").read_text()
    assert dep.count("dashed") >= 2  # two zero groups, each dashed
    assert "branch3.conv3+branch3.bn3" in dep
    if shutil.which("dot"):
        assert "dependency_graph.svg" in names
        assert (tmp_path / "dependency_graph.svg").read_text().lstrip().startswith("<?xml")
