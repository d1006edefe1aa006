"""DemoSupNet: the paper's Figure 1a super-network (spec §3.4) for Fashion-MNIST."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from otov3.zoo.registry import register_supernet

DEMO_SUPNET_PARAMS = 819_692
DEMO_SUPNET_MACS = 209_060_386


def _conv_bn_relu(index: int, c_in: int, c_out: int, *, stride: int = 1) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{index}", nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)),
        (f"bn{index}", nn.BatchNorm2d(c_out)),
        (f"relu{index}", nn.ReLU()),
    ]


class DemoSupNet(nn.Module):
    """The DemoSupNet of the paper's Figure 1a, with the topology reconstructed in spec §3.4.

    ::

        IN → stem[Conv1 BN1 ReLU] ─┬→ branch2[Conv2 BN2 ReLU] ─────────────────────────────┐
                                   ├→ branch3[MaxPool Conv3 BN3 ReLU] ─────────────────────┼→ cat
                                   └→ branch4[AvgPool Conv4 BN4 ReLU Conv5 BN5 ReLU] ──────┘   │
        cat → fuse[Conv6 BN6 ReLU] ─┬→ branch7[Conv7 BN7 ReLU] ─┐
                                    └→ branch8[Conv8 BN8 ReLU] ─┴→ + → head[AdaptiveAvgPool Flatten Linear]

    Every conv is 3×3 with padding 1 and no bias (a BN follows); the pools in branch3/branch4 are 3×3, stride 1,
    padding 1, so the three branches concatenate. Conv6 has stride 2: the stem and branches run at 28×28 with
    `48·width` channels, fuse/branch7/branch8 at 14×14 with `169·width` channels. The widths are ours (the paper
    does not give them, spec §9.2); they were chosen so that the counts land on the paper's baseline row.

    The five GeZIGs (spec §3.4) are branch2, branch3, branch4 (→ cat) and branch7, branch8 (→ +).

    Counts for the default model (width 1, 10 classes) on a 1×1×28×28 input, by `otov3.metrics`:
    819,692 parameters and 209,060,386 MACs; the paper's Table 1 baseline has 0.82 M parameters and 209 M FLOPs
    (MACs), 84.9 % top-1 on Fashion-MNIST (spec §8).

    Args:
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        width: multiplier on both base widths (48 and 169), rounded to whole channels.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        narrow = max(1, round(48 * width))  # the 28×28 part
        wide = max(1, round(169 * width))  # the 14×14 part
        self.stem = nn.Sequential(OrderedDict(_conv_bn_relu(1, in_channels, narrow)))
        self.branch2 = nn.Sequential(OrderedDict(_conv_bn_relu(2, narrow, narrow)))
        self.branch3 = nn.Sequential(
            OrderedDict([("maxpool", nn.MaxPool2d(3, stride=1, padding=1)), *_conv_bn_relu(3, narrow, narrow)])
        )
        self.branch4 = nn.Sequential(
            OrderedDict(
                [
                    ("avgpool", nn.AvgPool2d(3, stride=1, padding=1)),
                    *_conv_bn_relu(4, narrow, narrow),
                    *_conv_bn_relu(5, narrow, narrow),
                ]
            )
        )
        self.fuse = nn.Sequential(OrderedDict(_conv_bn_relu(6, 3 * narrow, wide, stride=2)))
        self.branch7 = nn.Sequential(OrderedDict(_conv_bn_relu(7, wide, wide)))
        self.branch8 = nn.Sequential(OrderedDict(_conv_bn_relu(8, wide, wide)))
        self.head = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                linear=nn.Linear(wide, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)
        x = self.fuse(x)
        x = self.branch7(x) + self.branch8(x)
        return self.head(x)


@register_supernet(
    "demo_supnet",
    input_shape=(1, 1, 28, 28),
    num_classes=10,
    params=DEMO_SUPNET_PARAMS,
    macs=DEMO_SUPNET_MACS,
)
def demo_supnet(**kwargs: Any) -> DemoSupNet:
    """Build a `DemoSupNet`; keyword arguments go to its constructor."""
    return DemoSupNet(**kwargs)
