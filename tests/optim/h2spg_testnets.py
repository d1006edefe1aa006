"""Small multi-branch networks with hand-built GeZIGs for the H2SPG tests (not a test module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otov3.space import Group, GroupKind, ParamSlice


class BranchNet(nn.Module):
    """stem → 3 parallel branches → Concat → mix → (pair rows 0:h ‖ b8(pair rows h:2h)) → Add → head.

    GeZIGs: 0..2 the Concat branches (Linear + BatchNorm), 3 the rows 0:h of ``pair`` (a dim-0 slice: the
    rows h:2h are complementary), 4 the branch ``b8``. Removing all of 0..2, or both 3 and 4, is invalid.
    """

    def __init__(self, d_in: int = 12, h: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.h = h
        self.stem = nn.Linear(d_in, h)
        self.branches = nn.ModuleList(
            # no bias before BN: its gradient is rounding noise, which Adam would amplify into real steps
            nn.Sequential(nn.Linear(h, h, bias=False), nn.BatchNorm1d(h), nn.ReLU()) for _ in range(3)
        )
        self.mix = nn.Linear(3 * h, h)
        self.pair = nn.Linear(h, 2 * h)
        self.b8 = nn.Linear(h, h)
        self.head = nn.Linear(h, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.stem(x))
        z = torch.relu(self.mix(torch.cat([b(z) for b in self.branches], dim=1)))
        p, q = self.pair(z).chunk(2, dim=1)
        z = torch.relu(p) + self.b8(torch.relu(q))
        return self.head(torch.relu(z))


def gezigs_of(net: BranchNet) -> list[Group]:
    def group(name: str, slices: list[ParamSlice], macs: int, segment: int) -> Group:
        return Group(name, GroupKind.GEZIG, tuple(slices), (name,), segment, macs=macs)

    out = []
    for i, b in enumerate(net.branches):
        lin, bn = b[0], b[1]
        out.append(group(
            f"branches.{i}",
            [ParamSlice(f"branches.{i}.0.weight", lin.weight), ParamSlice(f"branches.{i}.1.weight", bn.weight),
             ParamSlice(f"branches.{i}.1.bias", bn.bias)],
            macs=lin.weight.numel(), segment=i))
    rows = slice(0, net.h)
    out.append(group("pair[:h]", [ParamSlice("pair.weight", net.pair.weight, rows),
                                  ParamSlice("pair.bias", net.pair.bias, rows)], macs=net.h * net.h, segment=3))
    out.append(group("b8", [ParamSlice("b8.weight", net.b8.weight), ParamSlice("b8.bias", net.b8.bias)],
                     macs=net.h * net.h, segment=4))
    return out


def is_valid(removed: frozenset[int]) -> bool:
    """Strict validity of the BranchNet: each joint keeps at least one input."""
    return not ({0, 1, 2} <= removed or {3, 4} <= removed)


def teacher_data(n: int = 512, d_in: int = 12, classes: int = 4, seed: int = 0):
    """Inputs (drawn with ``seed``) and labels of one fixed random teacher MLP (a learnable task)."""
    teacher = torch.Generator().manual_seed(1234)
    w1 = torch.randn(d_in, 32, generator=teacher)
    w2 = torch.randn(32, classes, generator=teacher)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed))
    y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
    return x, y


def make_net(seed: int = 0) -> BranchNet:
    torch.manual_seed(seed)
    return BranchNet()


def batch(step: int, x: torch.Tensor, y: torch.Tensor, size: int = 64):
    i = (step * size) % x.shape[0]
    return x[i:i + size], y[i:i + size]


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, *, start: int = 0, scheduler=None,
          data=None) -> list[float]:
    """Deterministic mini-batch training (batch ``t`` depends only on the step index); returns the losses."""
    x, y = data if data is not None else teacher_data()
    losses = []
    net.train()
    for t in range(start, start + steps):
        xb, yb = batch(t, x, y)
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def accuracy(net: nn.Module, seed: int = 1) -> float:
    x, y = teacher_data(seed=seed)
    net.eval()
    with torch.no_grad():
        return (net(x).argmax(dim=1) == y).float().mean().item()


PATHS = ["foreach", "chunked", "native"]


def use_paths(monkeypatch, paths: str) -> None:
    """Forces the engine's code paths on these tiny networks: the eager cache-blocked passes (tiny chunks that
    split rows), the fused C kernels (`otov3.optim._native`) over every parameter, or foreach ops."""
    import otov3.optim._layout as layout
    import otov3.optim._native as native
    import otov3.optim._reduce as reduce

    if paths in ("chunked", "native"):
        monkeypatch.setattr(reduce, "FUSE_MIN", 1)
        monkeypatch.setattr(layout, "CHUNK", 96)
    else:
        monkeypatch.setattr(reduce, "FUSE_MIN", 1 << 40)
    if paths == "native" and not native.available():  # test_native.py fails where a compiler exists
        pytest.skip(f"fused kernels unavailable: {native.status()}")
    else:
        monkeypatch.setattr(native, "available", lambda: False)
