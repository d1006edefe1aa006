"""The flat pack of small parameters (`otov3.optim._flat`) and the batched gradient check: per-parameter state that
torch.optim can load, the per-tensor path where the pack cannot step, an exact ``sqrt`` floor, and NaN/Inf found
in large gradients too."""

from __future__ import annotations

import copy

import pytest
import torch
from h2spg_testnets import gezigs_of, is_valid, make_net, teacher_data, train
from torch import nn

from otov3.errors import OptimizerError
from otov3.optim import H2SPG
from otov3.optim._checks import check_gradients
from otov3.optim._flat import sqrt_floor

SGD_KW = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


@pytest.fixture(autouse=True)
def eager_engine(monkeypatch):
    """The flat packs are the eager engine's path for small parameters (the fused kernels step them in place)."""
    import otov3.optim._native as native

    monkeypatch.setattr(native, "available", lambda: False)


def test_small_parameters_state_is_per_parameter_views_that_torch_sgd_loads():
    net = make_net()
    opt = H2SPG(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=3, warmup_steps=50, **SGD_KW)
    train(net, opt, 3)
    bufs = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(b.shape == p.shape for b, p in zip(bufs, net.parameters(), strict=True))
    assert len({b.untyped_storage().data_ptr() for b in bufs}) == 1  # one flat buffer behind them
    twin = make_net()
    twin.load_state_dict(net.state_dict())
    sgd = torch.optim.SGD(twin.parameters(), **SGD_KW)
    saved = copy.deepcopy(opt.state_dict())  # as if through torch.save / torch.load
    sgd.load_state_dict({"state": {k: v for k, v in saved["state"].items() if not isinstance(k, str)},
                         "param_groups": saved["param_groups"]})
    train(net, opt, 2, start=3)
    train(twin, sgd, 2, start=3)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_parameter_without_gradient_is_skipped_like_torch_sgd_then_rejoins_the_pack():
    a, b = make_net(), make_net()
    opt_a = H2SPG(a.parameters(), gezigs_of(a), is_valid, target_group_sparsity=3, warmup_steps=50, **SGD_KW)
    opt_b = torch.optim.SGD(b.parameters(), **SGD_KW)
    x, y = teacher_data()
    for t in range(6):
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[64 * t:64 * t + 64]), y[64 * t:64 * t + 64]).backward()
            if t in (2, 3):
                net.head.bias.grad = None  # not stepped: no momentum update either
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)
    bufs = [opt_a.state[p]["momentum_buffer"] for p in a.parameters()]
    assert len({t.untyped_storage().data_ptr() for t in bufs}) == 1  # still one buffer


def test_reassigned_parameter_data_is_what_the_step_updates():
    net = make_net()
    opt = H2SPG(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=3, warmup_steps=50, **SGD_KW)
    train(net, opt, 2)
    net.head.bias.data = torch.full_like(net.head.bias, 0.5)  # e.g. a re-initialisation after construction
    opt.zero_grad()
    net.head.bias.grad = torch.ones_like(net.head.bias)
    buf = opt.state[net.head.bias]["momentum_buffer"].clone()
    opt.step()
    expected = 0.5 - 0.1 * (0.9 * buf + 1 + 1e-3 * 0.5)
    assert torch.allclose(net.head.bias, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("eps", [1e-8, 1e-12, 3e-5])
def test_sqrt_floor_leaves_the_adam_denominator_bit_identical(dtype, eps):
    gen = torch.Generator().manual_seed(0)
    tiny = torch.finfo(dtype).tiny
    v = torch.cat((torch.zeros(8), torch.rand(64, generator=gen) * tiny * 4, 10 ** -torch.randint(0, 60, (512,),
                   generator=gen).double(), torch.rand(64, generator=gen))).to(dtype)
    for scale in (1.0, 0.999, 0.0316, 0.5):
        floor = sqrt_floor(eps, dtype, scale=scale)
        if floor is None:
            continue
        assert floor >= tiny
        exact = (v.sqrt() / scale).add_(eps)
        fast = (torch.clamp(v, min=floor).sqrt() / scale).add_(eps)
        assert torch.equal(exact, fast), (scale, floor)


def test_nan_in_a_large_gradient_is_found_and_huge_finite_gradients_pass():
    big, small = nn.Parameter(torch.zeros(300, 300)), nn.Parameter(torch.zeros(5))
    big.grad, small.grad = torch.full_like(big, 3e38), torch.ones_like(small)  # the sum overflows: re-checked
    check_gradients([small, big], ["'small'", "'big'"], 0)
    big.grad[7, 7] = float("nan")
    with pytest.raises(OptimizerError, match=r"non-finite gradient \(NaN/Inf\) in parameter 'big' at step 1"):
        check_gradients([small, big], ["'small'", "'big'"], 0)
    big.grad[7, 7] = 0.0
    small.grad[1] = float("-inf")
    with pytest.raises(OptimizerError, match=r"in parameter 'small'"):
        check_gradients([small, big], ["'small'", "'big'"], 0)


def test_a_refused_shrink_step_leaves_the_policy_state_as_it_was():
    from channel_testnets import channel_groups, image_data, make_channel_net, train_images

    from otov3.optim import HESSO

    net = make_channel_net()
    opt = HESSO(net.parameters(), channel_groups(net), target_group_sparsity=0.5, warmup_steps=4, hybrid_steps=12,
                periods=3, **SGD_KW)
    train_images(net, opt, 6)  # step 7 is the period's last shrink step: the active channels become zero
    run = opt.state["hesso"]
    active, before = list(run["active"]), [p.detach().clone() for p in net.parameters()]
    x, y = image_data()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x[:32]), y[:32]).backward()
    w = net.head.weight
    w.grad = w.grad.to_sparse()  # decided before the pass, refused inside it
    with pytest.raises(OptimizerError, match="sparse gradients"):
        opt.step()
    assert run["active"] == active and run["zero"] == [] and run["step"] == 6
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))

