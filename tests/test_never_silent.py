"""Issue 11, "never silent": every case seen becomes a named error or a correct result, and the user's model and
files are unchanged after each error. Items 1–9 of the issue in order (item 10, the CLI, is `test_cli_errors`;
the artefact files of item 5 are `test_export_artefacts`)."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import pytest
import torch
from torch import nn

import otov3.subnet.export as export_module
from never_silent_nets import (
    X,
    backward,
    folder_bytes,
    leftovers,
    optimizer_state,
    same_tensors,
    snapshot,
    tiny,
    train,
)
from otov3 import OTO, ConstructionError, DriftError, ExportError, OptimizerError, SearchSpaceError
from otov3.subnet.verify import compare_outputs, relative_difference
from subnet_equivalence import assert_subnet_equivalent, zero_groups_

OPTS = {"lr": 0.1, "momentum": 0.9, "target_group_sparsity": 2, "warmup_steps": 2, "hybrid_steps": 4}


def _oto(seed: int = 0):
    model = tiny(seed)
    return model, OTO(model, X)


# --- 1. verification that NaN cannot fool ----------------------------------------------------------------


def test_relative_difference_never_counts_nan_as_a_match():
    assert relative_difference([torch.tensor([1.0])], [torch.tensor([float("nan")])]) == float("inf")
    assert relative_difference([torch.tensor([float("nan")])], [torch.tensor([float("nan")])]) == float("inf")
    assert relative_difference([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 2.0])]) == 0.0


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor
    extra: tuple


def test_output_comparison_walks_nested_outputs_and_names_the_non_finite_leaf():
    ref = {"a": (torch.ones(2), _Out(torch.ones(3), (torch.ones(1), 4)))}
    same = {"a": (torch.ones(2), _Out(torch.ones(3), (torch.ones(1), 4)))}
    assert compare_outputs(ref, same) == 0.0
    other = {"a": (torch.ones(2), _Out(torch.ones(3), (torch.full((1,), 0.5), 4)))}
    assert compare_outputs(ref, other) == pytest.approx(0.5)
    assert compare_outputs(ref, {"a": (torch.ones(2),)}) == float("inf")  # structure differs
    assert compare_outputs(ref, {"a": (torch.ones(2), _Out(torch.ones(3), (torch.ones(1), 5)))}) == 0.25
    bad = {"a": (torch.ones(2), _Out(torch.tensor([1.0, float("nan"), 1.0]), (torch.ones(1), 4)))}
    with pytest.raises(ConstructionError, match=r"sub-network's output\['a'\]\[1\]\.logits holds 1 non-finite"):
        compare_outputs(ref, bad)


def test_a_network_with_a_nan_weight_is_refused_and_nothing_is_written(tmp_path):
    model, oto = _oto()
    zero_groups_([oto.group("a")])
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ConstructionError, match=r"weights hold NaN/Inf: 'head\.weight' \(1 of 24 values\)"):
        oto.construct_subnet(tmp_path / "out")
    assert not (tmp_path / "out").exists() and same_tensors(before, snapshot(model))
    assert oto.last_subnet is None


class _Sqrt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        z = torch.sqrt(self.stem(x))  # NaN for negative pre-activations: a NaN output for most inputs
        return {"out": torch.relu(self.a(z)) + torch.relu(self.b(z))}


def test_a_nan_output_is_a_construction_error_naming_the_output_leaf():
    torch.manual_seed(0)
    model = _Sqrt()
    oto = OTO(model, X.abs())
    zero_groups_([oto.group("a")])
    with pytest.raises(ConstructionError, match=r"super-network's output\['out'\] holds \d+ non-finite"):
        oto.construct_subnet()


def test_nested_dict_outputs_are_verified_leaf_by_leaf():
    from never_silent_nets import DictNet

    torch.manual_seed(0)
    model = DictNet()
    oto = OTO(model, {"x": X, "scale": torch.rand(4, 8)})
    zero_groups_([oto.group("q")])
    subnet = oto.construct_subnet()
    inputs = {"x": torch.randn(4, 6), "scale": torch.rand(4, 8)}
    with torch.no_grad():
        assert compare_outputs(model.eval()(**inputs), subnet.eval()(**inputs)) <= 1e-6


# --- 2. construct_subnet knows what the optimizer promised -----------------------------------------------


def test_construction_before_the_deadline_names_the_pending_groups_and_refuses():
    model, oto = _oto()
    opt = oto.h2spg(**OPTS)  # deadline: step 2 + 4
    train(model, opt, 4)
    before = snapshot(model)
    with pytest.raises(ConstructionError, match=r"still non-zero: '[abc]' \(norm [\d.e-]+\).*due by step 6 .*"
                                                r"stopped at step 4.*train at least 2 more step"):
        oto.construct_subnet()
    assert same_tensors(before, snapshot(model)) and oto.last_subnet is None
    with pytest.warns(UserWarning, match="allow_partial=True, building anyway"):
        partial = oto.construct_subnet(allow_partial=True)
    assert_subnet_equivalent(model, partial, (X,), expect_smaller=False)


def test_construction_during_warmup_refuses():
    model, oto = _oto()
    opt = oto.h2spg(**{**OPTS, "warmup_steps": 3})
    train(model, opt, 1)
    with pytest.raises(ConstructionError, match=r"ran 1 step\(s\) and is still in warm-up.*whole network"):
        oto.construct_subnet()


def test_no_deadline_warns_at_creation_and_construction_refuses_missing_zeros():
    model, oto = _oto()
    with pytest.warns(UserWarning, match=r"hybrid_steps=None\) sets no deadline"):
        opt = oto.h2spg(**{**OPTS, "hybrid_steps": None, "lr": 0.01})
    train(model, opt, 6)
    assert len(opt.zero_groups) < 2
    with pytest.raises(ConstructionError, match=r"due never: hybrid_steps=None sets no deadline"):
        oto.construct_subnet()


def test_training_past_the_deadline_gives_the_promised_subnet():
    model, oto = _oto()
    opt = oto.h2spg(**OPTS)
    train(model, opt, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subnet = oto.construct_subnet()
    assert len(oto.zero_groups()) == 2 and oto.last_subnet is subnet
    assert_subnet_equivalent(model, subnet, (X,))


def test_construction_without_any_optimizer_works_as_before():
    model, oto = _oto()
    zero_groups_([oto.group("b")])
    assert_subnet_equivalent(model, oto.construct_subnet(), (X,))


# --- 3. drift between capture and use --------------------------------------------------------------------


@pytest.mark.parametrize("change", ["double", "replace", "meta"])
def test_drift_is_detected_when_the_optimizer_is_created_and_at_construction(change):
    model, oto = _oto()
    zero_groups_([oto.group("b")])
    if change == "double":
        model.double()
        pattern = r"the model no longer runs on the dummy input.*float64 on cpu.*\.double\(\)"
    elif change == "replace":
        model.a.weight = nn.Parameter(model.a.weight.detach().clone())
        pattern = r"parameter 'a\.weight' of group 'a' was replaced"
    else:  # another device whose tensors cannot take over the old ones
        model.to("meta")
        pattern = r"parameter 'a\.weight' of group 'a' was replaced .*\.to\(\) a device"
    before = snapshot(model)
    with pytest.raises(DriftError, match="Before creating the optimizer: " + pattern):
        oto.h2spg(**OPTS)
    with pytest.raises(DriftError, match="Before constructing the sub-network: " + pattern):
        oto.construct_subnet()
    assert change == "meta" or same_tensors(before, snapshot(model))  # meta tensors hold no values to compare


def test_drift_in_output_dtype_is_named():
    class Cast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            a, b = self.a(x.to(self.a.weight.dtype)), self.b(x.to(self.b.weight.dtype))
            return self.head(torch.relu(a) + torch.relu(b))

    model = Cast()
    oto = OTO(model, X)
    model.double()
    with pytest.raises(DriftError, match=r"output was float32 on cpu \[4, 2\] at capture and is float64"):
        oto.h2spg(**OPTS)


# --- 4. artefacts: all or nothing ------------------------------------------------------------------------


def _exported(tmp_path, group="b"):
    model, oto = _oto()
    zero_groups_([oto.group(group)])
    out = tmp_path / "out"
    oto.construct_subnet(out)
    return model, oto, out


def test_a_reused_out_dir_never_keeps_a_stale_subnet_py(tmp_path, monkeypatch):
    _, _, out = _exported(tmp_path)
    assert (out / "subnet.py").exists()
    model, oto = _oto(seed=1)
    zero_groups_([oto.group("a"), oto.group("c")])

    def refuse(*args, **kwargs):
        raise ConstructionError("cannot write it (test)")

    monkeypatch.setattr(export_module, "generate_source", refuse)
    with pytest.warns(UserWarning, match=r"subnet\.py' was not written: cannot write it \(test\)"):
        subnet = oto.construct_subnet(out)
    assert not (out / "subnet.py").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == {"subnet.py": "cannot write it (test)"}
    assert sorted(summary["removed_groups"]) == ["a", "c"]
    fresh = copy.deepcopy(subnet)
    fresh.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))  # the new state_dict, no mix
    assert leftovers(tmp_path) == []


def test_an_out_dir_that_is_a_file_is_an_export_error_and_the_subnet_is_kept(tmp_path):
    model, oto = _oto()
    zero_groups_([oto.group("b")])
    target = tmp_path / "out"
    target.write_text("mine")
    with pytest.raises(ExportError, match=r"out_dir '.*out' exists and is not a folder") as info:
        oto.construct_subnet(target)
    assert target.read_text() == "mine"
    assert info.value.subnet is oto.last_subnet is not None
    assert_subnet_equivalent(model, oto.last_subnet, (X,))


def test_a_file_system_error_is_an_export_error_with_the_path_and_the_old_export_stays(tmp_path, monkeypatch):
    _, oto, out = _exported(tmp_path)
    before = folder_bytes(out)
    zero_groups_([oto.group("c")])

    def read_only(*args, **kwargs):
        raise RuntimeError("File state_dict.pt cannot be opened: Permission denied")

    monkeypatch.setattr(export_module.torch, "save", read_only)
    with pytest.raises(ExportError, match=r"Cannot write '.*out/state_dict\.pt': .*Permission denied") as info:
        oto.construct_subnet(out)
    assert info.value.path == out / "state_dict.pt"
    assert folder_bytes(out) == before and leftovers(tmp_path) == []
    assert info.value.subnet is oto.last_subnet and len(list(oto.last_subnet.parameters())) > 0


def test_a_non_empty_folder_that_is_no_export_needs_overwrite(tmp_path):
    model, oto = _oto()
    zero_groups_([oto.group("b")])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"is not empty and holds no earlier otov3 export.*overwrite=True"):
        oto.construct_subnet(out)
    assert folder_bytes(out) == {"notes.txt": b"keep me"}
    oto.construct_subnet(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "summary.json").exists()
    oto.construct_subnet(out)  # now an earlier export: reused without overwrite
    assert leftovers(tmp_path) == []


# --- 6. the optimizer step is all or nothing -------------------------------------------------------------


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("phase_steps", [1, 3])  # in warm-up, in the hybrid phase
def test_a_nan_gradient_outside_the_gezigs_moves_nothing_and_names_the_parameter(variant, phase_steps):
    model, oto = _oto()
    kw = {"momentum": 0.9} if variant == "sgd" else {}
    opt = oto.h2spg(**{**OPTS, "variant": variant, **kw, "lr": 0.01})
    train(model, opt, phase_steps)
    opt.zero_grad()
    backward(model, phase_steps)
    model.stem.weight.grad[0, 0] = float("nan")
    weights, state = snapshot(model), optimizer_state(opt)
    with pytest.raises(OptimizerError, match=rf"non-finite gradient \(NaN/Inf\) in parameter 'stem\.weight' at step "
                                             rf"{phase_steps + 1}; H2SPG did not move any parameter or buffer"):
        opt.step()
    assert same_tensors(weights, snapshot(model))
    after = optimizer_state(opt)
    assert after["state"]["h2spg"]["step"] == phase_steps
    assert same_tensors(_buffers(state), _buffers(after))


def test_huge_but_finite_gradients_are_not_mistaken_for_non_finite_ones():
    model, oto = _oto()
    opt = oto.h2spg(**{**OPTS, "lr": 1e-30, "momentum": 0.0})
    opt.zero_grad()
    backward(model, 0)
    model.stem.weight.grad.fill_(1e30)  # its L2 norm overflows float32, every entry is finite
    opt.step()
    assert bool(torch.isfinite(model.stem.weight).all())


def _buffers(sd):
    return {f"{i}.{k}": v for i, s in sd["state"].items() if isinstance(i, int) for k, v in s.items()
            if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"lr": float("inf")}, r"lr=inf must be > 0 \(a finite number\)"),
    ({"lr": float("nan")}, r"lr=nan"),
    ({"momentum": float("inf")}, r"momentum=inf"),
    ({"weight_decay": float("nan")}, r"weight_decay=nan"),
    ({"lam": float("inf")}, r"lam=inf"),
    ({"betas": (0.9, float("nan"))}, r"betas=\(0\.9, nan\)"),
])
def test_non_finite_hyper_parameters_are_refused(kw, pattern):
    _, oto = _oto()
    with pytest.raises(ValueError, match=pattern):
        oto.h2spg(**{**OPTS, **kw})


def test_a_non_finite_lr_set_after_creation_is_refused_before_the_step():
    model, oto = _oto()
    opt = oto.h2spg(**OPTS)
    train(model, opt, 1)
    opt.param_groups[0]["lr"] = float("inf")
    opt.zero_grad()
    backward(model, 1)
    weights = snapshot(model)
    with pytest.raises(ValueError, match=r"param_groups\[0\] lr=inf"):
        opt.step()
    assert same_tensors(weights, snapshot(model))


# --- 8. two optimizers on one OTO ------------------------------------------------------------------------


def test_a_second_optimizer_on_one_oto_warns():
    _, oto = _oto()
    oto.h2spg(**OPTS)
    with pytest.warns(UserWarning, match=r"oto\.h2spg\(\) was already called on this OTO"):
        oto.h2spg(**OPTS)


# --- 9. group and index arguments ------------------------------------------------------------------------


def test_groups_of_another_oto_are_refused():
    _, oto = _oto()
    _, other = _oto(seed=1)
    with pytest.raises(SearchSpaceError, match=r"Group 'a' belongs to another OTO"):
        oto.is_valid_removal([other.group("a")])
    with pytest.raises(SearchSpaceError, match=r"No GeZIG named 'zz'. Known GeZIGs: a, b, c"):
        oto.is_valid_removal(["zz"])
    with pytest.raises(SearchSpaceError, match=r"Expected GeZIGs .* got int 3"):
        oto.is_valid_removal([3])
    assert oto.is_valid_removal("a") and oto.is_valid_removal(oto.group("a"))  # one group, not its characters


@pytest.mark.parametrize(("indices", "pattern"), [
    ([99], r"GeZIG index 99 is out of range: this OTO has 3 GeZIGs, indices 0\.\.2"),
    ([-1], r"GeZIG index -1 is out of range"),
    ([1.0], r"GeZIG indices must be integers, got float 1\.0"),
    ([True], r"got bool True"),
])
def test_bad_indices_are_value_errors_saying_what_was_expected(indices, pattern):
    _, oto = _oto()
    with pytest.raises(ValueError, match=pattern):
        oto.is_valid_indices(indices)
    assert oto.is_valid_indices([1, 2]) and not oto.is_valid_indices([0, 1, 2])


def test_integral_float_step_counts_are_accepted_and_fractional_ones_explained():
    _, oto = _oto()
    opt = oto.h2spg(**{**OPTS, "warmup_steps": 10.0, "hybrid_steps": 20.0})
    assert opt.defaults["warmup_steps"] == 10 and isinstance(opt.defaults["warmup_steps"], int)
    with pytest.raises(ValueError, match=r"warmup_steps=10\.5 must be a whole number of steps"):
        oto.h2spg(**{**OPTS, "warmup_steps": 10.5})
    with pytest.raises(ValueError, match=r"hybrid_steps='5' must be None or a whole number of steps"):
        oto.h2spg(**{**OPTS, "hybrid_steps": "5"})
