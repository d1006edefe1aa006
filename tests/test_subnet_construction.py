"""Sub-network construction (spec §6): exact, smaller, standalone; the user's model untouched."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch

from otov3 import OTO, ConstructionError
from otov3.subnet.source import check_source, generate_source
from otov3.zoo.demo_supnet import DemoSupNet
from otov3.zoo.stacked_unets import StackedUnets
from subnet_equivalence import assert_subnet_equivalent, count, randomize_, zero_groups_

DEMO_X = torch.randn(2, 1, 28, 28)


def _demo_oto(seed: int = 0) -> tuple[torch.nn.Module, OTO]:
    model = randomize_(DemoSupNet(), seed)
    return model, OTO(model, DEMO_X)


def _expected_removed_params(model: DemoSupNet, removed: set[str]) -> int:
    """Removed groups' own parameters plus the input columns of Conv6 fed by removed Concat operands."""
    groups = {g.name: g for g in OTO(model, DEMO_X).groups}
    total = sum(groups[name].numel() for name in removed)
    conv6 = model.fuse.conv6
    per_input_channel = conv6.out_channels * conv6.kernel_size[0] * conv6.kernel_size[1]
    operand_widths = {
        "branch2": model.branch2.conv2.out_channels,
        "branch3": model.branch3.conv3.out_channels,
        "branch4": model.branch4.conv5.out_channels,
    }
    for name in removed:
        prefix = name.split(".")[0]
        if prefix in operand_widths:
            total += operand_widths[prefix] * per_input_channel
    return total


def _all_subsets(n: int):
    for r in range(n + 1):
        yield from itertools.combinations(range(n), r)


def test_every_valid_zero_set_of_demosupnet_gives_an_exact_smaller_subnet():
    model, oto = _demo_oto()
    names = [g.name for g in oto.groups]
    checked = 0
    for subset in _all_subsets(len(names)):
        if not subset or not oto.is_valid_removal([names[i] for i in subset]):
            continue
        m = copy.deepcopy(model)
        o = OTO(m, DEMO_X)
        zero_groups_([o.groups[i] for i in subset])
        subnet = o.construct_subnet()
        assert_subnet_equivalent(m, subnet, (DEMO_X,), super_gm=o.space.captured.gm)
        removed = {names[i] for i in subset}
        assert count(m) - count(subnet) == _expected_removed_params(model, removed), removed
        checked += 1
    # 5 GeZIGs: 3 Concat operands (7 non-empty subsets keep >= 1) x Add operands (2 keep one of g7/g8) minus empty
    assert checked == (2**3 - 1) * 3 - 1


def test_paper_example_removes_concat_and_add_from_the_generated_code():
    model, oto = _demo_oto(1)
    zero_groups_([oto.group("branch2.conv2+branch2.bn2"), oto.group("branch3.conv3+branch3.bn3"),
                  oto.group("branch8.conv8+branch8.bn8")])
    subnet = oto.construct_subnet()
    assert_subnet_equivalent(model, subnet, (DEMO_X,))
    code = subnet.code
    assert "torch.cat" not in code and " + " not in code and "add" not in code
    order = [n.target for n in subnet.graph.nodes if n.op == "call_module"]
    prefixes = list(dict.fromkeys(t.split(".")[0] for t in order))
    assert prefixes == ["stem", "branch4", "fuse", "branch7", "head"]
    assert subnet.get_submodule("fuse.conv6").in_channels == model.branch4.conv5.out_channels


def test_stacked_unets_official_zero_set_deletes_the_whole_right_unet():
    model = randomize_(StackedUnets(), 3)
    x = torch.randn(2, 3, 32, 32)
    oto = OTO(model, x)
    # spec §3.5: zero = right output block (72-75), left bottleneck (13-19), right bottleneck (50-56), right decoder
    zero = [g for g in oto.groups if g.name.startswith(("right.out", "left.bottom", "right.bottom", "right.dec"))]
    assert len(zero) == 4
    assert oto.is_valid_removal(zero)
    zero_groups_(zero)
    subnet = oto.construct_subnet()
    assert_subnet_equivalent(model, subnet, (x,))
    assert not any(k.startswith("right.") for k in subnet.state_dict())
    assert not any(k.startswith("left.bottom") for k in subnet.state_dict())
    assert any(k.startswith("left.dec") for k in subnet.state_dict())
    check_source(generate_source(subnet), subnet, (x,), {})


def test_user_model_is_bit_identical_after_construction():
    model, oto = _demo_oto(2)
    zero_groups_([oto.groups[0], oto.groups[4]])
    before = copy.deepcopy(model.state_dict())
    model.train()
    flags = [m.training for m in model.modules()]
    oto.construct_subnet()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [m.training for m in model.modules()]


def test_invalid_zero_set_raises_naming_the_groups():
    _, oto = _demo_oto()
    zero_groups_([oto.group("branch7.conv7+branch7.bn7"), oto.group("branch8.conv8+branch8.bn8")])
    with pytest.raises(ConstructionError, match=r"disconnect the network.*branch7\.conv7"):
        oto.construct_subnet()


def test_nearly_zero_group_is_kept_and_reported():
    model, oto = _demo_oto()
    g = oto.group("branch2.conv2+branch2.bn2")
    zero_groups_([g])
    g.slices[0].view()[0, 0, 0, 0] = 1e-12
    with pytest.warns(UserWarning, match="nearly but not exactly zero"):
        subnet = oto.construct_subnet()
    assert "branch2.conv2.weight" in subnet.state_dict()
    assert_subnet_equivalent(model, subnet, (DEMO_X,), expect_smaller=False)


def test_nothing_zero_gives_an_equivalent_copy():
    model, oto = _demo_oto()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subnet = oto.construct_subnet()
    assert count(subnet) == count(model)
    assert_subnet_equivalent(model, subnet, (DEMO_X,), expect_smaller=False)
