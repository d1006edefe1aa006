"""H2SPG on a small multi-branch network: selection, deadline, accuracy, schedulers, variants (spec §5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from h2spg_testnets import PATHS, accuracy, batch, gezigs_of, is_valid, make_net, teacher_data, train, use_paths
from torch import nn

from otov3.optim import H2SPG, kernels

SGD_KW = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


@pytest.fixture(params=PATHS)
def paths(request, monkeypatch):
    """Runs a test through every code path: the fused C kernels, the eager cache-blocked passes, foreach ops."""
    use_paths(monkeypatch, request.param)
    return request.param


def _h2spg(net, **kw):
    opts = {"target_group_sparsity": 3, "warmup_steps": 20, "hybrid_steps": 60, **SGD_KW}
    opts.update(kw)
    return H2SPG(net.parameters(), gezigs_of(net), is_valid, **opts)


def _group_flat(group) -> torch.Tensor:
    return torch.cat([s.view().reshape(-1) for s in group.slices])


def test_warmup_selects_k_groups_forming_a_valid_set(paths):
    net = make_net()
    opt = _h2spg(net)
    train(net, opt, 19)
    assert opt.redundant_groups == [] and opt.phase == "warmup"
    train(net, opt, 1, start=19)
    names = [g.name for g in gezigs_of(net)]
    chosen = frozenset(names.index(g.name) for g in opt.redundant_groups)
    assert len(chosen) == 3
    assert is_valid(chosen)
    assert opt.phase == "hybrid"


def test_forced_score_order_accepts_top_rejects_invalid_then_takes_next(monkeypatch):
    # spec §3.4 in BranchNet terms: b8 (like g8) > pair[:h] (like g7) > branches.0 > branches.1 > branches.2
    fixed = torch.tensor([0.6, 0.5, 0.4, 0.7, 0.8], dtype=torch.float64)
    monkeypatch.setattr(kernels, "dhspg_scores", lambda *args, **kw: fixed)  # both score paths
    monkeypatch.setattr(kernels, "dhspg_scores_scalar", lambda *args, **kw: fixed.tolist())
    net = make_net()
    opt = _h2spg(net)
    train(net, opt, 20)
    assert [g.name for g in opt.redundant_groups] == ["b8", "branches.0", "branches.1"]
    assert [g.name for g in opt.rejected_groups] == ["pair[:h]"]  # the Add would lose both inputs


def test_redundant_groups_exactly_zero_at_deadline_and_accuracy_near_sgd(paths):
    net = make_net()
    opt = _h2spg(net)
    norms = []
    losses = []
    for t in range(80):
        losses += train(net, opt, 1, start=t)
        norms.append(opt.metrics()["redundant_norm"])
    redundant = {g.name for g in opt.redundant_groups}
    for g in gezigs_of(net):
        if g.name in redundant:
            assert all(bool((s.view() == 0).all()) for s in g.slices), g.name
        else:
            assert not g.is_zero(), g.name
    assert {g.name for g in opt.zero_groups} == redundant
    assert opt.phase == "plain"
    # the deadline ramp (window = last 30 steps) is gradual: the last factor hits a small remainder
    window_start, last = norms[49], norms[78]
    assert 0 < last < 0.1 * window_start
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])  # the loss still decreases

    baseline = make_net()
    train(baseline, torch.optim.SGD(baseline.parameters(), **SGD_KW), 80)
    # stated margin: within 5 accuracy points of plain SGD after the same 80 steps
    assert accuracy(net) >= accuracy(baseline) - 0.05


def test_zero_groups_stay_zero_with_their_buffers_and_reset_buffers(paths):
    net = make_net()
    groups = [dataclasses.replace(g, reset_buffers=(net.branches[i][1].running_mean,)) if i < 3 else g
              for i, g in enumerate(gezigs_of(net))]
    opt = H2SPG(net.parameters(), groups, is_valid, target_group_sparsity=3, warmup_steps=5, hybrid_steps=10,
                **SGD_KW)
    train(net, opt, 30)
    assert len(opt.zero_groups) == 3
    for g in opt.zero_groups:
        for s in g.slices:
            assert bool((s.view() == 0).all())
            buf = opt.state[s.param]["momentum_buffer"]
            assert bool((buf if s.index is None else buf[s.index]).eq(0).all())
        for b in g.reset_buffers:  # zeroed at the projection; the zero branch's batch means keep them there
            assert bool((b == 0).all())
    assert net.pair.weight[net.h:].abs().sum() > 0  # the complementary rows of a sliced param keep training


def test_reset_buffers_are_zeroed_when_the_group_is_projected():
    net = make_net()
    groups = [dataclasses.replace(g, reset_buffers=(net.branches[i][1].running_mean,)) if i < 3 else g
              for i, g in enumerate(gezigs_of(net))]
    opt = H2SPG(net.parameters(), groups, is_valid, target_group_sparsity=3, warmup_steps=5, hybrid_steps=10,
                **SGD_KW)
    train(net, opt, 15)  # the step that projects is the last one; no forward pass has run since
    for g in opt.zero_groups:
        for b in g.reset_buffers:
            assert bool((b == 0).all())


def _backward_on_step_21_batch(net, opt) -> None:
    x, y = teacher_data()
    xb, yb = batch(21, x, y)
    opt.zero_grad()
    nn.functional.cross_entropy(net(xb), yb).backward()


def _step_and_compare_with_reference(opt, before) -> None:
    """`before`: group name -> (x_g, d_g) taken before the step; each must land on the reference update."""
    assert before
    opt.step()
    for g in opt.redundant_groups:
        if g.name in before:
            xg, dg = before[g.name]
            expected = kernels.reference_redundant_step(xg.double(), dg.double(), lr=0.1, lam=0.05, eta=2.0,
                                                        kappa=10.0, epsilon=0.5)
            assert torch.allclose(_group_flat(g).double(), expected, atol=1e-6), g.name


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_hybrid_step_matches_per_group_reference(paths, wd):
    net = make_net()
    opt = _h2spg(net, momentum=0.0, weight_decay=wd, hybrid_steps=None, lam=0.05, epsilon=0.5)
    train(net, opt, 21)
    _backward_on_step_21_batch(net, opt)
    before = {g.name: (_group_flat(g).clone(),
                       torch.cat([s.grad_view().reshape(-1) for s in g.slices]) + wd * _group_flat(g))
              for g in opt.redundant_groups if not g.is_zero()}  # d = ∇f + wd·x without momentum
    _step_and_compare_with_reference(opt, before)


def test_hybrid_step_with_momentum_matches_per_group_reference(paths):
    net = make_net()
    opt = _h2spg(net, momentum=0.9, weight_decay=1e-3, hybrid_steps=None, lam=0.05, epsilon=0.5)
    train(net, opt, 21)
    _backward_on_step_21_batch(net, opt)
    before = {}
    for g in opt.redundant_groups:
        if not g.is_zero():
            bufs = [opt.state[s.param]["momentum_buffer"] for s in g.slices]
            prev = torch.cat([(b if s.index is None else b[s.index]).reshape(-1)
                              for s, b in zip(g.slices, bufs, strict=True)])
            grad = torch.cat([s.grad_view().reshape(-1) for s in g.slices])
            xg = _group_flat(g).clone()
            before[g.name] = (xg, 0.9 * prev + grad + 1e-3 * xg)  # d = μb + ∇f + wd·x (spec §5.1)
    _step_and_compare_with_reference(opt, before)


def _two_groups(net):
    return [{"params": [p for n, p in net.named_parameters() if n.startswith("branches")], "lr": 0.05},
            {"params": [p for n, p in net.named_parameters() if not n.startswith("branches")]}]


@pytest.mark.parametrize("kw", [{"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3},
                                {"lr": 0.1, "weight_decay": 1e-3}])
def test_warmup_matches_torch_sgd_under_steplr_with_param_groups(paths, kw):
    a, b = make_net(), make_net()
    opt_a = H2SPG(_two_groups(a), gezigs_of(a), is_valid, target_group_sparsity=3, warmup_steps=100, **kw)
    opt_b = torch.optim.SGD(_two_groups(b), **kw)
    train(a, opt_a, 12, scheduler=torch.optim.lr_scheduler.StepLR(opt_a, step_size=4, gamma=0.5))
    train(b, opt_b, 12, scheduler=torch.optim.lr_scheduler.StepLR(opt_b, step_size=4, gamma=0.5))
    assert opt_a.param_groups[0]["lr"] == pytest.approx(0.05 * 0.125)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


@pytest.mark.parametrize(("variant", "torch_cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_warmup_matches_torch_adam_variants_under_cosine(variant, torch_cls, paths):
    a, b = make_net(), make_net()
    opt_a = H2SPG(a.parameters(), gezigs_of(a), is_valid, target_group_sparsity=3, warmup_steps=100,
                  variant=variant, lr=1e-2, weight_decay=1e-2)
    opt_b = torch_cls(b.parameters(), lr=1e-2, weight_decay=1e-2)
    sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=10)
    sched_b = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, T_max=10)
    for t in range(10):  # in lockstep: rounding differences must not be amplified at ReLU kinks over the steps
        train(a, opt_a, 1, start=t, scheduler=sched_a)
        train(b, opt_b, 1, start=t, scheduler=sched_b)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-6)
            pb.data.copy_(pa)
        for ma, mb in zip(a.buffers(), b.buffers(), strict=True):
            mb.copy_(ma)


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
def test_every_variant_reaches_the_target_by_the_deadline_under_cosine(variant, paths):
    net = make_net()
    kw = SGD_KW if variant == "sgd" else {"lr": 1e-2}
    opt = H2SPG(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=0.6, warmup_steps=10,
                hybrid_steps=30, variant=variant, **kw)
    losses = train(net, opt, 45, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60))
    assert len(opt.zero_groups) == 3 and all(g.is_zero() for g in opt.redundant_groups)
    assert opt.metrics()["group_sparsity"] == pytest.approx(0.6)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_official_adam_init_starts_moments_at_the_gradient():
    net = make_net()
    opt = _h2spg(net, variant="adam", lr=1e-3, weight_decay=0.0, momentum=0.0, official_adam_init=True)
    x, y = teacher_data()
    nn.functional.cross_entropy(net(x[:64]), y[:64]).backward()
    w0, g = net.head.weight.detach().clone(), net.head.weight.grad.clone()
    opt.step()
    d = (g / 0.1) / (g.abs() / (0.001**0.5) + 1e-8)  # m̂ = g/(1−β1), v̂ = g²/(1−β2)
    assert torch.allclose(net.head.weight, w0 - 1e-3 * d, atol=1e-7)


def test_no_deadline_is_the_pure_paper_behaviour():
    net = make_net()
    opt = _h2spg(net, hybrid_steps=None, lr=0.01)
    train(net, opt, 40)
    assert opt.state["h2spg"]["forced"] == []
    assert all(g.is_zero() for g in opt.zero_groups)


def test_zero_warmup_selects_on_the_first_step(paths):
    net = make_net()
    opt = _h2spg(net, warmup_steps=0, hybrid_steps=4)
    assert opt.phase == "hybrid"
    train(net, opt, 1)
    assert len(opt.redundant_groups) == 3
    train(net, opt, 3, start=1)
    assert all(g.is_zero() for g in opt.redundant_groups)


def test_fewer_valid_groups_than_k_warns_with_the_number_found():
    net = make_net()
    opt = H2SPG(net.parameters(), gezigs_of(net), lambda r: len(r) <= 1, target_group_sparsity=3,
                warmup_steps=2, **SGD_KW)
    with pytest.warns(UserWarning, match=r"only 1 of K=3"):
        train(net, opt, 2)
    assert len(opt.redundant_groups) == 1


def test_metrics_report_phase_step_and_sparsity():
    net = make_net()
    opt = _h2spg(net, warmup_steps=2, hybrid_steps=4)
    assert opt.metrics()["phase"] == "warmup"
    train(net, opt, 2)
    m = opt.metrics()
    assert (m["phase"], m["step"], m["n_redundant"]) == ("hybrid", 2, 3)
    train(net, opt, 4, start=2)
    m = opt.metrics()
    assert m["phase"] == "plain" and m["group_sparsity"] == pytest.approx(0.6) and m["redundant_norm"] == 0.0
    assert m["important_norm"] > 0
