"""state_dict()/load_state_dict() resume H2SPG bit-identically (spec §5.7; torch.optim's "resume in lockstep")."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


# --- issue 11 acceptance 3: every variant, every phase boundary, continued in a fresh process ----------------

TOTAL = 45  # warm-up 20 (the selection happens at step 20), deadline at step 40, then plain steps
BOUNDARIES = {"last_warmup_step": 19, "first_hybrid_step": 20, "deadline_step": 39, "after_deadline": 40}

_CONTINUE = textwrap.dedent('''
    import sys
    import torch
    torch.set_num_threads(1)
    from test_h2spg_resume import _make
    from h2spg_testnets import train
    root = sys.argv[1]
    for case in sys.argv[2:]:
        variant, first = case.split(":")
        saved = torch.load(f"{root}/{variant}-{first}.pt")
        net, opt, sched = _make(variant)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        train(net, opt, TOTAL - int(first), start=int(first), scheduler=sched)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, f"{root}/{variant}-{first}.done.pt")
''').replace("TOTAL", str(TOTAL))


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """Uninterrupted runs (saving a checkpoint at every boundary), then one fresh process that continues each."""
    root = tmp_path_factory.mktemp("resume")
    finals = {}
    for variant in SETTINGS:
        net, opt, sched = _make(variant)
        done = 0
        for first in sorted(BOUNDARIES.values()):
            train(net, opt, first - done, start=done, scheduler=sched)
            done = first
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                       root / f"{variant}-{first}.pt")
        train(net, opt, TOTAL - done, start=done, scheduler=sched)
        finals[variant] = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict()})
    tests = Path(__file__).resolve().parent
    cases = [f"{v}:{first}" for v in SETTINGS for first in BOUNDARIES.values()]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    subprocess.run([sys.executable, "-c", _CONTINUE, str(root), *cases], check=True, timeout=300, env=env)
    return root, finals


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
@pytest.mark.parametrize("variant", list(SETTINGS))
def test_resuming_in_a_fresh_process_at_every_phase_boundary_is_bit_identical(variant, boundary, continued):
    root, finals = continued
    got = torch.load(root / f"{variant}-{BOUNDARIES[boundary]}.done.pt")
    ref = finals[variant]
    assert _same(ref["model"], got["model"])
    assert _same(ref["opt"], got["opt"])  # buffers, step counters, scores, redundant set, zero groups
    run = got["opt"]["state"]["h2spg"]
    assert run["step"] == TOTAL and len(run["redundant"]) == 3 and sorted(run["zero"]) == sorted(run["redundant"])
