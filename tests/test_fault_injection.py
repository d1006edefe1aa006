"""Fault injection (issue 11, acceptance 2): NaN/Inf in gradients, weights and outputs at random steps of a short
training run, and exports interrupted while writing each file in turn. Never a silent result, never a partial
`out_dir`: every fault ends in a named error (or is recovered from exactly), and the folder holds the old export
or the new one."""

from __future__ import annotations

import os
import pathlib
import random

import pytest
import torch

import otov3.api as api_module
import otov3.subnet.artefacts as artefacts_module
import otov3.subnet.export as export_module
from never_silent_nets import X, backward, folder_bytes, leftovers, same_tensors, snapshot, tiny, train
from otov3 import OTO, ConstructionError, ExportError, OptimizerError
from subnet_equivalence import assert_subnet_equivalent, zero_groups_

STEPS = 8  # warm-up 2, deadline 6, two plain steps
OPTS = {"lr": 0.05, "momentum": 0.9, "target_group_sparsity": 2, "warmup_steps": 2, "hybrid_steps": 4}
BAD = [float("nan"), float("inf"), float("-inf")]


def _run(seed: int):
    rng = random.Random(seed)
    model = tiny()
    oto = OTO(model, X)
    opt = oto.h2spg(**OPTS)
    names = [n for n, _ in model.named_parameters()]
    return rng, model, oto, opt, names


@pytest.mark.parametrize("seed", range(6))
def test_a_non_finite_gradient_at_a_random_step_is_refused_and_training_recovers(seed):
    rng, model, oto, opt, names = _run(seed)
    step, name, value = rng.randrange(STEPS), rng.choice(names), rng.choice(BAD)
    train(model, opt, step)
    opt.zero_grad()
    backward(model, step)
    grad = model.get_parameter(name).grad
    grad.view(-1)[rng.randrange(grad.numel())] = value
    weights, run = snapshot(model), dict(opt.state_dict()["state"]["h2spg"])
    with pytest.raises(OptimizerError, match=rf"non-finite gradient \(NaN/Inf\) in parameter '{name}'"):
        opt.step()
    assert same_tensors(weights, snapshot(model)) and opt.state_dict()["state"]["h2spg"]["step"] == run["step"]
    train(model, opt, STEPS - step, start=step)  # the bad batch skipped: the run goes on to its deadline
    subnet = oto.construct_subnet()
    assert len(oto.zero_groups()) == 2
    assert_subnet_equivalent(model, subnet, (X,))


@pytest.mark.parametrize("seed", range(6))
def test_a_non_finite_weight_at_a_random_step_never_gives_a_subnet(seed):
    rng, model, oto, opt, names = _run(seed)
    step, name, value = rng.randrange(STEPS), rng.choice(names), rng.choice(BAD)
    train(model, opt, step)
    with torch.no_grad():
        param = model.get_parameter(name)
        param.view(-1)[rng.randrange(param.numel())] = value
    try:
        train(model, opt, STEPS - step, start=step)
    except OptimizerError:
        pass  # the NaN reached the gradients: refused at that step
    with pytest.raises(ConstructionError, match=r"NaN|non-finite|still non-zero|still in warm-up"):
        oto.construct_subnet()
    assert oto.last_subnet is None


def _nan_from_call(k: int):
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) > k:
            return output * float("nan")
        return output

    return hook


@pytest.mark.parametrize("seed", range(4))
def test_a_nan_output_during_training_is_refused_at_that_step(seed):
    rng, model, oto, opt, _ = _run(seed)
    step = rng.randrange(STEPS)
    train(model, opt, step)
    handle = model.head.register_forward_hook(_nan_from_call(0))
    opt.zero_grad()
    backward(model, step)
    handle.remove()
    weights = snapshot(model)
    with pytest.raises(OptimizerError, match="non-finite gradient"):
        opt.step()
    assert same_tensors(weights, snapshot(model))


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("side", ["super", "sub"])
def test_a_nan_output_during_verification_is_a_construction_error(k, side, monkeypatch):
    model = tiny()
    oto = OTO(model, X)
    zero_groups_([oto.group("b")])
    if side == "super":
        # calls: the drift check, then 3 verification trials (the sub-network's copy of `head` shares the hook)
        model.head.register_forward_hook(_nan_from_call(k))
    else:
        build = api_module.apply_plan

        def faulty(*args, **kwargs):
            subnet = build(*args, **kwargs)
            subnet.head.register_forward_hook(_nan_from_call(min(k, 2)))
            return subnet

        monkeypatch.setattr(api_module, "apply_plan", faulty)
    with pytest.raises(ConstructionError, match=r"(super|sub)-network's output holds \d+ non-finite"):
        oto.construct_subnet()
    assert oto.last_subnet is None


