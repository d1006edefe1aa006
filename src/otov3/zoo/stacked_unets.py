"""StackedUnets: two U-Nets side by side on one input, outputs added (spec §3.5) for SVHN."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from otov3.zoo.registry import register_supernet

STACKED_UNETS_PARAMS = 802_940
STACKED_UNETS_MACS = 185_177_668


def _conv(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def _up() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="nearest")


class _Unet(nn.Module):
    """What both U-Nets share: the decoder, the output block and the forward with its three skip Adds."""

    def _add_decoder(self, w0: int, w1: int) -> None:
        # parameter-free resize 8×8 → 16×16 after the deepest skip Add
        self.up = _up()
        # conv, conv, bn, relu, resize 16×16 → 32×32: a GeZIG into the outermost skip Add
        self.dec = nn.Sequential(
            OrderedDict(
                conv1=_conv(w1, w1),
                conv2=_conv(w1, w0, bias=False),
                bn=nn.BatchNorm2d(w0),
                relu=nn.ReLU(),
                up=_up(),
            )
        )
        # relu, conv, relu, bn at 32×32: a GeZIG into the Add that merges both U-Nets (vertex 76)
        self.out = nn.Sequential(
            OrderedDict(relu1=nn.ReLU(), conv=_conv(w0, w0), relu2=nn.ReLU(), bn=nn.BatchNorm2d(w0))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.enc0(x)
        x1 = self.enc1(x0)
        x2 = self.enc2(x1)
        y = x2 + self.bottom(x2)  # Add 20 (left) / 57 (right)
        y = x1 + self.up(y)  # Add 25 / 62
        y = x0 + self.dec(y)  # Add 34 / 71
        return self.out(y)


class _LeftUnet(_Unet):
    """The U-Net that down-samples with max-pooling (official trace vertices 0-38)."""

    def __init__(self, c_in: int, w0: int, w1: int, w2: int, w3: int) -> None:
        super().__init__()
        # 0 conv, 1 bn, 2 relu, 3 conv (32×32, feeds 4 and Add 34)
        self.enc0 = nn.Sequential(
            OrderedDict(conv1=_conv(c_in, w0, bias=False), bn=nn.BatchNorm2d(w0), relu=nn.ReLU(), conv2=_conv(w0, w0))
        )
        # 4 maxpool, 5 conv, 6 relu, 7 conv, 8 relu, 9 bn (16×16, feeds 10 and Add 25)
        self.enc1 = nn.Sequential(
            OrderedDict(
                pool=nn.MaxPool2d(2),
                conv1=_conv(w0, w1),
                relu1=nn.ReLU(),
                conv2=_conv(w1, w1),
                relu2=nn.ReLU(),
                bn=nn.BatchNorm2d(w1),
            )
        )
        # 10 maxpool, 11 conv, 12 conv (8×8, feeds 13 and Add 20)
        self.enc2 = nn.Sequential(OrderedDict(pool=nn.MaxPool2d(2), conv1=_conv(w1, w2), conv2=_conv(w2, w1)))
        # 13 maxpool, 14 conv, 15 conv, 19 resize (4×4 → 8×8, GeZIG → Add 20)
        self.bottom = nn.Sequential(
            OrderedDict(pool=nn.MaxPool2d(2), conv1=_conv(w1, w3), conv2=_conv(w3, w1), up=_up())
        )
        # 24 resize, then 26 conv, 27 conv, 28 bn, 29 relu, 33 resize, then 35 relu, 36 conv, 37 relu, 38 bn
        self._add_decoder(w0, w1)


class _RightUnet(_Unet):
    """The U-Net that down-samples with stride-2 convolutions (official trace vertices 39-75)."""

    def __init__(self, c_in: int, w0: int, w1: int, w2: int, w3: int) -> None:
        super().__init__()
        # 39 conv, 40 bn, 41 relu (32×32, feeds 42 and Add 71)
        self.enc0 = nn.Sequential(OrderedDict(conv=_conv(c_in, w0, bias=False), bn=nn.BatchNorm2d(w0), relu=nn.ReLU()))
        # 42 conv, 43 conv, 44 relu (16×16, feeds 45 and Add 62)
        self.enc1 = nn.Sequential(OrderedDict(conv1=_conv(w0, w1, stride=2), conv2=_conv(w1, w1), relu=nn.ReLU()))
        # 45 conv, 46 relu, 47 bn, 48 conv, 49 conv (8×8, feeds 50 and Add 57)
        self.enc2 = nn.Sequential(
            OrderedDict(
                conv1=_conv(w1, w2, stride=2),
                relu=nn.ReLU(),
                bn=nn.BatchNorm2d(w2),
                conv2=_conv(w2, w2),
                conv3=_conv(w2, w1),
            )
        )
        # 50 conv, 51 conv, 52 conv, 56 resize (4×4 → 8×8, GeZIG → Add 57)
        self.bottom = nn.Sequential(
            OrderedDict(conv1=_conv(w1, w3, stride=2), conv2=_conv(w3, w3), conv3=_conv(w3, w1), up=_up())
        )
        # 61 resize, then 63 conv, 64 conv, 65 bn, 66 relu, 70 resize, then 72 relu, 73 conv, 74 relu, 75 bn
        self._add_decoder(w0, w1)


class StackedUnets(nn.Module):
    """The StackedUnets super-network of the official OTOv3 examples, op by op as in spec §3.5.

    Two U-Nets read the same input; their outputs are added (Add 76) and go through global average pooling,
    `Flatten` (the official trace's two squeezes) and a Linear. The left U-Net down-samples with 2×2 max-pooling,
    the right one with stride-2 3×3 convolutions; both up-sample with nearest ×2 `Upsample` ("resize"). Per U-Net,
    with the official vertex numbers (left / right)::

        enc0   0 conv 1 bn 2 relu 3 conv              / 39 conv 40 bn 41 relu            → enc1, Add 34/71
        enc1   4 maxpool 5 conv 6 relu 7 conv 8 relu 9 bn / 42 conv(s2) 43 conv 44 relu  → enc2, Add 25/62
        enc2   10 maxpool 11 conv 12 conv             / 45 conv(s2) 46 relu 47 bn 48 conv 49 conv → bottom, Add 20/57
        bottom 13 maxpool 14 conv 15 conv 19 resize   / 50 conv(s2) 51 conv 52 conv 56 resize → Add 20/57
        up     24 resize                              / 61 resize                        Add 20/57 → Add 25/62
        dec    26 conv 27 conv 28 bn 29 relu 33 resize / 63 conv 64 conv 65 bn 66 relu 70 resize  Add 25/62 → Add 34/71
        out    35 relu 36 conv 37 relu 38 bn          / 72 relu 73 conv 74 relu 75 bn    Add 34/71 → Add 76

    Segment growth (spec §3.1) gives the official 22 segments: 13 with parameters, 7 Add joints, 2 parameter-free
    resize segments (`up`), and 6 GeZIGs (`bottom`, `dec`, `out` of each U-Net). All convs are 3×3, padding 1;
    a conv directly followed by BN has no bias. Channel widths (ours; the paper does not give them) are
    `w0, w1, w2, w3 = 58, 64, 72, 72` at resolutions 32, 16, 8, 4 (the Adds force enc1, enc2 and bottom to end
    with `w1` channels).

    Counts for the default model (10 classes) on a 1×3×32×32 input, by `otov3.metrics`: 802,940 parameters
    and 185,177,668 MACs; the paper's baseline has 0.80 M parameters, 184 M FLOPs (MACs), 95.3 % top-1 on SVHN
    (spec §8).

    Args:
        num_classes: outputs of the final Linear.
        in_channels: input image channels.
        widths: channel widths `(w0, w1, w2, w3)` at full, 1/2, 1/4 and 1/8 resolution.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (58, 64, 72, 72),
    ) -> None:
        super().__init__()
        self.left = _LeftUnet(in_channels, *widths)
        self.right = _RightUnet(in_channels, *widths)
        self.head = nn.Sequential(
            OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), linear=nn.Linear(widths[0], num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.left(x) + self.right(x))  # Add 76


@register_supernet(
    "stacked_unets",
    input_shape=(1, 3, 32, 32),
    num_classes=10,
    params=STACKED_UNETS_PARAMS,
    macs=STACKED_UNETS_MACS,
)
def stacked_unets(**kwargs: Any) -> StackedUnets:
    """Build a `StackedUnets`; keyword arguments go to its constructor."""
    return StackedUnets(**kwargs)
