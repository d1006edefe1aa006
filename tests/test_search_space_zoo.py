"""Acceptance of the search space on the paper's networks (spec §3.4 DemoSupNet, §3.5 StackedUnets)."""

from __future__ import annotations

import pytest
import torch

from equivalence import segment_outputs
from otov3 import OTO
from otov3.zoo import create_supernet, get_supernet_spec, list_supernets
from otov3.zoo.demo_supnet import DemoSupNet
from otov3.zoo.stacked_unets import StackedUnets
from subnet_equivalence import randomize_

G2, G3 = "branch2.conv2+branch2.bn2", "branch3.conv3+branch3.bn3"
G4 = "branch4.conv4+branch4.bn4+branch4.conv5+branch4.bn5"
G7, G8 = "branch7.conv7+branch7.bn7", "branch8.conv8+branch8.bn8"


@pytest.fixture(scope="module")
def demo() -> OTO:
    return OTO(DemoSupNet(), torch.randn(1, 1, 28, 28))


def test_demosupnet_has_exactly_the_five_gezigs_of_the_paper(demo):
    assert [g.name for g in demo.groups] == [G2, G3, G4, G7, G8]
    ops = {g.name: [demo.space.trace.vertices[v].op for v in g.vertices] for g in demo.groups}
    assert ops[G3][0] == "MaxPool2d" and ops[G4][0] == "AvgPool2d"
    assert ops[G4].count("Conv2d") == 2 and ops[G4].count("BatchNorm2d") == 2


def test_demosupnet_complementary_segments_carry_reasons(demo):
    reasons = {g.name: g.reason for g in demo.complementary}
    assert set(reasons) == {"stem.conv1+stem.bn1", "fuse.conv6+fuse.bn6", "head.linear"}
    assert "starve" in reasons["stem.conv1+stem.bn1"] and "starve" in reasons["fuse.conv6+fuse.bn6"]
    assert "model output" in reasons["head.linear"]
    summary = demo.summary()
    for name in (G2, G3, G4, G7, G8, "head.linear"):
        assert name[:60] in summary


def test_demosupnet_hierarchy_accepts_the_paper_set_and_rejects_both_add_inputs(demo):
    assert demo.is_valid_removal([G8, G2, G3])
    assert not demo.is_valid_removal([G7, G8])
    assert not demo.is_valid_removal([G2, G3, G4])  # the Concat would lose every input
    assert demo.is_valid_removal([G7, G8], strict=False) is False


def test_stacked_unets_has_six_gezigs_and_thirteen_parametric_segments():
    oto = OTO(StackedUnets(), torch.randn(1, 3, 32, 32))
    assert len(oto.groups) == 6
    assert len(oto.groups) + len(oto.complementary) == 13
    assert len(oto.space.dependency.segments) == 22
    joints = [s for s in oto.space.dependency.segments if s.is_joint]
    assert len(joints) == 7
    for g in oto.groups:  # every GeZIG ends in an Add (spec §3.5)
        last = oto.space.dependency.segments[g.segment].last
        (succ,) = oto.space.trace.successors(last)
        assert oto.space.trace.vertices[succ].op == "add"


ZOO = [n for n in list_supernets() if n not in ("darts14",)]


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_gezig_is_zero_invariant(name, train_mode):
    """Zero GeZIGs (then restore them): each one's segment must output exactly 0 on random inputs.

    Small models: one group at a time. DARTS (hundreds of GeZIGs): eight rounds, each zeroing a random eighth of
    the groups at once; every group is still checked once, with its inputs whatever the rest computes.
    """
    spec = get_supernet_spec(name)
    model = randomize_(create_supernet(name), seed=3).train(train_mode)
    oto = OTO(model, torch.randn(*spec.input_shape))
    inputs = torch.randn(2, *spec.input_shape[1:])
    deps = oto.space.dependency
    groups = list(oto.groups)
    rounds = 8 if len(groups) > 40 else len(groups)
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(0)).tolist()
    for r in range(rounds):
        batch = [groups[i] for i in order[r::rounds]]
        saved = [[s.view().clone() for s in g.slices] for g in batch]
        kept_buffers = [[b.clone() for b in g.reset_buffers] for g in batch]
        with torch.no_grad():
            for g in batch:
                for s in g.slices:
                    s.view().zero_()
                for b in g.reset_buffers:
                    b.zero_()
        try:
            values = segment_outputs(oto, inputs)
            for g in batch:
                for sid in g.segments:
                    out = values[deps.segments[sid].last]
                    assert torch.equal(out, torch.zeros_like(out)), (g.name, float(out.abs().max()))
        finally:
            with torch.no_grad():
                for g, vals, bufs in zip(batch, saved, kept_buffers, strict=True):
                    for s, v in zip(g.slices, vals, strict=True):
                        s.view().copy_(v)
                    for b, v in zip(g.reset_buffers, bufs, strict=True):
                        b.copy_(v)
