"""H2SPG on the paper's DemoSupNet through the public API (issue 3, acceptance 1), end to end to the sub-network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from otov3 import OTO
from otov3.optim import kernels
from otov3.zoo import DemoSupNet
from subnet_equivalence import assert_subnet_equivalent

G2, G3 = "branch2.conv2+branch2.bn2", "branch3.conv3+branch3.bn3"
G4 = "branch4.conv4+branch4.bn4+branch4.conv5+branch4.bn5"
G7, G8 = "branch7.conv7+branch7.bn7", "branch8.conv8+branch8.bn8"
WARMUP, HYBRID = 6, 12


def _demo(seed: int = 0) -> tuple[torch.nn.Module, OTO]:
    torch.manual_seed(seed)
    model = DemoSupNet(width=0.125)
    return model, OTO(model, torch.zeros(1, 1, 28, 28))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_demosupnet_has_the_papers_five_gezigs_in_order():
    _, oto = _demo()
    assert [g.name for g in oto.groups] == [G2, G3, G4, G7, G8]


def test_after_warmup_three_groups_form_a_strictly_valid_redundant_set():
    model, oto = _demo()
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=3, warmup_steps=WARMUP, hybrid_steps=HYBRID)
    _train(model, opt, WARMUP - 1)
    assert opt.redundant_groups == [] and opt.phase == "warmup"
    _train(model, opt, 1)
    redundant = [g.name for g in opt.redundant_groups]
    assert len(set(redundant)) == 3
    assert oto.is_valid_removal(redundant, strict=True)
    assert not ({G7, G8} <= set(redundant))  # the Add would lose both inputs
    assert not ({G2, G3, G4} <= set(redundant))  # the Concat would lose every operand


def test_spec_3_4_case_accepts_g8_rejects_g7_then_takes_g2_and_g3(monkeypatch):
    # Forced score order g8 > g7 > g2 > g3 > g4 (spec §3.4): g7 scores above g2 but is refused.
    order = {G2: 0.6, G3: 0.5, G4: 0.4, G7: 0.7, G8: 0.8}
    model, oto = _demo()
    fixed = torch.tensor([order[g.name] for g in oto.groups], dtype=torch.float64)
    monkeypatch.setattr(kernels, "dhspg_scores", lambda *args, **kw: fixed)  # both score code paths
    monkeypatch.setattr(kernels, "dhspg_scores_scalar", lambda *args, **kw: fixed.tolist())
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=3, warmup_steps=WARMUP, hybrid_steps=HYBRID)
    _train(model, opt, WARMUP)
    assert [g.name for g in opt.redundant_groups] == [G8, G2, G3]
    assert [g.name for g in opt.rejected_groups] == [G7]


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_at_the_deadline_exactly_the_redundant_groups_are_zero_and_the_subnet_is_exact(variant):
    model, oto = _demo()
    kw = {"momentum": 0.9} if variant == "sgd" else {}
    opt = oto.h2spg(variant=variant, lr=0.01, target_group_sparsity=3, warmup_steps=WARMUP, hybrid_steps=HYBRID,
                    **kw)
    _train(model, opt, WARMUP + HYBRID)
    redundant = {g.name for g in opt.redundant_groups}
    assert len(redundant) == 3
    for g in oto.groups:
        if g.name in redundant:
            assert all(bool((t == 0).all()) for t in g.params()), f"{g.name} is not exactly zero"
        else:
            assert not g.is_zero(), f"important group {g.name} was zeroed"
    assert {g.name for g in oto.zero_groups()} == redundant
    _train(model, opt, 4, seed=2)  # plain phase afterwards keeps them at zero
    assert {g.name for g in oto.zero_groups()} == redundant
    subnet = oto.construct_subnet()
    assert_subnet_equivalent(model, subnet, (torch.zeros(2, 1, 28, 28),))
