"""Both modes in one run (`OTO(mode="both")`): K operations removed, the surviving ones slimmed by ρ, one exact
sub-network, and a report that separates what removal and what slimming saved (issue 13, acceptance 1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from otov3 import OTO
from otov3.zoo import DemoSupNet, StackedUnets, SuperResNet
from prune_nets import expected_params
from test_modern_blocks import REPLICAS
from test_modern_blocks import X as BLOCK_X


class ResidualNet(nn.Module):
    """A stem and three residual blocks, each ``x + body(x) + short(x)`` (body and 1×1 branch are removable)."""

    def __init__(self, c: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.bodies = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                          nn.BatchNorm2d(c)) for _ in range(3))
        self.shorts = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) for _ in range(3))
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for body, short in zip(self.bodies, self.shorts, strict=True):
            x = torch.relu(x + body(x) + short(x))
        return self.head(x.mean((2, 3)))


MODELS = {
    "demo_supnet": (lambda: DemoSupNet(width=0.25), (1, 28, 28), 2),
    "stacked_unets": (lambda: StackedUnets(widths=(8, 8, 12, 12)), (3, 16, 16), 2),
    "super_resnet": (lambda: SuperResNet(stem_width=8, widths=(8, 12, 16)), (3, 16, 16), 3),
    "residual": (ResidualNet, (3, 12, 12), 2),
}


def _train(name: str, rho: float, *, seed: int = 0, steps: int = 12, warmup: int = 3, hybrid: int = 6):
    make, shape, k = MODELS[name]
    torch.manual_seed(seed)
    model = make()
    oto = OTO(model, torch.randn(2, *shape), mode="both")
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=k, target_channel_sparsity=rho,
                    warmup_steps=warmup, hybrid_steps=hybrid)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, *shape, generator=gen)).square().mean().backward()
        opt.step()
    return model, oto, opt, shape, k


@pytest.mark.parametrize("name", sorted(MODELS))
def test_both_modes_remove_k_operations_slim_the_rest_and_stay_exact(name):
    model, oto, opt, shape, k = _train(name, 0.3)
    gezigs = [g for g in opt.redundant_groups if g.is_gezig]
    channels = [g for g in opt.redundant_groups if not g.is_gezig]
    assert len(gezigs) == k and all(g.is_zero() for g in gezigs)
    assert channels and all(g.is_zero() for g in channels)
    # ρ counts only channel groups with scalars outside the removed operations
    removed = {id(s.param) for g in gezigs for s in g.slices}
    outside = [g for g in oto.groups if not g.is_gezig and any(id(s.param) not in removed for s in g.slices)]
    assert len(channels) == int(0.3 * len(outside))
    assert all(g in outside for g in channels)
    subnet = oto.construct_subnet()  # verifies the outputs itself; check again on fresh inputs
    model.eval()
    subnet.eval()
    for seed in range(3):
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref, out = model(x), subnet(x)
        assert torch.isfinite(out).all()
        assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    report = oto.compression_report()
    # removal saved what erasing mode alone saves on the same zero GeZIGs (with their consumers' input columns) ...
    assert report["params_saved_by_removal"] >= sum(g.numel() for g in gezigs)
    erase_only = OTO(copy.deepcopy(model), torch.randn(2, *shape))
    assert {g.name for g in erase_only.zero_groups()} == {g.name for g in gezigs}
    assert report["params_after_removal"] == sum(p.numel() for p in erase_only.construct_subnet().parameters())
    assert report["params_before"] - report["params_saved_by_removal"] - report["params_saved_by_slimming"] \
        == report["params_after"] == sum(p.numel() for p in subnet.parameters())
    assert report["params_saved_by_slimming"] > 0 and report["macs_saved_by_slimming"] > 0
    # ... and slimming exactly the zero channels' rows and the input columns that read them (independent oracle)
    erased = oto._stages.erased
    probe = OTO(erased, torch.randn(2, *shape), mode="prune")
    zero = [g for g in probe.groups if g.is_zero()]
    expected = expected_params(erased, zero, (torch.randn(2, *shape),))
    assert expected is not None, "the oracle must apply to these networks"
    assert report["params_after"] == expected


def test_both_mode_groups_validity_and_summary():
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    kinds = {g.kind.value for g in oto.groups}
    assert kinds == {"gezig", "channel"}
    gezigs = [g for g in oto.groups if g.is_gezig]
    erase = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28))
    assert gezigs == oto.groups[:len(gezigs)]
    assert [g.name for g in gezigs] == [g.name for g in erase.groups]
    # all channel groups of one node group: invalid; all but one: valid
    node = oto.groups[len(gezigs)].node_group
    mine = [g for g in oto.groups if not g.is_gezig and g.node_group == node]
    assert not oto.is_valid_removal(mine)
    assert oto.is_valid_removal(mine[1:])
    assert "Channel groups of the operations" in oto.summary() and "mode='both'" in repr(oto)


def test_channel_groups_inside_a_removed_operation_do_not_block_validity():
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    branch = next(g for g in oto.groups if g.is_gezig and g.name.startswith("branch2"))
    inside = [g for g in oto.groups if not g.is_gezig and all(s.name.startswith("branch2.") for s in g.slices)]
    assert inside
    assert oto.is_valid_removal([branch, *inside])  # they go with the operation


@pytest.mark.parametrize("method", ["hesso", "dhspg"])
def test_both_mode_trains_with_h2spg_only(method):
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    with pytest.raises(ValueError, match="mode='both' train with oto.h2spg"):
        getattr(oto, method)(target_group_sparsity=0.5, warmup_steps=1, hybrid_steps=2)


@pytest.mark.parametrize("rho", [-0.1, 1.0, float("nan")])
def test_bad_channel_target_is_refused(rho):
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    with pytest.raises(ValueError, match="target_channel_sparsity"):
        oto.h2spg(target_group_sparsity=1, target_channel_sparsity=rho, warmup_steps=1, hybrid_steps=2)


def test_unknown_mode_names_the_three():
    with pytest.raises(ValueError, match="'both'"):
        OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="slim")


def test_both_mode_state_dict_resumes_in_lockstep():
    """Saved mid-hybrid and loaded into a fresh model and optimizer, the run continues bit-identically."""
    make, shape, _ = MODELS["residual"]

    def setup(model):
        oto = OTO(model, torch.randn(2, *shape), mode="both")
        return oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=2, target_channel_sparsity=0.25,
                         warmup_steps=2, hybrid_steps=6)

    def step(model, opt, i):
        opt.zero_grad()
        model(torch.randn(4, *shape, generator=torch.Generator().manual_seed(i))).square().mean().backward()
        opt.step()

    torch.manual_seed(1)
    model = make()
    opt = setup(model)
    for i in range(4):
        step(model, opt, i)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    twin = make()
    twin.load_state_dict(saved[0])
    twin_opt = setup(twin)
    twin_opt.load_state_dict(saved[1])
    for i in range(4, 10):
        step(model, opt, i)
        step(twin, twin_opt, i)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [g.name for g in opt.zero_groups] == [g.name for g in twin_opt.zero_groups]
    assert opt.phase == "plain" and len(opt.zero_groups) == len(opt.redundant_groups)


def _train_budget(name: str, k: int, **budget):
    make, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = make()
    oto = OTO(model, torch.randn(2, *shape), mode="both")
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=k, warmup_steps=2, hybrid_steps=4, **budget)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        opt.zero_grad()
        model(torch.randn(4, *shape, generator=gen)).square().mean().backward()
        opt.step()
    return oto, opt


@pytest.mark.parametrize("name, k, budget", [
    ("demo_supnet", 1, {"target_macs": 0.4}),
    ("demo_supnet", 2, {"target_params": 0.3}),
    ("residual", 1, {"target_macs": 0.5}),
    ("residual", 1, {"target_params": 2500}),
])
def test_both_mode_budget_is_met_exactly_as_predicted_and_minimal(name, k, budget):
    oto, opt = _train_budget(name, k, **budget)
    subnet = oto.construct_subnet()
    report = oto.compression_report(subnet)
    kind, value = next(iter(budget.items()))
    measure = kind.removeprefix("target_")
    limit = value * report[f"{measure}_before"] if value < 1 else value
    assert report[f"{measure}_after"] <= limit
    assert (report["predicted_params"], report["predicted_macs"]) == (report["params_after"], report["macs_after"])
    gezigs = [g for g in opt.redundant_groups if g.is_gezig]
    channels = [g for g in opt.redundant_groups if not g.is_gezig]
    assert len(gezigs) == k and channels
    # minimal: without the last admitted channel group the predicted sub-network would not fit
    fewer = oto.predict_size([*gezigs, *channels[:-1]])
    assert fewer[measure] > limit


def test_both_mode_unreachable_budget_says_the_smallest_size():
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    with pytest.raises(ValueError, match=r"cannot be reached: removing 1 GeZIG\(s\) .* leaves at least .* MACs"):
        oto.h2spg(target_group_sparsity=1, target_macs=0.001, warmup_steps=1, hybrid_steps=2)
    with pytest.raises(ValueError, match="not both"):
        oto.h2spg(target_group_sparsity=1, target_macs=0.5, target_channel_sparsity=0.2, warmup_steps=1,
                  hybrid_steps=2)
    with pytest.raises(ValueError, match="target_channel_sparsity .* or a budget"):
        oto.h2spg(target_group_sparsity=1, warmup_steps=1, hybrid_steps=2)


def test_both_mode_draws_the_dependency_graph_and_the_channel_groups(tmp_path):
    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28), mode="both")
    names = {p.name for p in oto.visualize(tmp_path, svg=False)}
    assert {"dependency_graph.dot", "channel_groups.dot", "trace_graph.dot"} <= names


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_both_modes_on_every_modern_block_replica_stay_exact(name):
    """ConvNeXt, SE, GLU, ViT, Swin, ShuffleNet, DenseNet, LSTM/GRU, shared modules, GroupNorm over concats: one
    operation removed and 30 % of the remaining channels slimmed in one run; construction verifies the outputs."""
    torch.manual_seed(0)
    model = REPLICAS[name][0]()
    oto = OTO(model, torch.randn(*BLOCK_X), mode="both")
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=1, target_channel_sparsity=0.3, warmup_steps=2,
                    hybrid_steps=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(*BLOCK_X, generator=gen)).square().mean().backward()
        opt.step()
    assert all(g.is_zero() for g in opt.redundant_groups)
    subnet = oto.construct_subnet()
    report = oto.compression_report(subnet)
    assert report["params_saved_by_removal"] > 0
    if oto._both.channels:  # the recurrent replicas have no channel group (an LSTM keeps its width)
        assert report["params_saved_by_slimming"] > 0
    assert report["params_after"] == sum(p.numel() for p in subnet.parameters())


def test_both_mode_refuses_to_build_before_the_deadline():
    from otov3.errors import ConstructionError

    make, shape, _ = MODELS["residual"]
    model = make()
    oto = OTO(model, torch.randn(2, *shape), mode="both")
    opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=1, target_channel_sparsity=0.3, warmup_steps=2,
                    hybrid_steps=20)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, *shape)).square().mean().backward()
        opt.step()
    with pytest.raises(ConstructionError, match="train at least 18 more step"):
        oto.construct_subnet()


def test_construction_during_a_budget_warmup_says_the_budget_chooses_k():
    from otov3.errors import ConstructionError

    oto = OTO(DemoSupNet(width=0.25), torch.randn(1, 1, 28, 28))
    oto.h2spg(target_macs=0.6, warmup_steps=5, hybrid_steps=5)
    with pytest.raises(ConstructionError, match=r"budget will choose at the end of warm-up") as err:
        oto.construct_subnet()
    assert "None" not in str(err.value)
