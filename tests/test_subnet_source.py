"""Generated source rebuilds every leaf from its stored configuration, and a wrong source never reaches disk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otov3.errors import ConstructionError
from otov3.subnet.leaves import constructor_source
from otov3.subnet.slicing import slice_input_channels
from otov3.subnet.source import check_source, generate_source

LEAVES = [
    (nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), (2, 3, 6, 6)),
    (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, divisor_override=4), (2, 3, 7, 7)),
    (nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), (2, 3, 7, 7)),
    (nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False, padding_mode="reflect"), (2, 3, 6, 6)),
    (nn.Conv2d(4, 4, 5, padding="same", groups=4), (2, 4, 6, 6)),
    (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 4)),
    (nn.BatchNorm2d(3, eps=1e-3, momentum=None, affine=False), (2, 3, 4, 4)),
    (nn.GroupNorm(1, 3, affine=False), (2, 3, 4, 4)),
    (nn.LayerNorm(4, bias=False), (2, 3, 4)),
    (nn.Linear(4, 2, bias=False), (2, 4)),
    (nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True), (2, 3, 4, 4)),
    (nn.LeakyReLU(0.2), (2, 5)),
    (nn.GELU(approximate="tanh"), (2, 5)),
    (nn.Softmax(dim=0), (2, 5)),
    (nn.Flatten(2), (2, 3, 4, 4)),
    (nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 6)),
]


@pytest.mark.parametrize(("module", "shape"), LEAVES, ids=[repr(m) for m, _ in LEAVES])
def test_every_leaf_is_rebuilt_with_its_configuration(module, shape):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    text = constructor_source("leaf", module)
    rebuilt = eval(text, {"nn": nn, "torch": torch})
    rebuilt.load_state_dict(module.state_dict())
    module.eval()
    rebuilt.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x)), text


def test_repr_would_lose_count_include_pad_but_the_constructor_keeps_it():
    pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    assert "count_include_pad" not in repr(pool)  # why the generator does not use repr
    assert "count_include_pad=False" in constructor_source("pool", pool)


def test_a_sliced_module_is_rebuilt_with_its_new_width():
    conv = nn.Conv2d(6, 4, 3)
    slice_input_channels(conv, [0, 2, 5])
    text = constructor_source("conv", conv)
    assert "in_channels=3" in text
    eval(text, {"nn": nn, "torch": torch}).load_state_dict(conv.state_dict())


def test_modules_that_cannot_be_rebuilt_are_named():
    class Custom(nn.Identity):
        pass

    with pytest.raises(ConstructionError, match="'block.custom'.*not a torch.nn layer"):
        constructor_source("block.custom", Custom())
    linear = nn.Linear(2, 3)
    del linear.in_features
    with pytest.raises(ConstructionError, match="'head'.*does not store its argument 'in_features'"):
        constructor_source("head", linear)


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def test_check_source_rejects_a_source_that_computes_something_else():
    gm = torch.fx.symbolic_trace(Pools())
    args = (torch.randn(1, 2, 5, 5),)
    source = generate_source(gm)
    check_source(source, gm, args, {})  # the real one passes
    wrong = source.replace("count_include_pad=False", "count_include_pad=True")
    assert wrong != source
    with pytest.raises(ConstructionError, match="rebuilds a different network"):
        check_source(wrong, gm, args, {})
    with pytest.raises(ConstructionError, match="does not rebuild"):
        check_source(source.replace("self.add_module('conv'", "self.add_module('konv'"), gm, args, {})
