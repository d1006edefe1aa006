"""state_dict()/load_state_dict() resume H2SPG bit-identically (spec §5.7; torch.optim's "resume in lockstep")."""

from __future__ import annotations

import io

import pytest
import torch
from h2spg_testnets import PATHS, gezigs_of, is_valid, make_net, train, use_paths

from otov3.optim import H2SPG

SETTINGS = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "adam": {"variant": "adam", "lr": 1e-2},
    "adamw": {"variant": "adamw", "lr": 1e-2},
}


def _make(variant: str):
    net = make_net()
    opt = H2SPG(net.parameters(), gezigs_of(net), is_valid, target_group_sparsity=3, warmup_steps=20,
                hybrid_steps=20, **SETTINGS[variant])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
    return net, opt, sched


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: the optimizer state holds plain types and tensors only


@pytest.mark.parametrize(("variant", "first", "more"), [
    ("sgd", 10, 5),  # inside warm-up
    ("sgd", 15, 20),  # across the warm-up → hybrid boundary (selection happens after the reload)
    ("sgd", 30, 15),  # inside the deadline window, then past the deadline
    ("adam", 15, 20),
    ("adamw", 20, 25),  # reload right after the selection
])
@pytest.mark.parametrize("paths", PATHS)
def test_state_dict_resume_matches_uninterrupted_run(variant, first, more, paths, monkeypatch):
    use_paths(monkeypatch, paths)
    ref_net, ref_opt, ref_sched = _make(variant)
    train(ref_net, ref_opt, first + more, scheduler=ref_sched)

    net, opt, sched = _make(variant)
    train(net, opt, first, scheduler=sched)
    saved = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    del net, opt, sched

    net, opt, sched = _make(variant)
    net.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    train(net, opt, more, start=first, scheduler=sched)

    for (name, a), b in zip(ref_net.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [g.name for g in opt.redundant_groups] == [g.name for g in ref_opt.redundant_groups]
    assert [g.name for g in opt.zero_groups] == [g.name for g in ref_opt.zero_groups]
    assert torch.equal(opt.redundancy_scores, ref_opt.redundancy_scores)
    assert opt.metrics() == ref_opt.metrics()


def test_state_dict_holds_scores_redundant_set_and_zero_groups():
    net, opt, _ = _make("sgd")
    train(net, opt, 45)
    run = opt.state_dict()["state"]["h2spg"]
    assert run["step"] == 45 and len(run["redundant"]) == 3 and sorted(run["zero"]) == sorted(run["redundant"])
    assert run["scores"].shape == (5,)


def test_loading_a_state_dict_of_other_gezigs_is_refused():
    net, opt, _ = _make("sgd")
    sd = opt.state_dict()
    sd["state"]["h2spg"] = dict(sd["state"]["h2spg"], gezigs=["x"] * 5)
    with pytest.raises(ValueError, match="saved for GeZIGs"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="not saved by H2SPG"):
        opt.load_state_dict(torch.optim.SGD(net.parameters(), lr=0.1).state_dict())
