"""Pruning-mode sub-networks (spec §4.4): for the zoo, the building-block replicas, the H2SPG test nets and the
special-case nets, random zero channel groups give a slimmer network with the same outputs and exactly the
parameter count left after removing those rows and the columns that read them; export writes every artefact."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import blocks
from optim.h2spg_testnets import BranchNet
from otov3 import OTO
from otov3.zoo import create_supernet, get_supernet_spec, list_supernets
from prune_nets import (
    Attention,
    DemoNet,
    DepthwiseNet,
    EmbeddingNet,
    FlattenNet,
    GroupNormNet,
    MHANet,
    MoreUnprunable,
    TransposeNet,
    Unprunable,
    expected_params,
    randomize_norms_,
    zero_random_,
)
from subnet_equivalence import assert_onnx_matches, assert_subnet_equivalent, count, load_generated, randomize_

TINY_ZOO = {
    "demo_supnet": {"width": 0.125},
    "stacked_unets": {"widths": (4, 4, 6, 6)},
    "darts8": {"channels": 2, "cells": 3},
    "darts14": {"channels": 2, "cells": 3},
    "super_resnet": {"stem_width": 4, "widths": (4, 6), "depths": (2, 1), "strides": (1, 2)},
}
BLOCKS = {
    "convnext": (blocks.ConvNeXtNet, (2, 3, 16, 16)),
    "se": (blocks.SENet, (2, 3, 8, 8)),
    "split_glu": (blocks.SplitGLUNet, (2, 3, 8, 8)),
    "vit": (blocks.ViTNet, (2, 3, 16, 16)),
    "swin": (blocks.SwinNet, (2, 3, 16, 16)),
    "shuffle": (blocks.ShuffleNet, (2, 3, 8, 8)),
    "dense": (blocks.DenseNet, (2, 3, 8, 8)),
    "lstm": (lambda: blocks.RecurrentNet(nn.LSTM), (2, 3, 8, 16)),
    "gru": (lambda: blocks.RecurrentNet(nn.GRU), (2, 3, 8, 16)),
    "shared_activation": (blocks.SharedActivationNet, (2, 3, 8, 8)),
    "shared_conv_on_concat": (blocks.SharedConvOnConcatNet, (2, 3, 8, 8)),
    "groupnorm_concat": (blocks.GroupNormConcatNet, (2, 3, 8, 8)),
}
SPECIAL = {
    "demonet": (DemoNet, (2, 3, 8, 8)),
    "depthwise": (DepthwiseNet, (2, 3, 8, 8)),
    "flatten": (FlattenNet, (2, 3, 8, 8)),
    "groupnorm": (GroupNormNet, (2, 3, 8, 8)),
    "attention_sdpa": (Attention, (2, 5, 8)),
    "attention_matmul": (lambda: Attention(sdpa=False), (2, 5, 8)),
    "mha": (MHANet, (2, 5, 4)),
    "transpose": (TransposeNet, (2, 3, 4, 4)),
    "unprunable": (Unprunable, (2, 3, 6, 6)),
    "more_unprunable": (MoreUnprunable, (2, 3, 6, 6)),
    "branchnet": (BranchNet, (4, 12)),
}


def check_exact(model: nn.Module, x: torch.Tensor, capture: str, fraction: float, seed: int = 0) -> OTO:
    """Zero a random valid set of channel groups, build, and check outputs and the exact parameter count."""
    randomize_norms_(randomize_(model, seed), seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, x, mode="prune", capture=capture)
    zero = zero_random_(oto, fraction, seed)
    want = expected_params(model, zero, (x,))
    sub = oto.construct_subnet()
    assert_subnet_equivalent(model, sub, (x,), expect_smaller=bool(zero), super_gm=oto.space.captured.gm)
    assert want is not None and count(sub) == want, (count(sub), want, count(model))
    return oto


ZOO_CASES = [(name, "fx") for name in list_supernets()] + [("demo_supnet", "export"), ("stacked_unets", "export")]


@pytest.mark.parametrize(("name", "capture"), ZOO_CASES)
def test_every_zoo_model_gives_an_exact_slimmer_subnet(name, capture):
    shape = (2, *get_supernet_spec(name).input_shape[1:])
    if name == "darts14":
        shape = (2, 3, 32, 32)
    model = create_supernet(name, **TINY_ZOO[name])
    oto = check_exact(model, torch.randn(shape), capture, 0.4)
    assert len(oto.groups) > 0


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_every_block_replica_gives_an_exact_slimmer_subnet(name, capture):
    factory, shape = BLOCKS[name]
    check_exact(factory(), torch.randn(shape), capture, 0.5, seed=len(name))


@pytest.mark.parametrize("name", list(SPECIAL))
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_every_special_case_net_gives_an_exact_slimmer_subnet(name, capture):
    factory, shape = SPECIAL[name]
    check_exact(factory(), torch.randn(shape), capture, 0.5, seed=3)


def test_embedding_net_gives_an_exact_slimmer_subnet():
    check_exact(EmbeddingNet(), torch.randint(0, 11, (2, 5)), "fx", 0.5)


def test_the_subnet_keeps_module_names_and_the_users_model_is_untouched():
    model = randomize_(DemoNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    oto = OTO(model, torch.randn(2, 3, 8, 8), mode="prune")
    zero = zero_random_(oto, 0.3)
    sub = oto.construct_subnet()
    assert {n for n, _ in sub.named_modules() if n} == {n for n, _ in model.named_modules() if n}
    zeroed = {s.name for g in zero for s in g.slices}
    for k, v in model.state_dict().items():
        if k not in zeroed:
            assert torch.equal(before[k], v), k


def test_compression_report_counts_params_and_macs_before_and_after():
    model = randomize_(DemoNet())
    oto = OTO(model, torch.randn(1, 3, 8, 8), mode="prune")
    zero_random_(oto, 0.5)
    sub = oto.construct_subnet()
    report = oto.compression_report()
    assert report["params_before"] == count(model) and report["params_after"] == count(sub)
    assert report["macs_after"] < report["macs_before"] and 0 < report["params_ratio"] < 1


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_export_writes_state_dict_source_onnx_and_summary_that_rebuild_the_subnet(tmp_path, capture):
    model = randomize_(DemoNet())
    x = torch.randn(2, 3, 8, 8)
    oto = OTO(model, x, mode="prune", capture=capture)
    zero = zero_random_(oto, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = oto.construct_subnet(tmp_path / "out")
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["removed_groups"]) == sorted(g.name for g in zero)
    assert summary["params_after"] == count(sub)
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert set(summary["files"]) == {"state_dict", "source", "onnx"}, summary["skipped"]
    rebuilt = load_generated(out / "subnet.py").SubNet()
    rebuilt.load_state_dict(state)
    assert_subnet_equivalent(model, rebuilt, (x,))
    assert_onnx_matches(out / "subnet.onnx", model, torch.randn(3, 3, 8, 8))


class _DeadBranchNet(nn.Module):
    """A conv whose result is never used: no sub-network keeps it, and the parameter oracle must not count it."""

    def __init__(self) -> None:
        super().__init__()
        self.unused, self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = self.unused(x)
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_dead_code_of_the_super_network_is_neither_kept_nor_counted(capture):
    model, x = _DeadBranchNet(), torch.randn(2, 3, 8, 8)
    oto = OTO(model, x, mode="prune", capture=capture)
    subnet = oto.construct_subnet()
    assert count(subnet) == expected_params(model, [], (x,)) == count(model) - 4 * 3 * 9 - 4
