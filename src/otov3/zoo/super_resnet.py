"""SuperResNet: a ZenNAS-style ResNet super-network with parallel 3×3/5×5/7×7 candidates (spec §8)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from otov3.zoo.registry import register_supernet

SUPER_RESNET_PARAMS = 3_549_538
SUPER_RESNET_MACS = 539_763_648

_KERNELS = (3, 5, 7)


def _candidate(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    pad = kernel // 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False),
            bn1=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(c_out, c_out, kernel, padding=pad, bias=False),
            bn2=nn.BatchNorm2d(c_out),
        )
    )


class SuperResBlock(nn.Module):
    """One super-residual block: ``relu(shortcut(x) + k3(x) + k5(x) + k7(x))``.

    Each candidate `k{K}` is Conv K×K (stride `stride`) - BN - ReLU - Conv K×K - BN; it ends at the block's Add,
    so it is a GeZIG. The shortcut is `nn.Identity` when the shape is unchanged, else Conv 1×1 (stride
    `stride`) - BN. Erasing every candidate of an identity block leaves ``relu(x)`` on an already rectified
    input, so the search also chooses the depth (spec §8). The ReLU after the sum starts the next segment.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the first conv of every candidate and of the projection shortcut.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__()
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(c_out),
                )
            )
        self.k3 = _candidate(c_in, c_out, 3, stride)
        self.k5 = _candidate(c_in, c_out, 5, stride)
        self.k7 = _candidate(c_in, c_out, 7, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.k3(x) + self.k5(x) + self.k7(x))


class SuperResNet(nn.Module):
    """A ZenNAS-style ResNet super-network for CIFAR-10 (spec §8, the paper's Figure 7a space).

    ::

        IN → stem[Conv3×3 BN ReLU] → stages[i].blocks[j]: SuperResBlock → head[AdaptiveAvgPool Flatten Linear]

    Stage `i` has `depths[i]` blocks of `widths[i]` channels; its first block has stride `strides[i]` (and a
    projection shortcut when the shape changes). Default: stem 24 channels, widths (24, 48, 96), depths
    (2, 2, 2), strides (1, 2, 2) — feature maps 32×32, 16×16, 8×8. Our choice: the paper gives no super-network
    size, only the sub-network targets (1 M and 2 M parameters).

    Counts for the default model (10 classes) on a 1×3×32×32 input, by `otov3.metrics`: 3,549,538 parameters
    and 539,763,648 MACs. The paper reports no baseline row for this super-network, only the searched 1 M
    (96.3 % top-1) and 2 M (97.5 %) sub-networks.

    Args:
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        stem_width: channels of the stem conv.
        widths: channels per stage.
        depths: blocks per stage.
        strides: stride of each stage's first block.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_width: int = 24,
        widths: tuple[int, ...] = (24, 48, 96),
        depths: tuple[int, ...] = (2, 2, 2),
        strides: tuple[int, ...] = (1, 2, 2),
    ) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(strides):
            raise ValueError(
                f"widths, depths and strides need one entry per stage; got {len(widths)}, {len(depths)}, {len(strides)}"
            )
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(stem_width),
                relu=nn.ReLU(),
            )
        )
        stages = []
        c_in = stem_width
        for width, depth, stride in zip(widths, depths, strides, strict=True):
            blocks = []
            for j in range(depth):
                blocks.append(SuperResBlock(c_in, width, stride=stride if j == 0 else 1))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), linear=nn.Linear(c_in, num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_supernet(
    "super_resnet",
    input_shape=(1, 3, 32, 32),
    num_classes=10,
    params=SUPER_RESNET_PARAMS,
    macs=SUPER_RESNET_MACS,
)
def super_resnet(**kwargs: Any) -> SuperResNet:
    """Build a `SuperResNet`; keyword arguments go to its constructor."""
    return SuperResNet(**kwargs)
