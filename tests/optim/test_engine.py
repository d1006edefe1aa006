"""The engine H2SPG, DHSPG and HESSO share: one layout of group rows, batched per-group maths, code paths that
agree (torch.optim's "foreach equals for-loop"), and a per-step cost that does not grow with the number of groups."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from channel_testnets import channel_groups, make_channel_net, train_images
from h2spg_testnets import use_paths
from torch import nn
from torch.overrides import TorchFunctionMode

from otov3.optim import DHSPG, H2SPG, HESSO
from otov3.optim._engine import GroupOptimizer
from otov3.space import Group, GroupKind, ParamSlice

SETTINGS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}, "adam": {"variant": "adamw", "lr": 1e-2}}


def _make(cls, net, variant: str):
    extra = {"periods": 2} if cls is HESSO else {}
    valid = (lambda removed: True) if cls is H2SPG else None
    return cls(net.parameters(), channel_groups(net), valid, target_group_sparsity=0.5 if cls is not H2SPG else 17,
               warmup_steps=4, hybrid_steps=10, **extra, **SETTINGS[variant])


def test_the_three_optimizers_are_policies_of_one_engine():
    assert all(issubclass(cls, GroupOptimizer) for cls in (H2SPG, DHSPG, HESSO))
    assert {cls.RUN_KEY for cls in (H2SPG, DHSPG, HESSO)} == {"h2spg", "dhspg", "hesso"}


@pytest.mark.parametrize("variant", list(SETTINGS))
@pytest.mark.parametrize("cls", [H2SPG, DHSPG, HESSO])
def test_native_chunked_and_foreach_paths_give_the_same_run(cls, variant, monkeypatch):
    runs = []
    for paths in ("native", "chunked", "foreach"):
        with monkeypatch.context() as m:
            use_paths(m, paths)
            net = make_channel_net()
            opt = _make(cls, net, variant)
            train_images(net, opt, 16)
            runs.append((net, [g.name for g in opt.zero_groups]))
    a, zero_a = runs[0]
    for b, zero_b in runs[1:]:
        assert zero_a == zero_b and len(zero_a) == 17
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-5), name
            assert torch.equal(pa == 0, pb == 0), name  # the same exact zeros


def test_a_convtranspose_channel_is_a_dim_1_slice_and_only_it_becomes_zero():
    net = make_channel_net()
    opt = HESSO(net.parameters(), channel_groups(net), target_group_sparsity=0.3, warmup_steps=2, hybrid_steps=6,
                **SETTINGS["sgd"])
    train_images(net, opt, 8)
    assert len(opt.zero_groups) == 10
    zero_up = [int(g.name[3:-1]) for g in opt.zero_groups if g.name.startswith("up[")]
    kept_up = [j for j in range(6) if j not in zero_up]
    assert zero_up and kept_up
    assert bool((net.up.weight[:, zero_up] == 0).all()) and bool((net.up.bias[zero_up] == 0).all())
    assert bool((net.up.weight[:, kept_up] != 0).any(dim=(0, 2, 3)).all())


def test_layout_refuses_overlaps_and_one_parameter_cut_along_two_dimensions():
    net = make_channel_net()
    w = net.up.weight
    row = Group("row", GroupKind.CHANNEL, (ParamSlice("up.weight", w, slice(0, 1), 0),), ("up",), 0)
    col = Group("col", GroupKind.CHANNEL, (ParamSlice("up.weight", w, slice(0, 1), 1),), ("up",), 0)
    with pytest.raises(ValueError, match=r"'up\.weight' is cut along dimensions \[0, 1\]"):
        DHSPG(net.parameters(), [row, col], target_group_sparsity=1, warmup_steps=1)
    twice = Group("again", GroupKind.CHANNEL, (ParamSlice("up.weight", w, slice(0, 2), 1),), ("up",), 0)
    with pytest.raises(ValueError, match=r"rows \[0, 2\) of group 'again' overlap group 'col'"):
        HESSO(net.parameters(), [col, twice], target_group_sparsity=1, warmup_steps=1, hybrid_steps=2)
    whole = Group("whole", GroupKind.CHANNEL, (ParamSlice("up.weight", w),), ("up",), 0)
    with pytest.raises(ValueError, match=r"owned whole by one group and in part by another"):
        HESSO(net.parameters(), [col, whole], target_group_sparsity=1, warmup_steps=1, hybrid_steps=2)


class _Count(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _wide(rows: int):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, rows), nn.ReLU(), nn.Linear(rows, 2))
    groups = [Group(f"h[{j}]", GroupKind.CHANNEL, (ParamSlice("0.weight", net[0].weight, slice(j, j + 1)),
                                                   ParamSlice("0.bias", net[0].bias, slice(j, j + 1))), ("0",), 0)
              for j in range(rows)]
    return net, groups


def _calls_per_step(cls, rows: int, **kw) -> list[int]:
    net, groups = _wide(rows)
    opt = cls(net.parameters(), groups, target_group_sparsity=0.5, lr=0.05, momentum=0.9, **kw)
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 8)
    counts = []
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        with _Count() as mode:
            opt.step()
        counts.append(mode.calls)
    return counts


@pytest.mark.parametrize(("cls", "kw"), [
    (DHSPG, {"warmup_steps": 1, "hybrid_steps": 4}),  # selection, λ steps, deadline window, plain with zeros
    (HESSO, {"warmup_steps": 1, "hybrid_steps": 4, "periods": 2}),  # period starts, shrink steps, plain
    (H2SPG, {"warmup_steps": 2, "hybrid_steps": 3}),
])
def test_tensor_calls_per_step_do_not_grow_with_the_number_of_groups(cls, kw):
    if cls is H2SPG:
        kw = {**kw, "is_valid": lambda removed: True}
    few, many = _calls_per_step(cls, 400, **kw), _calls_per_step(cls, 4000, **kw)
    assert few == many  # ten times the groups, the same torch calls in every step


@pytest.mark.parametrize("cls", [DHSPG, HESSO])
def test_pruning_mode_never_zeroes_every_channel_group_of_a_node_group(cls):
    net = make_channel_net()
    groups = [dataclasses.replace(g, node_group=g.segment) for g in channel_groups(net)]  # node groups of 8, 8, 6, 12
    extra = {"periods": 3} if cls is HESSO else {"tolerance": 0.5}
    opt = cls(net.parameters(), groups, target_group_sparsity=30, warmup_steps=2, hybrid_steps=9, **extra,
              **SETTINGS["sgd"])
    train_images(net, opt, 11)
    zero = [g for g in groups if g.is_zero()]
    assert len(zero) == len(opt.zero_groups) == 30  # at most 7 + 7 + 5 + 11: one channel left in each
    assert sorted(Counter(g.node_group for g in zero).values()) == [5, 7, 7, 11]
