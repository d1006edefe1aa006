"""Tiny networks and helpers for the "never silent" tests (not a test module)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

X = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))


class Tiny(nn.Module):
    """stem → three parallel Linear branches added → head. GeZIGs: a, b, c (any two removable)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.stem(x))
        z = torch.relu(self.a(z)) + torch.relu(self.b(z)) + torch.relu(self.c(z))
        return self.head(z)


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def backward(model: nn.Module, step: int) -> None:
    x, y = batch(step)
    F.cross_entropy(model(x), y).backward()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        opt.zero_grad()
        backward(model, t)
        opt.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical, NaN included."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].view(-1).nan_to_num(0.5, 1.5, -1.5), b[k].view(-1).nan_to_num(0.5, 1.5, -1.5))
        and torch.equal(a[k].isnan(), b[k].isnan())
        for k in a
    )


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(opt.state_dict())


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Staging folders an export left behind."""
    return [p.name for p in parent.rglob("*otov3-partial-*")] + [p.name for p in parent.rglob("*otov3-previous-*")]


# --- models for the artefact tests: tensors read directly, MultiheadAttention, dict inputs -------------------


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.ls = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls(torch.relu(self.fc(x)))


class TokenNet(nn.Module):
    """A ViT-like toy: class token, positional embedding, LayerScale blocks under nested paths, two branches."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Module()
        self.pos.table = nn.Parameter(torch.randn(1, 5, dim))
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.p, self.q = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1) + self.pos.table
        for block in self.blocks:
            z = block(z)
        z = torch.relu(self.p(z)) + torch.relu(self.q(z))
        return self.head(z[:, 0])


class AttnNet(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.p, self.q = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        z = z + self.attn(z, z, z, need_weights=False)[0]
        z = torch.relu(self.p(z)) + torch.relu(self.q(z))
        return self.head(z)


class DictNet(nn.Module):
    """Keyword inputs, nested outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.p, self.q = nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.relu(self.stem(x)) * scale
        z = torch.relu(self.p(z)) + torch.relu(self.q(z))
        return {"logits": self.head(z), "features": z}


TOKENS = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
