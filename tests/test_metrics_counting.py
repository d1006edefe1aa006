"""count_params / count_flops against hand-computed figures (spec §7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otov3.metrics import count_flops, count_params


class _ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 7×7 → 4×4
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 4×4 → 2×2
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def test_conv_linear_macs_are_cin_cout_kh_kw_hout_wout_plus_in_out() -> None:
    model = _ConvLinear()
    conv_macs = 3 * 8 * 3 * 3 * 4 * 4
    linear_macs = 32 * 5
    assert count_flops(model, torch.randn(1, 3, 7, 7)) == conv_macs + linear_macs


def test_conv_linear_params_are_weights_biases_and_bn_affine_only() -> None:
    model = _ConvLinear()
    expected = (3 * 8 * 9 + 8) + (8 + 8) + (32 * 5 + 5)  # conv, BN γ/β (running stats are buffers), linear
    assert count_params(model) == expected


def test_grouped_dilated_conv_macs_divide_by_groups_and_use_true_output_size() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=0, dilation=2, groups=4, bias=False)  # 9×9 → 5×5
    assert count_flops(conv, torch.randn(1, 8, 9, 9)) == (8 // 4) * 16 * 9 * 5 * 5


def test_parameter_free_ops_cost_no_macs() -> None:
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Upsample(scale_factor=2))
    assert count_flops(model, torch.randn(1, 4, 8, 8)) == 0


def test_macs_scale_with_the_dummy_batch_size() -> None:
    fc = nn.Linear(6, 4)
    assert count_flops(fc, torch.randn(3, 6)) == 3 * 6 * 4


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight  # tied: one parameter, two uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_shared_parameter_is_counted_once_but_its_macs_twice() -> None:
    model = _Tied()
    assert count_params(model) == 16
    assert count_flops(model, torch.randn(1, 4)) == 2 * 16


def test_frozen_parameters_are_counted() -> None:
    model = nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    assert count_params(model) == 8


@pytest.mark.parametrize("training", [True, False])
def test_count_flops_restores_the_training_flag(training: bool) -> None:
    model = _ConvLinear()
    model.train(training)
    count_flops(model, torch.randn(1, 3, 7, 7))
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_count_flops_keeps_a_frozen_submodule_in_eval_mode_inside_a_training_model() -> None:
    model = _ConvLinear().train()
    model.bn.eval()  # a frozen BN, as in fine-tuning
    count_flops(model, torch.randn(1, 3, 7, 7))
    assert model.training and not model.bn.training


def test_count_flops_runs_in_eval_mode_and_leaves_bn_statistics_alone() -> None:
    model = _ConvLinear().train()
    before = model.bn.running_mean.clone()
    count_flops(model, torch.randn(2, 3, 7, 7))
    assert torch.equal(model.bn.running_mean, before)


def test_count_flops_restores_the_training_flag_when_forward_raises() -> None:
    model = _ConvLinear().train()
    with pytest.raises(RuntimeError):
        count_flops(model, torch.randn(1, 5, 7, 7))  # wrong channel count
    assert model.training


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(3, 2)
        self.fb = nn.Linear(5, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fa(a) + self.fb(b)


@pytest.mark.parametrize(
    "dummy",
    [
        (torch.randn(1, 3), torch.randn(1, 5)),
        [torch.randn(1, 3), torch.randn(1, 5)],
        {"b": torch.randn(1, 5), "a": torch.randn(1, 3)},
    ],
    ids=["tuple", "list", "dict"],
)
def test_count_flops_accepts_tuples_lists_and_keyword_dicts(dummy: object) -> None:
    assert count_flops(_TwoInputs(), dummy) == 3 * 2 + 5 * 2
