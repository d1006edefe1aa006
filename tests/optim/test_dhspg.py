"""DHSPG (spec §5.4): one-step scores, λ steps and half-space projections, exactly K zero channels by the deadline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from channel_testnets import channel_groups, image_data, make_channel_net, train_images
from h2spg_testnets import gezigs_of, is_valid, make_net, train

from otov3 import OTO
from otov3.optim import DHSPG, kernels
from otov3.zoo import DemoSupNet
from subnet_equivalence import assert_subnet_equivalent

VARIANTS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}, "adam": {"variant": "adam", "lr": 1e-2},
            "adamw": {"variant": "adamw", "lr": 1e-2}}


def _dhspg(net, **kw):
    opts = {"target_group_sparsity": 0.5, "warmup_steps": 4, "hybrid_steps": 12, **VARIANTS["sgd"]}
    opts.update(kw)
    return DHSPG(net.parameters(), channel_groups(net), **opts)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exactly_the_target_fraction_of_channels_is_zero_at_the_deadline_under_a_scheduler(variant):
    net = make_channel_net()
    opt = _dhspg(net, **VARIANTS[variant])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
    train_images(net, opt, 15, scheduler=sched)
    assert opt.phase == "hybrid" or len(opt.zero_groups) == 17
    train_images(net, opt, 1, start=15, scheduler=sched)  # step 16 = 4 + 12, the deadline
    groups = channel_groups(net)
    assert opt.defaults["k"] == 17 == len(opt.zero_groups)
    assert sorted(g.name for g in groups if g.is_zero()) == sorted(g.name for g in opt.redundant_groups)
    assert opt.phase == "plain"
    train_images(net, opt, 4, start=16, scheduler=sched)
    assert all(g.is_zero() for g in opt.zero_groups) and len([g for g in groups if g.is_zero()]) == 17


def test_candidates_are_the_top_scored_target_plus_tolerance_and_never_more_than_k_are_zero():
    net = make_channel_net()
    opt = _dhspg(net, tolerance=0.2, epsilon=0.0, lam=1.0, hybrid_steps=None)  # aggressive λ, no deadline
    train_images(net, opt, 4)
    run = opt.state["dhspg"]
    assert len(run["candidates"]) == int(34 * 0.7) and opt.phase == "hybrid"
    scores = run["scores"]
    assert min(scores[run["candidates"]]) >= max(scores[i] for i in range(34) if i not in run["candidates"])
    for t in range(4, 40):
        train_images(net, opt, 1, start=t)
        assert len(opt.zero_groups) <= 17
    assert len(opt.zero_groups) == 17 and opt.phase == "plain"  # λ = 1 zeroes them well before step 40


def test_the_lambda_step_on_channel_rows_matches_the_per_group_reference():
    net = make_channel_net()
    opt = _dhspg(net, momentum=0.0, weight_decay=0.0, hybrid_steps=None, lam=0.05, epsilon=0.5)
    train_images(net, opt, 5)
    targets = [g for g in opt.candidate_groups if not g.is_zero()]
    assert targets
    others = [g for g in channel_groups(net) if g.name not in {t.name for t in opt.candidate_groups}]
    opt.zero_grad()
    x, y = image_data()
    F.cross_entropy(net(x[:32]), y[:32]).backward()
    flat = {g.name: (torch.cat([s.view().reshape(-1) for s in g.slices]).clone(),
                     torch.cat([s.grad_view().reshape(-1) for s in g.slices]).clone()) for g in targets + others}
    opt.step()
    for g in targets:
        x0, d0 = flat[g.name]
        expected = kernels.reference_redundant_step(x0.double(), d0.double(), lr=0.1, lam=0.05, eta=2.0, kappa=10.0,
                                                    epsilon=0.5)
        assert torch.allclose(torch.cat([s.view().reshape(-1) for s in g.slices]).double(), expected, atol=1e-6)
    for g in others:  # plain SGD rows
        x0, d0 = flat[g.name]
        assert torch.allclose(torch.cat([s.view().reshape(-1) for s in g.slices]), x0 - 0.1 * d0, atol=1e-7)


def test_erasing_mode_keeps_the_candidates_a_valid_removal():
    net = make_net()
    opt = DHSPG(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=3, warmup_steps=5, hybrid_steps=10,
                lr=0.1, momentum=0.9)
    train(net, opt, 15)
    names = [g.name for g in gezigs_of(net)]
    zero = frozenset(names.index(g.name) for g in opt.zero_groups)
    assert len(zero) == 3 and is_valid(zero) and is_valid(frozenset(opt.state["dhspg"]["candidates"]))


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"tolerance": -0.1}, r"tolerance=-0\.1"),
    ({"epsilon": 1.0}, r"epsilon=1\.0 must lie in \[0, 1\)"),
    ({"lam": -1.0}, r"lam=-1\.0"),
    ({"eta": 0.5}, r"eta=0\.5"),
    ({"kappa": float("inf")}, r"kappa=inf"),
    ({"deadline_window": 0.0}, r"deadline_window=0\.0"),
    ({"hybrid_steps": 0}, r"hybrid_steps=0"),
    ({"target_group_sparsity": 0.0}, r"target_group_sparsity=0\.0"),
    ({"weight_decay": float("nan")}, r"weight_decay=nan"),
    ({"score_weights": (1.0, -1.0)}, r"score_weights"),
])
def test_bad_hyper_parameters_raise_value_error_naming_them(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _dhspg(make_channel_net(), **kw)


def test_oto_dhspg_gives_the_promised_subnet_after_the_deadline():
    torch.manual_seed(0)
    model = DemoSupNet(width=0.125)
    oto = OTO(model, torch.zeros(1, 1, 28, 28))
    opt = oto.dhspg(lr=0.01, momentum=0.9, target_group_sparsity=2, warmup_steps=2, hybrid_steps=6)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 1, 28, 28, generator=gen)), torch.randint(0, 10, (4,),
                                                                                      generator=gen)).backward()
        opt.step()
    assert len(oto.zero_groups()) == 2 and {g.name for g in oto.zero_groups()} == {g.name for g in opt.zero_groups}
    assert_subnet_equivalent(model, oto.construct_subnet(), (torch.zeros(2, 1, 28, 28),))
