"""Issue 11 item 7: `load_state_dict` checks the whole H2SPG run state before taking any of it, names the first
problem, and leaves the optimizer exactly as it was, so that training continues as if nothing happened."""

from __future__ import annotations

import copy

import pytest
import torch
from h2spg_testnets import gezigs_of, is_valid, make_net, train

from otov3.optim import H2SPG

SETTINGS = {"target_group_sparsity": 3, "warmup_steps": 5, "hybrid_steps": 5, "lr": 0.1, "momentum": 0.9}


def _make(net):
    names = [n for n, _ in net.named_parameters()]
    return H2SPG(net.parameters(), gezigs_of(net), is_valid, param_names=names, **SETTINGS)


@pytest.fixture(scope="module")
def saved():
    """A state dict after the deadline (three zero groups) and the weights that go with it."""
    net = make_net()
    opt = _make(net)
    train(net, opt, 12)
    return copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())


def _run(sd):
    return sd["state"]["h2spg"]


def _edit(sd, **run):
    sd = copy.deepcopy(sd)
    _run(sd).update(run)
    return sd


def _momentum_of_first(sd, value):
    sd = copy.deepcopy(sd)
    sd["state"][0]["momentum_buffer"] = value
    return sd


CASES = {
    "redundant index out of range": (lambda sd: _edit(sd, redundant=[0, 99, 3]), r"\['redundant'\] holds 99; GeZIG "
                                     r"indices must be ints in 0\.\.4"),
    "negative index": (lambda sd: _edit(sd, rejected=[-1]), r"\['rejected'\] holds -1"),
    "step not an int": (lambda sd: _edit(sd, step=12.5), r"\['step'\]=12\.5 must be an int >= 0"),
    "negative step": (lambda sd: _edit(sd, step=-3), r"\['step'\]=-3 must be an int >= 0"),
    "repeated index": (lambda sd: _edit(sd, zero=[3, 3]), r"\['zero'\] repeats a GeZIG index"),
    "zero outside redundant": (lambda sd: _edit(sd, zero=[i for i in range(5) if i not in _run(sd)["redundant"]]),
                               r"\['zero'\] lists \[.*\], which are not in 'redundant'"),
    "too many redundant": (lambda sd: _edit(sd, redundant=[0, 1, 2, 3, 4], zero=[]), r"holds 5 GeZIGs, more than K=3"),
    "invalid redundant set": (lambda sd: _edit(sd, redundant=[0, 1, 2], zero=[], forced=[], rejected=[]),
                              r"\['redundant'\] = \['branches\.0', 'branches\.1', 'branches\.2'\] is not a valid "
                              r"removal"),
    "scores of the wrong shape": (lambda sd: _edit(sd, scores=torch.zeros(4, dtype=torch.float64)),
                                  r"\['scores'\] must be a float64 tensor of shape \(5,\)"),
    "NaN score": (lambda sd: _edit(sd, scores=torch.tensor([0.0, float("nan"), 0, 0, 0], dtype=torch.float64)),
                  r"\['scores'\] holds NaN/Inf"),
    "missing field": (lambda sd: {**sd, "state": {**sd["state"], "h2spg": {k: v for k, v in _run(sd).items()
                                                                          if k != "forced"}}},
                      r"lacks \['forced'\]"),
    "run state is a list": (lambda sd: {**sd, "state": {**sd["state"], "h2spg": list(_run(sd))}},
                            r"\['h2spg'\] must be a dict, got list"),
    "state dict is a list": (lambda sd: [sd["state"], sd["param_groups"]],
                             r"must be a dict with 'state' and 'param_groups' .*got list"),
    "momentum of the wrong shape": (lambda sd: _momentum_of_first(sd, torch.zeros(3)),
                                    r"\[0\]\['momentum_buffer'\] of parameter 'stem\.weight' has shape \(3,\), the "
                                    r"parameter \(16, 12\)"),
    "NaN momentum": (lambda sd: _momentum_of_first(sd, torch.full((16, 12), float("nan"))),
                     r"\['momentum_buffer'\] of parameter 'stem\.weight' holds NaN/Inf"),
    "infinite lr": (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": float("inf")}]},
                    r"state_dict\['param_groups'\]\[0\] lr=inf"),
    "other GeZIGs": (lambda sd: _edit(sd, gezigs=["x"] * 5), r"saved for GeZIGs"),
    "unknown parameter id": (lambda sd: {**sd, "state": {**sd["state"], 99: {}}},
                             r"state_dict\['state'\]\[99\] refers to no parameter"),
    "Adam step of a wrong type": (lambda sd: {**sd, "state": {**sd["state"], 0: {"step": "3"}}},
                                  r"\[0\]\['step'\] of parameter 'stem\.weight' is '3'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_state_dict_is_refused_naming_the_problem_and_nothing_is_loaded(case, saved):
    weights, good = saved
    tamper, pattern = CASES[case]
    net = make_net(seed=1)
    net.load_state_dict(weights)
    opt = _make(net)
    train(net, opt, 2)  # some state of its own, which a refused load must keep
    net.load_state_dict(weights)  # the checkpoint's weights, loaded before the optimizer's state
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(tamper(copy.deepcopy(good)))
    after = opt.state_dict()
    assert _run(after) == {**_run(before), "scores": _run(after)["scores"]}
    assert torch.equal(_run(after)["scores"], _run(before)["scores"])
    assert all(torch.equal(before["state"][i]["momentum_buffer"], after["state"][i]["momentum_buffer"])
               for i in before["state"] if isinstance(i, int))


def test_a_zero_list_that_disagrees_with_the_weights_is_refused(saved):
    _, good = saved
    net = make_net()  # fresh weights: the saved zero groups are not zero here
    opt = _make(net)
    name = gezigs_of(net)[_run(good)["zero"][0]].name
    with pytest.raises(ValueError, match=rf"\['zero'\] lists GeZIG '{name}', but its weights are not zero \(norm "
                                         r"[\d.]+\); load the model's state_dict .* before the optimizer's"):
        opt.load_state_dict(good)
    assert _run(opt.state_dict())["step"] == 0


def test_the_checked_state_dict_loads_and_training_continues(saved):
    weights, good = saved
    net = make_net(seed=1)
    net.load_state_dict(weights)
    opt = _make(net)
    opt.load_state_dict(good)
    assert _run(opt.state_dict())["step"] == 12 and len(opt.zero_groups) == 3
    train(net, opt, 3, start=12)
    assert all(g.is_zero() for g in opt.zero_groups)
