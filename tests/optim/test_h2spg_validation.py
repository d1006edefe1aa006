"""Bad input and non-finite gradients: H2SPG refuses with messages naming the culprit (STYLE lesson 5)."""

from __future__ import annotations

import re

import pytest
import torch
from h2spg_testnets import PATHS, batch, gezigs_of, is_valid, make_net, teacher_data, train, use_paths
from torch import nn

from otov3.errors import OptimizerError
from otov3.optim import H2SPG
from otov3.space import Group, GroupKind, ParamSlice


def _make(net=None, **kw):
    net = net or make_net()
    opts = {"target_group_sparsity": 3, "warmup_steps": 5, "hybrid_steps": 10, "lr": 0.1, "momentum": 0.9}
    opts.update(kw)
    return H2SPG(net.parameters(), gezigs_of(net), is_valid, **opts)


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"lr": 0.0}, r"lr=0\.0 must be > 0"),
    ({"lr": -0.1}, r"lr=-0\.1"),
    ({"target_group_sparsity": 6}, r"target_group_sparsity=6: K must lie in \[1, 5\]"),
    ({"target_group_sparsity": 0}, r"target_group_sparsity=0"),
    ({"target_group_sparsity": 1.0}, r"target_group_sparsity=1\.0"),
    ({"epsilon": 1.0}, r"epsilon=1\.0 must lie in \[0, 1\)"),
    ({"epsilon": -0.1}, r"epsilon=-0\.1"),
    ({"variant": "rmsprop"}, r"variant='rmsprop' is unknown"),
    ({"momentum": -0.5}, r"momentum=-0\.5"),
    ({"warmup_steps": -1}, r"warmup_steps=-1"),
    ({"hybrid_steps": 0}, r"hybrid_steps=0"),
    ({"score_momentum": 1.5}, r"score_momentum=1\.5"),
    ({"betas": (0.9, 1.0)}, r"betas=\(0\.9, 1\.0\)"),
])
def test_bad_hyper_parameters_raise_value_error_naming_them(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _make(**kw)


def test_bad_per_group_lr_names_the_param_group():
    net = make_net()
    with pytest.raises(ValueError, match=r"param_groups\[0\] lr=-1\.0"):
        H2SPG([{"params": net.parameters(), "lr": -1.0}], gezigs_of(net), is_valid, target_group_sparsity=3,
              warmup_steps=5, lr=0.1)


def test_gezig_parameter_missing_from_params_is_refused():
    net = make_net()
    with pytest.raises(ValueError, match=r"'b8.weight', which is not among the optimizer's params"):
        H2SPG([p for n, p in net.named_parameters() if not n.startswith("b8")], gezigs_of(net), is_valid,
              target_group_sparsity=3, warmup_steps=5, lr=0.1)


def test_overlapping_gezigs_are_refused():
    net = make_net()
    groups = gezigs_of(net)
    extra = Group("pair-overlap", GroupKind.GEZIG, (ParamSlice("pair.weight", net.pair.weight, slice(8, 24)),),
                  ("pair",), 9)
    with pytest.raises(ValueError, match=r"overlap GeZIG 'pair\[:h\]'"):
        H2SPG(net.parameters(), groups + [extra], is_valid, target_group_sparsity=3, warmup_steps=5, lr=0.1)


def _backward(net, step):
    x, y = teacher_data()
    xb, yb = batch(step, x, y)
    nn.functional.cross_entropy(net(xb), yb).backward()


@pytest.mark.parametrize("paths", PATHS)
def test_non_finite_gradient_in_warmup_raises_naming_the_parameter(paths, monkeypatch):
    use_paths(monkeypatch, paths)
    net = make_net()
    opt = _make(net)
    train(net, opt, 4)
    opt.zero_grad()
    _backward(net, 4)
    net.branches[1][0].weight.grad[0, 0] = float("nan")
    with pytest.raises(OptimizerError, match=r"non-finite gradient .* 'branches\.1\.0\.weight' of GeZIG 'branches\.1'"):
        opt.step()
    assert opt.redundant_groups == [] and opt.metrics()["step"] == 4


@pytest.mark.parametrize("paths", PATHS)
def test_non_finite_gradient_in_a_redundant_group_is_never_projected(paths, monkeypatch):
    use_paths(monkeypatch, paths)
    net = make_net()
    opt = _make(net, hybrid_steps=2)
    train(net, opt, 6)  # warm-up 5, then one hybrid step; the next step is the deadline
    target = next(g for g in opt.redundant_groups if not g.is_zero())
    opt.zero_grad()
    _backward(net, 6)
    target.slices[0].grad_view()[0] = float("inf")
    with pytest.raises(OptimizerError, match=re.escape(f"'{target.slices[0].name}' of GeZIG '{target.name}'")):
        opt.step()
    assert target not in opt.zero_groups and not target.is_zero()


def test_add_param_group_after_construction_is_refused():
    net = make_net()
    opt = _make(net)
    with pytest.raises(OptimizerError, match="GeZIG layout is fixed"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
