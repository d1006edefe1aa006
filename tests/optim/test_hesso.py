"""HESSO (spec §5.6): progressive shrinking to exact zeros by the deadline, on channel groups and on GeZIGs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from channel_testnets import channel_groups, image_data, make_channel_net, train_images
from h2spg_testnets import gezigs_of, is_valid, make_net, train

from otov3 import OTO, ConstructionError
from otov3.optim import HESSO, kernels
from otov3.zoo import DemoSupNet
from subnet_equivalence import assert_subnet_equivalent

VARIANTS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}, "adam": {"variant": "adam", "lr": 1e-2},
            "adamw": {"variant": "adamw", "lr": 1e-2}}


def _hesso(net, **kw):
    opts = {"target_group_sparsity": 0.5, "warmup_steps": 4, "hybrid_steps": 12, "periods": 3, **VARIANTS["sgd"]}
    opts.update(kw)
    return HESSO(net.parameters(), channel_groups(net), **opts)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exactly_the_target_fraction_of_channels_is_zero_at_the_deadline_under_a_scheduler(variant):
    net = make_channel_net()
    opt = _hesso(net, **VARIANTS[variant])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    train_images(net, opt, 16, scheduler=sched)  # deadline: 4 + 12
    groups = channel_groups(net)
    assert opt.defaults["k"] == 17 == len(opt.zero_groups)
    assert sorted(g.name for g in groups if g.is_zero()) == sorted(g.name for g in opt.zero_groups)
    assert opt.metrics()["group_sparsity"] == pytest.approx(0.5) and opt.phase == "plain"
    train_images(net, opt, 4, start=16, scheduler=sched)
    assert all(g.is_zero() for g in opt.zero_groups)
    for g in opt.zero_groups:  # buffers of zero rows stay zero too (spec §5.7)
        for s in g.slices:
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                if key in opt.state[s.param]:
                    assert bool(s._select(opt.state[s.param][key]).eq(0).all())


def test_each_period_takes_its_quota_of_the_least_important_channels():
    net = make_channel_net()
    opt = _hesso(net, periods=3, hybrid_steps=12)  # D = 4, K = 17: quotas 5, 5, 7
    train_images(net, opt, 5)  # step 5 = S + 1 starts period 1
    run = opt.state["hesso"]
    assert run["period"] == 1 and len(run["active"]) == 5 and run["zero"] == []
    importance = run["importance"]
    assert max(importance[run["active"]]) <= min(importance[i] for i in range(34) if i not in run["active"])
    train_images(net, opt, 2, start=5)  # t = 3 = D − 1 at step 7: the active channels reach zero
    assert len(run["zero"]) == 5 and run["active"] == [] and all(g.is_zero() for g in opt.zero_groups)
    train_images(net, opt, 2, start=7)  # idle step 8, period 2 starts at step 9
    assert run["period"] == 2 and len(run["active"]) == 5
    train_images(net, opt, 7, start=9)
    assert run["period"] == 3 and len(run["zero"]) == 17


def test_active_channels_shrink_linearly_after_their_plain_step():
    net = make_channel_net()
    opt = _hesso(net, momentum=0.0, weight_decay=0.0, periods=1, hybrid_steps=5)  # D = 5: factors 3/4, 2/3, 1/2, 0
    train_images(net, opt, 6)  # period 1 started at step 5 (t = 1); step 7 has t = 3
    x, y = image_data()
    opt.zero_grad()
    F.cross_entropy(net(x[192:224]), y[192:224]).backward()
    active = [g for g in opt.active_groups]
    before = {g.name: [(s.view().clone(), s.grad_view().clone()) for s in g.slices] for g in active}
    opt.step()
    for g in active:
        for s, (x0, g0) in zip(g.slices, before[g.name], strict=True):
            assert torch.allclose(s.view(), (x0 - 0.1 * g0) * (1 / 2), atol=1e-7), g.name


def test_erasing_mode_admits_groups_under_the_hierarchy_check():
    net = make_net()
    opt = HESSO(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=3, warmup_steps=5, hybrid_steps=6,
                periods=2, lr=0.1, momentum=0.9)
    train(net, opt, 11)
    zero = frozenset(i for i, g in enumerate(gezigs_of(net)) if g.is_zero())
    assert len(zero) == 3 and is_valid(zero) and len(opt.zero_groups) == 3


def test_importance_is_smallest_for_a_small_group_orthogonal_to_its_direction():
    x_sq = torch.tensor([100.0, 1.0, 25.0], dtype=torch.float64)
    xd = torch.tensor([5.0, 0.0, 2.0], dtype=torch.float64)
    d_sq = torch.ones(3, dtype=torch.float64)
    score = kernels.hesso_importance(xd, x_sq, d_sq, torch.full((3,), 4.0, dtype=torch.float64))
    assert int(score.argmin()) == 1 and int(score.argmax()) == 0


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"periods": 13}, r"periods=13 must be <= hybrid_steps=12"),
    ({"periods": 0}, r"periods=0 must be >= 1"),
    ({"hybrid_steps": None}, r"hybrid_steps=None: HESSO needs"),
    ({"hybrid_steps": 0}, r"hybrid_steps=0"),
    ({"warmup_steps": 2.5}, r"warmup_steps=2\.5 must be a whole number"),
    ({"target_group_sparsity": 1.5}, r"target_group_sparsity=1\.5"),
    ({"lr": float("nan")}, r"lr=nan"),
    ({"momentum": -1.0}, r"momentum=-1\.0"),
    ({"betas": (0.9, 1.5), "variant": "adam"}, r"betas=\(0\.9, 1\.5\)"),
    ({"variant": "lion"}, r"variant='lion' is unknown"),
    ({"importance_weights": (0.2, 0.2, 0.2, 0.2, -1.0)}, r"importance_weights"),
])
def test_bad_hyper_parameters_raise_value_error_naming_them(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _hesso(make_channel_net(), **kw)


def test_oto_hesso_zeroes_gezigs_by_the_deadline_and_construct_subnet_checks_it():
    torch.manual_seed(0)
    model = DemoSupNet(width=0.125)
    oto = OTO(model, torch.zeros(1, 1, 28, 28))
    opt = oto.hesso(lr=0.01, momentum=0.9, target_group_sparsity=3, warmup_steps=2, hybrid_steps=6, periods=2)
    gen = torch.Generator().manual_seed(1)

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(4, 1, 28, 28, generator=gen)), torch.randint(0, 10, (4,),
                                                                                          generator=gen)).backward()
            opt.step()

    steps(5)
    with pytest.raises(ConstructionError, match=r"HESSO step\(s\).*more of the K=3 are still to be chosen.*due by "
                                                 r"step 8"):
        oto.construct_subnet()
    steps(3)
    assert len(oto.zero_groups()) == 3 and oto.is_valid_removal(oto.zero_groups())
    assert_subnet_equivalent(model, oto.construct_subnet(), (torch.zeros(2, 1, 28, 28),))
