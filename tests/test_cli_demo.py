"""`otov3 demo` end to end on a tiny budget: synthetic IDX files always, the real Fashion-MNIST when installed."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
import torch

from otov3.cli.main import main
from otov3.data.fashion_mnist import DEFAULT_ROOT

TINY = ["--epochs", "1", "--width", "0.125", "--batch-size", "32", "--lr", "0.05"]


def _write_split(root: Path, prefix: str, n: int, seed: int) -> None:
    """A learnable stand-in for Fashion-MNIST: class c lights rows 2c..2c+2, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=gen, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 2 * c + 2 : 2 * c + 5] = 255
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">iiii", 2051, n, 28, 28) + images.numpy().tobytes()))
    (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">ii", 2049, n) + labels.to(torch.uint8).numpy().tobytes()))


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    _write_split(root, "train", 320, seed=0)
    _write_split(root, "t10k", 200, seed=1)
    return root


@pytest.fixture(scope="module")
def demo_run(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--data", str(fake_data), "--out", str(out), *TINY])
    return code, out


def test_demo_succeeds_and_writes_every_artefact(demo_run):
    code, out = demo_run
    assert code == 0
    for rel in ("report.md", "metrics.json", "baseline.pt", "group_norms.png", "subnet/state_dict.pt",
                "subnet/subnet.py", "subnet/summary.json", "graphs/dependency_graph.dot", "graphs/subnet_graph.dot"):
        assert (out / rel).is_file(), rel
    assert (out / "group_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| Model | FLOPs (M MACs) | # of Params (M) | Top-1 Acc. (%) |" in report
    assert "![dependency_graph](graphs/dependency_graph.svg)" in report or "dependency_graph.dot" in report


def test_demo_subnet_is_smaller_and_exact_on_the_test_set(demo_run):
    _, out = demo_run
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["removed_groups"]) == 3 and set(m["removed_groups"]) == set(m["redundant_groups"])
    assert m["macs_after"] < m["macs_before"] and m["params_after"] < m["params_before"]
    assert m["same_predictions_percent"] == 100.0
    assert m["subnet_top1"] == m["super_top1"]
    assert m["settings"]["steps"] == 10 and m["settings"]["warmup_steps"] + m["settings"]["hybrid_steps"] < 10


def test_demo_saved_subnet_reloads_into_its_generated_source(demo_run):
    _, out = demo_run
    namespace: dict = {}
    exec(compile((out / "subnet" / "subnet.py").read_text(), "subnet.py", "exec"), namespace)
    model = namespace["SubNet"]()
    model.load_state_dict(torch.load(out / "subnet" / "state_dict.pt", weights_only=True))  # strict
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_demo_reuses_a_saved_baseline(demo_run, fake_data, tmp_path):
    _, first = demo_run
    code = main(["demo", "--data", str(fake_data), "--out", str(tmp_path), *TINY,
                 "--baseline-from", str(first / "baseline.pt")])
    assert code == 0
    assert not (tmp_path / "baseline.pt").exists()
    a = json.loads((first / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    assert a["baseline_top1"] == b["baseline_top1"]
    assert a["subnet_top1"] == b["subnet_top1"]  # same seed: the H2SPG run is reproducible


def test_demo_without_data_says_where_to_point_it(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "--data" in err


def test_demo_rejects_a_budget_without_a_single_batch(fake_data, tmp_path, capsys):
    assert main(["demo", "--data", str(fake_data), "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert "epoch" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prune_run(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-prune")
    code = main(["demo", "--mode", "prune", "--data", str(fake_data), "--out", str(out), *TINY, "--no-baseline"])
    return code, out


def test_prune_demo_writes_every_artefact_and_says_which_mode(prune_run):
    code, out = prune_run
    assert code == 0
    for rel in ("report.md", "metrics.json", "group_norms.png", "subnet/state_dict.pt", "subnet/subnet.py",
                "subnet/summary.json", "graphs/channel_groups.dot", "graphs/subnet_graph.dot"):
        assert (out / rel).is_file(), rel
    assert not (out / "baseline.pt").exists()
    assert (out / "group_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| Model | FLOPs (M MACs) | # of Params (M) | Top-1 Acc. (%) |" in report
    assert "| DemoSupNet OTOv3 super-network (trained, pruning mode, HESSO) |" in report
    assert "| DemoSupNet OTOv3 sub-network (pruning mode, HESSO) |" in report
    assert "pruning mode" in report.splitlines()[0] and "Removed channel groups: 36 of 72" in report


def test_prune_demo_subnet_is_the_same_network_with_fewer_channels_and_exact(prune_run):
    _, out = prune_run
    m = json.loads((out / "metrics.json").read_text())
    s = m["settings"]
    assert (s["mode"], s["optimizer"], s["target_sparsity"]) == ("prune", "hesso", 0.5)
    assert "target_groups" not in s and m["hesso_train_seconds"] > 0
    # width 0.125: 6 channels in the stem and each 28x28 branch, 21 after fuse and 21 in the branch7+8 node group
    # that feeds the pooled head; 0.5 of the 72 groups -> 36
    assert m["channel_groups"] == 72 and len(m["removed_groups"]) == 36
    assert set(m["removed_groups"]) == set(m["redundant_groups"])
    assert sum(z for z, _ in m["removed_per_node_group"].values()) == 36
    assert all(z < n for z, n in m["removed_per_node_group"].values())  # every node group keeps a channel
    assert m["macs_after"] < m["macs_before"] and m["params_after"] < m["params_before"]
    assert m["same_predictions_percent"] == 100.0 and m["subnet_top1"] == m["super_top1"]
    namespace: dict = {}
    exec(compile((out / "subnet" / "subnet.py").read_text(), "subnet.py", "exec"), namespace)
    model = namespace["SubNet"]()
    model.load_state_dict(torch.load(out / "subnet" / "state_dict.pt", weights_only=True))  # strict
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    convs = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    assert len(convs) == 8  # every operation stays; only channels go
    assert sum(c.out_channels for c in convs.values()) < 5 * 6 + 3 * 21


def test_prune_demo_with_dhspg_and_its_own_target(fake_data, tmp_path, capsys):
    code = main(["demo", "--mode", "prune", "--optimizer", "dhspg", "--target-sparsity", "0.3",
                 "--data", str(fake_data), "--out", str(tmp_path), *TINY, "--no-baseline"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["settings"]["optimizer"] == "dhspg" and len(m["removed_groups"]) == 21  # int(0.3 * 72)
    assert m["same_predictions_percent"] == 100.0 and "dhspg_train_seconds" in m
    assert "| DemoSupNet OTOv3 sub-network (pruning mode, DHSPG) |" in capsys.readouterr().out


def test_erase_demo_keeps_its_rows_and_settings(demo_run):
    _, out = demo_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["target_groups"] == 3 and m["settings"]["mode"] == "erase" and "h2spg_train_seconds" in m
    report = (out / "report.md").read_text()
    assert "| DemoSupNet OTOv3 sub-network |" in report and "pruning mode" not in report


def test_both_demo_removes_operations_and_slims_the_rest_in_one_run(fake_data, tmp_path, capsys):
    code = main(["demo", "--mode", "both", "--target-groups", "2", "--target-sparsity", "0.25",
                 "--data", str(fake_data), "--out", str(tmp_path), *TINY, "--no-baseline"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    s = m["settings"]
    assert (s["mode"], s["optimizer"], s["target_groups"], s["target_sparsity"]) == ("both", "h2spg", 2, 0.25)
    assert len(m["removed_gezigs"]) == 2 and m["same_predictions_percent"] == 100.0
    assert m["params_saved_by_removal"] > 0 and m["params_saved_by_slimming"] > 0
    assert m["params_after"] == m["params_before"] - m["params_saved_by_removal"] - m["params_saved_by_slimming"]
    out = capsys.readouterr().out
    assert "| DemoSupNet OTOv3 sub-network (both modes) |" in out and "slimmed:" in out
    report = (tmp_path / "report.md").read_text()
    assert f"Removal saved {m['macs_saved_by_removal'] / 1e6:.1f} M MACs" in report and "slimming" in report


@pytest.mark.parametrize("flags, says", [
    (["--optimizer", "dhspg"], "--optimizer applies to --mode prune"),
    (["--target-sparsity", "0.5"], "--target-sparsity applies to --mode prune"),
    (["--mode", "prune", "--target-groups", "2"], "--target-groups applies to --mode erase"),
    (["--mode", "prune", "--target-sparsity", "1.5"], "--target-sparsity must be a fraction in (0, 1)"),
    (["--mode", "prune", "--target-sparsity", "0"], "--target-sparsity must be a fraction in (0, 1)"),
    (["--mode", "both", "--optimizer", "hesso"], "--optimizer applies to --mode prune"),
    (["--target-macs", "1.2"], "--target-macs must be a fraction in (0, 1)"),
    (["--target-macs", "0.5", "--target-groups", "2"], "--target-groups and --target-macs both"),
    (["--mode", "prune", "--target-macs", "0.5", "--target-sparsity", "0.3"], "--target-sparsity and --target-macs"),
])
def test_demo_refuses_flags_of_the_other_mode_in_one_line(fake_data, tmp_path, capsys, flags, says):
    assert main(["demo", "--data", str(fake_data), "--out", str(tmp_path / "o"), *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otov3: error: ") and says in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything is written


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"{DEFAULT_ROOT} is absent (dataset-fashion-mnist not installed)")
def test_demo_on_real_fashion_mnist_subset(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), *TINY, "--train-samples", "320", "--test-samples", "300",
                 "--no-baseline"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["baseline_top1"] is None and m["same_predictions_percent"] == 100.0
    assert m["macs_ratio"] <= 0.5  # every valid 3-group removal of DemoSupNet keeps at most 47 % of the MACs
    assert "DemoSupNet OTOv3 sub-network" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["erase", "prune", "both"])
def test_demo_meets_a_macs_budget_in_every_mode_and_reports_it(fake_data, tmp_path, mode):
    code = main(["demo", "--mode", mode, "--target-macs", "0.5", "--data", str(fake_data), "--out", str(tmp_path),
                 *TINY, "--no-baseline"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["settings"]["target_macs"] == 0.5 and m["macs_ratio"] <= 0.5
    assert m["budget_macs"] == 0.5 * m["macs_before"]
    assert (m["predicted_params"], m["predicted_macs"]) == (m["params_after"], m["macs_after"])
    assert m["same_predictions_percent"] == 100.0
    assert "at most 50 % of the MACs" in (tmp_path / "report.md").read_text()
