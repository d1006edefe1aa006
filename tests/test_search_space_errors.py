"""Bad input to OTO: each case raises a clear otov3 error naming the culprit, and the user's model is untouched."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from otov3 import OTO, CaptureError, OTOError, SearchSpaceError
from otov3.graph.types import VertexKind


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return x


class Net(nn.Module):
    """conv-bn stem, two branches into an Add, a body that may hold a `DataDependent`, a linear head."""

    def __init__(self, *, untraceable: bool = False, unused: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.right = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), DataDependent(4) if untraceable else nn.Identity())
        self.head = nn.Linear(4, 2)
        if unused:
            self.spare = nn.Linear(3, 3)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.left(x) + self.right(x)
        return self.head(self.body(x).mean((2, 3)))


def _model(**kwargs) -> Net:
    torch.manual_seed(0)
    model = Net(**kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    model.train()
    model.right.eval()  # mixed flags: a blanket model.train()/eval() afterwards would be caught
    return model


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": copy.deepcopy(model.state_dict()),
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()},
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        now = after["state"][key]
        assert now.dtype == value.dtype and torch.equal(now, value), f"{key} changed"
    for field in ("training", "requires_grad", "attributes", "hooks"):
        assert after[field] == before[field], f"the model's {field} changed"


X = torch.randn(2, 1, 8, 8)


def test_untraceable_submodule_error_names_its_path_and_leaves_the_model_unchanged():
    model = _model(untraceable=True)
    before = _snapshot(model)
    with pytest.raises(CaptureError, match=r"body\.1.*DataDependent"):
        OTO(model, X)
    _assert_unchanged(model, before)


def test_untraceable_model_error_suggests_leaf_modules_and_leaves_the_model_unchanged():
    model = _model(untraceable=True)
    before = _snapshot(model)
    with pytest.raises(CaptureError, match=r"Could not trace the model.*leaf_modules="):
        OTO(model, X)
    _assert_unchanged(model, before)


def test_leaf_modules_capture_the_untraceable_model_as_one_unknown_op():
    model = _model(untraceable=True)
    before = _snapshot(model)
    oto = OTO(model, X, leaf_modules=[DataDependent])
    leaf = [v for v in oto.space.trace.vertices.values() if v.module == "body.1"]
    assert len(leaf) == 1
    assert leaf[0].traits.kind is VertexKind.UNKNOWN and "DataDependent" in leaf[0].traits.reason
    assert leaf[0].params == ("body.1.conv.weight", "body.1.conv.bias")
    assert not any("body.1" in name for g in oto.groups for name in g.param_names())
    assert {g.name for g in oto.groups} == {"left.0+left.1", "right.0+right.1"}
    _assert_unchanged(model, before)


def test_dummy_input_of_the_wrong_shape_names_the_failing_layer_and_leaves_the_model_unchanged():
    model = _model()
    before = _snapshot(model)
    with pytest.raises(CaptureError, match=r"module 'stem\.0' \(Conv2d\).*1 channels, but got 3"):
        OTO(model, torch.randn(2, 3, 8, 8))
    _assert_unchanged(model, before)


def test_model_without_trainable_parameters_is_rejected_and_left_unchanged():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    before = _snapshot(model)
    with pytest.raises(SearchSpaceError, match=r"Net has no trainable parameters.*requires_grad=True"):
        OTO(model, X)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("not_a_module", [lambda x: x, "resnet18", None], ids=["function", "string", "none"])
def test_a_model_that_is_not_a_module_is_rejected(not_a_module):
    with pytest.raises(OTOError, match=r"model must be a torch\.nn\.Module"):
        OTO(not_a_module, X)


@pytest.mark.parametrize("bad", [5, "x", None, 2.5], ids=["int", "str", "none", "float"])
def test_dummy_input_of_the_wrong_type_is_rejected_and_leaves_the_model_unchanged(bad):
    model = _model()
    before = _snapshot(model)
    with pytest.raises(CaptureError, match=r"dummy_input must be a tensor, a tuple of inputs or a dict"):
        OTO(model, bad)
    _assert_unchanged(model, before)


def test_too_many_positional_dummy_inputs_are_rejected():
    model = _model()
    before = _snapshot(model)
    with pytest.raises(CaptureError, match=r"2 positional inputs but the model's forward takes 1"):
        OTO(model, (X, X))
    _assert_unchanged(model, before)


def test_unused_trainable_parameter_warns_by_name_and_lands_in_exactly_one_group():
    model = _model(unused=True)
    before = _snapshot(model)
    with pytest.warns(UserWarning, match=r"not used by the traced forward pass.*spare\.weight, spare\.bias"):
        oto = OTO(model, X)
    _assert_unchanged(model, before)

    owners = {}
    for g in (*oto.groups, *oto.complementary):
        for s in g.slices:
            assert s.index is None or s.name not in ("spare.weight", "spare.bias")
            owners.setdefault(s.name, []).append(g.name)
    assert owners["spare.weight"] == ["<unused>"] and owners["spare.bias"] == ["<unused>"]
    assert all(len(names) == 1 for names in owners.values()), owners
    assert set(owners) == {n for n, p in model.named_parameters() if p.requires_grad}
    unused = next(g for g in oto.complementary if g.name == "<unused>")
    assert not unused.is_gezig and "not used" in unused.reason


def test_a_traceable_model_builds_without_warnings_and_is_left_unchanged():
    model = _model()
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oto = OTO(model, X)
    assert {g.name for g in oto.groups} == {"left.0+left.1", "right.0+right.1"}
    _assert_unchanged(model, before)
