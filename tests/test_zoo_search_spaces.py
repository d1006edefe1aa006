"""Every zoo super-network: the real search space, exact sub-networks, and the CLI `search` verb."""

from __future__ import annotations

import random

import pytest
import torch

from otov3 import OTO
from otov3.cli.main import main
from otov3.zoo import create_supernet, get_supernet_spec, list_supernets
from subnet_equivalence import assert_subnet_equivalent, randomize_, zero_groups_

ZOO_CLASSES = {
    "demo_supnet": "otov3.zoo.demo_supnet:DemoSupNet",
    "stacked_unets": "otov3.zoo.stacked_unets:StackedUnets",
    "super_resnet": "otov3.zoo.super_resnet:SuperResNet",
    "darts8": "otov3.zoo.darts:DartsSuperNet",
}


def _parametric_candidate_ops(oto: OTO) -> set[str]:
    """Vertices of DARTS edge candidates that own parameters (sep/dil convs, stride-2 skips)."""
    return {v for v, vert in oto.space.trace.vertices.items() if ".edges." in (vert.module or "") and vert.params}


@pytest.mark.parametrize("name", [n for n in list_supernets() if n != "darts14"])
def test_zoo_model_random_valid_zero_set_gives_exact_subnet(name):
    spec = get_supernet_spec(name)
    model = randomize_(create_supernet(name), seed=7)
    x = torch.randn(2, *spec.input_shape[1:])
    oto = OTO(model, x)
    assert oto.groups, name
    rng = random.Random(name)
    order = list(range(len(oto.groups)))
    rng.shuffle(order)
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= max(1, len(oto.groups) // 2):
            break
        if oto.is_valid_indices([*chosen, i]):
            chosen.append(i)
    zero_groups_([oto.groups[i] for i in chosen])
    subnet = oto.construct_subnet()
    assert_subnet_equivalent(model, subnet, (x,))


def test_darts8_every_parametric_candidate_is_in_a_gezig():
    oto = OTO(create_supernet("darts8"), torch.randn(1, 3, 32, 32))
    in_gezigs = {v for g in oto.groups for v in g.vertices}
    candidates = _parametric_candidate_ops(oto)
    assert candidates and candidates <= in_gezigs


@pytest.mark.parametrize("name", sorted(ZOO_CLASSES))
def test_cli_search_prints_every_gezig_and_writes_graphs(name, tmp_path, capsys):
    assert main(["search", ZOO_CLASSES[name], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    spec = get_supernet_spec(name)
    oto = OTO(create_supernet(name), torch.randn(*spec.input_shape))
    for g in oto.groups[:50]:
        assert g.name[:60] in out
    assert f"{len(oto.groups)} GeZIGs" in out
    assert (tmp_path / "dependency_graph.dot").exists() and (tmp_path / "summary.txt").exists()


def test_cli_search_on_a_user_class_needs_an_input_shape(tmp_path, capsys, monkeypatch):
    (tmp_path / "usernet.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.b = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))\n"
        "        self.head = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.head((self.a(x) + self.b(x)).mean((2, 3)))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["search", "usernet:Net"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["search", "usernet:Net", "--input-shape", "1,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "a  " in out and "b.0+b.1" in out and "2 GeZIGs" in out


def test_cli_search_bad_target_is_a_clear_error(capsys):
    assert main(["search", "no_such_module_xyz:Net", "--input-shape", "1,3,8,8"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err


def test_cli_search_capture_export_finds_the_same_gezigs(capsys):
    assert main(["search", ZOO_CLASSES["demo_supnet"], "--capture", "export"]) == 0
    out = capsys.readouterr().out
    assert "5 GeZIGs" in out and "export" in out
