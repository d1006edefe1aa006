"""Budget targets over a run: the score order that cannot reach the budget (an all-or-nothing step), state-dict
resume, and HESSO's periods (the last one fits the budget)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from optim.h2spg_testnets import gezigs_of, is_valid, make_net, train  # tests/optim, a namespace package
from otov3.errors import OptimizerError
from otov3.optim import H2SPG
from test_budget import WARMUP, _oto, _train

# BranchNet's GeZIGs 0..2 (branches), 3 (pair rows), 4 (b8): a size function where group 3 saves the most
SAVES, TOTAL = [1, 1, 1, 50, 5], 1000


def _size_of(indices: frozenset[int]) -> tuple[int, int]:
    return TOTAL - sum(SAVES[i] for i in indices), 0


def _branch_h2spg(net, limit: int, variant: str) -> H2SPG:
    settings = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"variant": "adam", "lr": 1e-2}}[variant]
    return H2SPG(net.parameters(), gezigs_of(net), is_valid, target_params=limit, size_of=_size_of,
                 reference_size=(TOTAL, 0), warmup_steps=2, hybrid_steps=10, score_weights=(0.0, 1.0), **settings)


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_a_score_order_that_cannot_reach_the_budget_raises_and_nothing_moves(variant):
    net = make_net()
    with torch.no_grad():
        net.b8.weight.mul_(1e-3)  # b8 scores most redundant; taking it forbids the pair rows (3), which save most
    opt = _branch_h2spg(net, 950, variant)  # largest first reaches {0, 1, 3}: 948 <= 950, so it is accepted
    train(net, opt, 1)
    weights, state = [p.detach().clone() for p in net.parameters()], copy.deepcopy(opt.state_dict())
    with pytest.raises(OptimizerError, match=r"target_params=950 .*cannot be reached along the score order at step 2:"
                                             r" removing every group it admits leaves 993 parameters .*Nothing moved"
                                             r".*target_params >= 0\.993 \(or >= 993\)"):
        train(net, opt, 1, start=1)
    after = opt.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))  # BN stats: the forward
    assert after["state"]["h2spg"]["step"] == 1 and after["state"]["h2spg"]["redundant"] is None
    assert torch.equal(after["state"]["h2spg"]["scores"], state["state"]["h2spg"]["scores"])
    for key, value in state["state"].items():
        if key != "h2spg":
            assert all(torch.equal(torch.as_tensor(value[k]), torch.as_tensor(after["state"][key][k])) for k in value)

    again = _branch_h2spg(net, 993, variant)  # what the message advises: a larger budget, the same state
    again.load_state_dict(state)
    train(net, again, 1, start=1)
    names = [g.name for g in again.redundant_groups]
    assert names[0] == "b8" and len(names) == 3 and "pair[:h]" not in names
    assert again.metrics()["target_k"] == 3 and again.predicted_size == (993, 0)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: the budget record is plain types


CASES = [("erase", "h2spg", {}), ("prune", "dhspg", {}), ("prune", "hesso", {"periods": 2})]


@pytest.mark.parametrize("first", [1, 4], ids=["before-selection", "after-selection"])
@pytest.mark.parametrize("mode,method,extra", CASES, ids=[c[1] for c in CASES])
def test_a_budget_run_resumes_bit_identically(mode, method, extra, first):
    steps = WARMUP + 6 + 1

    def make():
        model, oto, shape = _oto("demo", mode)
        opt = getattr(oto, method)(lr=0.01, momentum=0.9, target_macs=0.6, warmup_steps=WARMUP, hybrid_steps=6,
                                   **extra)
        return model, opt, shape

    ref_model, ref_opt, shape = make()
    _train(ref_model, ref_opt, shape, steps)

    model, opt, _ = make()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, *shape, generator=gen), torch.randint(0, 10, (2,), generator=gen))
               for _ in range(steps)]

    def run(m, o, part):
        for x, y in part:
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    run(model, opt, batches[:first])
    saved = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
    model, opt, _ = make()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    run(model, opt, batches[first:])
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert opt.metrics() == ref_opt.metrics() and opt.predicted_size == ref_opt.predicted_size is not None
    assert [g.name for g in opt.zero_groups] == [g.name for g in ref_opt.zero_groups]


@pytest.mark.filterwarnings("ignore:oto.h2spg\\(\\) was already called")
def test_a_budget_state_dict_needs_the_same_budget():
    model, oto, shape = _oto("demo", "erase")
    opt = oto.h2spg(target_macs=0.6, warmup_steps=WARMUP, hybrid_steps=4)
    _train(model, opt, shape, WARMUP + 1)
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"was saved with a budget"):
        oto.h2spg(target_group_sparsity=2, warmup_steps=WARMUP, hybrid_steps=4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"chose its groups for target_macs <= 1968750\.0, this optimizer has "
                                         r"target_macs=0\.7"):
        oto.h2spg(target_macs=0.7, warmup_steps=WARMUP, hybrid_steps=4).load_state_dict(state)
    plain = oto.h2spg(target_group_sparsity=2, warmup_steps=WARMUP, hybrid_steps=4).state_dict()
    with pytest.raises(ValueError, match=r"\['budget'\] must be the budget record .*saved without target_macs"):
        oto.h2spg(target_macs=0.6, warmup_steps=WARMUP, hybrid_steps=4).load_state_dict(plain)


def test_hesso_periods_split_the_budget_k_and_the_last_period_fits_the_budget():
    model, oto, shape = _oto("super_resnet", "prune")
    opt = oto.hesso(lr=0.01, momentum=0.9, target_params=0.5, warmup_steps=WARMUP, hybrid_steps=9, periods=3)
    _train(model, opt, shape, WARMUP + 1)
    first_k = opt.metrics()["target_k"]
    assert len(opt.active_groups) == first_k // 3
    _train(model, opt, shape, 9)
    zero = opt.state["hesso"]["zero"]  # in admission order, period by period
    oto.construct_subnet()
    report = oto.compression_report()
    limit = 0.5 * report["params_before"]
    assert report["params_after"] <= limit == report["budget_params"]
    assert (report["predicted_params"], report["predicted_macs"]) == (report["params_after"], report["macs_after"])
    assert opt.metrics()["target_k"] == len(zero)
    assert oto.predict_size([oto.groups[i] for i in zero[:-1]])["params"] > limit
