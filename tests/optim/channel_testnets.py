"""A small CNN with hand-made pruning-mode channel groups, for the HESSO/DHSPG/engine tests (not a test module).

Until the pruning-mode search space lands, `channel_groups` builds what it will hand the optimizers: one `Group`
of kind CHANNEL per output channel of each conv/linear node group, holding row ``j`` of every stem weight and bias
writing that channel (dim 1 for the ConvTranspose weight) and entry ``j`` of the BatchNorm parameters after it.
"""

from __future__ import annotations

import torch
from torch import nn

from otov3.space import Group, GroupKind, ParamSlice


class ChannelNet(nn.Module):
    """conv1+bn1 → (conv2+bn2) + (conv3+bn3) (a residual Add ties them) → ConvTranspose → pool → fc1 → head."""

    def __init__(self, c: int = 8, up: int = 6, hidden: int = 12, classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.up = nn.ConvTranspose2d(c, up, 2, stride=2)
        self.fc1 = nn.Linear(up, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(z)) + self.bn3(self.conv3(z)))
        z = torch.relu(self.up(z)).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc1(z)))


def channel_groups(net: ChannelNet) -> list[Group]:
    """One CHANNEL group per output channel of conv1, of the tied conv2/conv3, of the ConvTranspose and of fc1."""
    named = dict(net.named_parameters())

    def rows(name: str, j: int, dim: int = 0) -> ParamSlice:
        return ParamSlice(name, named[name], slice(j, j + 1), dim)

    layers = [
        ("conv1", ["conv1.weight", "bn1.weight", "bn1.bias"], {}),
        ("conv2+conv3", ["conv2.weight", "bn2.weight", "bn2.bias", "conv3.weight", "bn3.weight", "bn3.bias"], {}),
        ("up", ["up.weight", "up.bias"], {"up.weight": 1}),
        ("fc1", ["fc1.weight", "fc1.bias"], {}),
    ]
    out = []
    for segment, (name, params, dims) in enumerate(layers):
        n = named[params[0]].shape[dims.get(params[0], 0)]
        for j in range(n):
            out.append(Group(f"{name}[{j}]", GroupKind.CHANNEL, tuple(rows(p, j, dims.get(p, 0)) for p in params),
                             (name,), segment))
    return out


def make_channel_net(seed: int = 0) -> ChannelNet:
    torch.manual_seed(seed)
    return ChannelNet()


def image_data(n: int = 256, classes: int = 4, seed: int = 0):
    """Random 8×8 images and the labels a fixed random teacher gives them (a learnable task)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    w = torch.randn(3 * 8 * 8, classes, generator=torch.Generator().manual_seed(99))
    return x, (x.flatten(1) @ w).argmax(dim=1)


def train_images(net: nn.Module, opt: torch.optim.Optimizer, steps: int, *, start: int = 0, scheduler=None,
                 data=None) -> list[float]:
    """Deterministic mini-batch training (batch ``t`` depends only on the step index); returns the losses."""
    x, y = data if data is not None else image_data()
    losses = []
    net.train()
    for t in range(start, start + steps):
        i = (t * 32) % x.shape[0]
        loss = nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses
