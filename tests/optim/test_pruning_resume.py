"""HESSO and DHSPG resume bit-identically from state_dict() (torch.optim's "resume in lockstep"): every variant,
every phase boundary, continued in a fresh process; a tampered state dict is refused and nothing is loaded."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from channel_testnets import channel_groups, make_channel_net, train_images

from otov3.optim import DHSPG, HESSO

VARIANTS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}, "adam": {"variant": "adam", "lr": 1e-2},
            "adamw": {"variant": "adamw", "lr": 1e-2}}
OPTIMIZERS = {"hesso": (HESSO, {"periods": 2}), "dhspg": (DHSPG, {"tolerance": 0.1})}
TOTAL = 20  # warm-up 6, deadline 16
BOUNDARIES = {  # steps after which a checkpoint is taken
    "hesso": {"last_warmup_step": 6, "first_period_step": 7, "first_zeros": 10, "idle_step": 11,
              "last_zeros": 15, "deadline_step": 16},
    "dhspg": {"last_warmup_step": 5, "selection_step": 6, "first_hybrid_step": 7, "window_start": 11,
              "deadline_step": 16, "after_deadline": 17},
}


def _make(kind: str, variant: str):
    cls, extra = OPTIMIZERS[kind]
    net = make_channel_net()
    opt = cls(net.parameters(), channel_groups(net), target_group_sparsity=0.5, warmup_steps=6, hybrid_steps=10,
              **extra, **VARIANTS[variant])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
    return net, opt, sched


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: the optimizer state holds plain types and tensors only


_CONTINUE = textwrap.dedent('''
    import sys
    import torch
    torch.set_num_threads(1)
    from test_pruning_resume import _make, TOTAL
    from channel_testnets import train_images
    root = sys.argv[1]
    for case in sys.argv[2:]:
        kind, variant, first = case.split(":")
        saved = torch.load(f"{root}/{kind}-{variant}-{first}.pt")
        net, opt, sched = _make(kind, variant)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        train_images(net, opt, TOTAL - int(first), start=int(first), scheduler=sched)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, f"{root}/{kind}-{variant}-{first}.done.pt")
''')


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """Uninterrupted runs (a checkpoint at every boundary), then one fresh process that continues each."""
    root = tmp_path_factory.mktemp("resume")
    finals = {}
    for kind in OPTIMIZERS:
        for variant in VARIANTS:
            net, opt, sched = _make(kind, variant)
            done = 0
            for first in sorted(BOUNDARIES[kind].values()):
                train_images(net, opt, first - done, start=done, scheduler=sched)
                done = first
                torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                           root / f"{kind}-{variant}-{first}.pt")
            train_images(net, opt, TOTAL - done, start=done, scheduler=sched)
            finals[kind, variant] = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict()})
    tests = Path(__file__).resolve().parent
    cases = [f"{k}:{v}:{first}" for k in OPTIMIZERS for v in VARIANTS for first in BOUNDARIES[k].values()]
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


CASES = [(k, v, b) for k in OPTIMIZERS for v in VARIANTS for b in BOUNDARIES[k]]


@pytest.mark.parametrize(("kind", "variant", "boundary"), CASES)
def test_resuming_in_a_fresh_process_at_every_phase_boundary_is_bit_identical(kind, variant, boundary, continued):
    root, finals = continued
    got = torch.load(root / f"{kind}-{variant}-{BOUNDARIES[kind][boundary]}.done.pt")
    ref = finals[kind, variant]
    assert _same(ref["model"], got["model"])
    assert _same(ref["opt"], got["opt"])
    run = got["opt"]["state"][kind]
    assert run["step"] == TOTAL and len(run["zero"]) == 17


def _tampered(kind: str):
    net, opt, sched = _make(kind, "sgd")
    train_images(net, opt, 12, scheduler=sched)
    return net, opt


def _move_to_zero(run) -> None:
    """Lists a group that is not zero (HESSO: an active one; DHSPG: a candidate) as zero."""
    pool = run["active"] if "active" in run else [g for g in run["candidates"] if g not in run["zero"]]
    g = pool.pop(0) if "active" in run else pool[0]
    run["zero"].append(g)


REFUSALS = {
    "index out of range": (lambda run: run["zero"].append(99), r"\['zero'\] holds 99; group indices must be ints"),
    "a non-zero group listed as zero": (lambda run: _move_to_zero(run), r"but its weights are not zero"),
    "other groups": (lambda run: run.update(groups=["x"] * 34), r"saved for groups"),
    "negative step": (lambda run: run.update(step=-1), r"\['step'\]=-1 must be an int >= 0"),
    "missing field": (lambda run: run.pop("zero"), r"lacks \['zero'\]"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_tampered_state_dict_is_refused_and_nothing_is_loaded(kind, case):
    net, opt = _tampered(kind)
    good = opt.state_dict()
    bad = copy.deepcopy(good)
    edit, pattern = REFUSALS[case]
    edit(bad["state"][kind])
    before = copy.deepcopy(good)
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(bad)
    assert _same(opt.state_dict(), before)
    _, other = _tampered(kind)
    other.load_state_dict(good)  # the untampered one loads
    assert _same(other.state_dict()["state"][kind], good["state"][kind])
