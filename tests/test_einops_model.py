"""A Phi-style block written with einops (parallel attention and MLP on one LayerNorm): torch.fx cannot trace
einops ("Tensor type unknown to einops"), so `capture="auto"` falls back to torch.export; both sublayers are
GeZIGs, the shared norm stays, and every valid removal is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otov3 import OTO
from subnet_equivalence import assert_subnet_equivalent, count, randomize_, zero_groups_

einops = pytest.importorskip("einops")


class PhiBlock(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln(x)
        q, k, v = einops.rearrange(self.qkv(y), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        mlp = self.fc2(torch.nn.functional.gelu(self.fc1(y)))
        return x + self.out(einops.rearrange(attn, "b h t d -> b t (h d)")) + mlp


class PhiNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.Sequential(PhiBlock(), PhiBlock())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


def test_einops_model_is_captured_by_export_with_both_sublayers_removable():
    model = randomize_(PhiNet())
    x = torch.randn(2, 5, 8)
    oto = OTO(model, x)
    assert oto.capture_backend == "export"
    assert [g.name for g in oto.groups] == ["blocks.0.qkv+blocks.0.out", "blocks.0.fc1+blocks.0.fc2",
                                            "blocks.1.qkv+blocks.1.out", "blocks.1.fc1+blocks.1.fc2"]
    assert "blocks.0.ln" in {g.name for g in oto.complementary}
    for indices in [(0,), (1,), (0, 3), (1, 2), (0, 1, 2)]:
        copy_ = randomize_(PhiNet())
        other = OTO(copy_, x)
        if not other.is_valid_indices(indices):
            continue
        zero_groups_([other.groups[i] for i in indices])
        subnet = other.construct_subnet()
        assert_subnet_equivalent(copy_, subnet, (torch.randn(3, 5, 8),))
        assert count(subnet) < count(copy_)