# --- interrupted exports ---------------------------------------------------------------------------------


class _Fault:
    """Raises `error` at the `at`-th matching call (after writing half the bytes, for file writers)."""

    def __init__(self, error: BaseException, at: int = 0) -> None:
        self.error, self.at, self.calls = error, at, 0

    def hit(self) -> bool:
        self.calls += 1
        return self.calls == self.at + 1


def _inject(monkeypatch, where: str, fault: _Fault) -> None:
    if where == "state_dict.pt":
        real = torch.save

        def save(obj, f, *args, **kwargs):
            if fault.hit():
                pathlib.Path(f).write_bytes(b"PK\x03\x04 half")
                raise fault.error
            return real(obj, f, *args, **kwargs)

        monkeypatch.setattr(export_module.torch, "save", save)
    elif where in ("subnet.py", "summary.json"):
        real = pathlib.Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name == where and fault.hit():
                real(self, data[: len(data) // 2])
                raise fault.error
            return real(self, data, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    elif where == "subnet.onnx":
        def onnx_export(model, args, f, *rest, **kwargs):
            pathlib.Path(f).write_bytes(b"half an onnx file")
            raise fault.error

        monkeypatch.setattr(export_module.torch.onnx, "export", onnx_export)
    elif where == "commit":
        real = os.replace

        def replace(src, dst):
            if fault.hit():
                raise fault.error
            return real(src, dst)

        monkeypatch.setattr(artefacts_module.os, "replace", replace)
    elif where == "staging":
        def mkdtemp(*args, **kwargs):
            raise fault.error

        monkeypatch.setattr(artefacts_module.tempfile, "mkdtemp", mkdtemp)


# A new folder is moved into place with one rename (commit0); a reused one file by file (old ones out, new in).
WHERE = ["staging", "state_dict.pt", "subnet.py", "subnet.onnx", "summary.json"]


def _fresh_oto(group: str):
    model = tiny()
    oto = OTO(model, X)
    zero_groups_([oto.group(group)])
    return oto


EXPORT_FAULTS = [(w, False) for w in [*WHERE, "commit0"]]
EXPORT_FAULTS += [(w, True) for w in [*WHERE, *(f"commit{i}" for i in range(8))]]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["oserror", "interrupt"])
@pytest.mark.parametrize(("where", "reused"), EXPORT_FAULTS,
                         ids=[f"{w}-{'reused_dir' if r else 'new_dir'}" for w, r in EXPORT_FAULTS])
def test_an_export_interrupted_anywhere_leaves_the_folder_as_it_was(where, reused, error, tmp_path, monkeypatch):
    out = tmp_path / "out"
    if reused:
        _fresh_oto("a").construct_subnet(out)
    before = folder_bytes(out)
    oto = _fresh_oto("c")
    at = int(where.removeprefix("commit")) if where.startswith("commit") else 0
    _inject(monkeypatch, "commit" if where.startswith("commit") else where, _Fault(error, at))
    expected = ExportError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        oto.construct_subnet(out)
    monkeypatch.undo()
    assert folder_bytes(out) == before and out.exists() == reused
    assert leftovers(tmp_path) == []
    if expected is ExportError:
        assert "No space left on device" in str(info.value) and info.value.subnet is oto.last_subnet is not None
    oto.construct_subnet(out)  # and the next export succeeds
    assert sorted(folder_bytes(out)) == ["state_dict.pt", "subnet.onnx", "subnet.py", "summary.json"]
