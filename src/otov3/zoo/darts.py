"""DartsSuperNet: the DARTS search network without architecture weights, as OTOv3 searches it (spec §8)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from otov3.zoo.registry import register_supernet

DARTS8_PARAMS = 4_083_058
DARTS8_MACS = 600_002_304
DARTS14_PARAMS = 25_532_896
DARTS14_MACS = 232_135_680
DARTS14_MACS_224 = 2_835_022_080

_STEPS = 4  # intermediate nodes per cell


def _relu_conv_bn(c_in: int, c_out: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            relu=nn.ReLU(),
            conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
            bn=nn.BatchNorm2d(c_out),
        )
    )


def _sep_conv(c: int, kernel: int, stride: int) -> nn.Sequential:
    pad = kernel // 2
    return nn.Sequential(
        OrderedDict(
            relu1=nn.ReLU(),
            dw1=nn.Conv2d(c, c, kernel, stride=stride, padding=pad, groups=c, bias=False),
            pw1=nn.Conv2d(c, c, 1, bias=False),
            bn1=nn.BatchNorm2d(c),
            relu2=nn.ReLU(),
            dw2=nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
            pw2=nn.Conv2d(c, c, 1, bias=False),
            bn2=nn.BatchNorm2d(c),
        )
    )


def _dil_conv(c: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            relu=nn.ReLU(),
            dw=nn.Conv2d(c, c, kernel, stride=stride, padding=kernel - 1, dilation=2, groups=c, bias=False),
            pw=nn.Conv2d(c, c, 1, bias=False),
            bn=nn.BatchNorm2d(c),
        )
    )


class MixedEdge(nn.Module):
    """One DARTS edge: the plain sum of its seven non-zero candidates (no architecture weights).

    Candidates: `max_pool_3x3`, `avg_pool_3x3` (no BN after the pools, so they stay parameter-free and out of
    the search space), `skip_connect` (`nn.Identity`, or ReLU-Conv1×1(stride 2)-BN on a stride-2 edge instead of
    DARTS' FactorizedReduce, which slices), `sep_conv_3x3`, `sep_conv_5x5`, `dil_conv_3x3`, `dil_conv_5x5`.
    DARTS' `none` is the zero tensor and is left out. Every parametric candidate ends at the edge's Add, so each
    is a GeZIG.

    Args:
        channels: channels in and out.
        stride: 2 on the edges that leave a reduction cell's inputs, else 1.
    """

    def __init__(self, channels: int, *, stride: int) -> None:
        super().__init__()
        c = channels
        self.max_pool_3x3 = nn.MaxPool2d(3, stride=stride, padding=1)
        self.avg_pool_3x3 = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.skip_connect = nn.Identity() if stride == 1 else _relu_conv_bn(c, c, stride=stride)
        self.sep_conv_3x3 = _sep_conv(c, 3, stride)
        self.sep_conv_5x5 = _sep_conv(c, 5, stride)
        self.dil_conv_3x3 = _dil_conv(c, 3, stride)
        self.dil_conv_5x5 = _dil_conv(c, 5, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.max_pool_3x3(x)
            + self.avg_pool_3x3(x)
            + self.skip_connect(x)
            + self.sep_conv_3x3(x)
            + self.sep_conv_5x5(x)
            + self.dil_conv_3x3(x)
            + self.dil_conv_5x5(x)
        )


class SearchCell(nn.Module):
    """A DARTS search cell: 2 preprocessed inputs, 4 intermediate nodes, 14 edges, output = cat of the 4 nodes.

    Edge `edges["{j}_to_{i}"]` carries state `j` (0, 1: the preprocessed inputs; 2..5: intermediate nodes) to
    node `i`; node `i` is the sum of its incoming edges.

    Args:
        c_prev_prev: channels of the input from two cells back.
        c_prev: channels of the input from the previous cell.
        channels: channels of every node.
        reduction: halve the resolution (stride 2 on the edges that leave the inputs).
        reduction_prev: the previous cell halved the resolution, so input 0 is twice as large; it is
            preprocessed with stride 2 (ReLU-Conv1×1(stride 2)-BN instead of FactorizedReduce).
    """

    def __init__(self, c_prev_prev: int, c_prev: int, channels: int, *, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.pre0 = _relu_conv_bn(c_prev_prev, channels, stride=2 if reduction_prev else 1)
        self.pre1 = _relu_conv_bn(c_prev, channels)
        self.edges = nn.ModuleDict()
        for i in range(2, 2 + _STEPS):
            for j in range(i):
                stride = 2 if reduction and j < 2 else 1
                self.edges[f"{j}_to_{i}"] = MixedEdge(channels, stride=stride)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(2, 2 + _STEPS):  # static loops: fx unrolls them into explicit binary adds
            node = self.edges[f"0_to_{i}"](states[0])
            for j in range(1, i):
                node = node + self.edges[f"{j}_to_{i}"](states[j])
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DartsSuperNet(nn.Module):
    """The DARTS search network (Liu et al., 2019) as the OTOv3 super-network (spec §8).

    ::

        IN → stem → cells[0..cells-1]: SearchCell(s0, s1) → head[AdaptiveAvgPool Flatten Linear]

    Reduction cells sit at `cells // 3` and `2 * cells // 3` and double the channels. With `stem="cifar"` the
    stem is Conv3×3(3C)-BN and both cell inputs start as its output; with `stem="imagenet"` it is DARTS'
    ImageNet stem (stem0: Conv3×3/2(C/2)-BN-ReLU-Conv3×3/2(C)-BN, stem1: ReLU-Conv3×3/2(C)-BN, total
    stride 8, so the first cell sees a reduction before it). Differences from the DARTS code, all needed for an
    exact search space: no architecture weights (each edge is the plain sum of its candidates), no `none` op,
    every BN affine, no BN after the pools, and stride-2 ReLU-Conv1×1-BN where DARTS uses FactorizedReduce.

    Counts by `otov3.metrics` (one sample):

    - 8 cells, C=24, 10 classes, 1×3×32×32 input ("darts8"): 4,083,058 parameters and 600,002,304 MACs.
      The paper's DARTS-8 baseline (STL-10) has 4.05 M parameters and 614 M FLOPs (MACs), 74.6 % top-1;
      spec §8 brackets 4.05 M with 4.00 M (non-affine BN) / 4.08 M (affine) for C=24.
    - 14 cells, C=48, ImageNet stem, 1000 classes ("darts14"): 25,532,896 parameters; 2,835,022,080 MACs on a
      1×3×224×224 input (about 0.5 s for one eval forward pass on one CPU thread, 3 s forward + backward,
      0.8 GB). To keep CPU runs light the registry's default dummy input is 1×3×64×64 (232,135,680 MACs;
      every feature map is then 1/12.25 of the 224×224 one). The paper gives no baseline row for this
      super-network, only the searched sub-network (547 M MACs, 4.8 M parameters, 75.3 % top-1).

    Args:
        cells: number of cells (8 and 14 in the paper).
        channels: `C`, the node width of the first cells.
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        stem: "cifar" or "imagenet".
    """

    def __init__(
        self,
        *,
        cells: int = 8,
        channels: int = 24,
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        c = channels
        if stem == "cifar":
            self.stem = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(in_channels, 3 * c, 3, padding=1, bias=False), bn=nn.BatchNorm2d(3 * c))
            )
            c_prev_prev, c_prev, reduction_prev = 3 * c, 3 * c, False
        elif stem == "imagenet":
            self.stem0 = nn.Sequential(
                OrderedDict(
                    conv1=nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
                    bn1=nn.BatchNorm2d(c // 2),
                    relu=nn.ReLU(),
                    conv2=nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
                    bn2=nn.BatchNorm2d(c),
                )
            )
            self.stem1 = nn.Sequential(
                OrderedDict(
                    relu=nn.ReLU(),
                    conv=nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                    bn=nn.BatchNorm2d(c),
                )
            )
            c_prev_prev, c_prev, reduction_prev = c, c, True
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self._imagenet_stem = stem == "imagenet"
        self.cells = nn.ModuleList()
        c_curr = c
        for k in range(cells):
            reduction = k in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(
                SearchCell(c_prev_prev, c_prev, c_curr, reduction=reduction, reduction_prev=reduction_prev)
            )
            c_prev_prev, c_prev, reduction_prev = c_prev, _STEPS * c_curr, reduction
        self.head = nn.Sequential(
            OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), linear=nn.Linear(c_prev, num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._imagenet_stem:  # fixed at construction: fx traces one branch
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


@register_supernet(
    "darts8",
    input_shape=(1, 3, 32, 32),
    num_classes=10,
    params=DARTS8_PARAMS,
    macs=DARTS8_MACS,
)
def darts8(**kwargs: Any) -> DartsSuperNet:
    """Build the 8-cell, C=24 DARTS super-network (CIFAR stem); keyword arguments override these."""
    return DartsSuperNet(**{"cells": 8, "channels": 24, "num_classes": 10, "stem": "cifar", **kwargs})


@register_supernet(
    "darts14",
    input_shape=(1, 3, 64, 64),
    num_classes=1000,
    params=DARTS14_PARAMS,
    macs=DARTS14_MACS,
)
def darts14(**kwargs: Any) -> DartsSuperNet:
    """Build the 14-cell, C=48 DARTS super-network (ImageNet stem); keyword arguments override these."""
    return DartsSuperNet(**{"cells": 14, "channels": 48, "num_classes": 1000, "stem": "imagenet", **kwargs})
