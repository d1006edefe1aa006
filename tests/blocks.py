"""Small replicas of today's building blocks (torchvision/timm/transformers patterns, no dependency on them).

Each replica is a complete little network (stem, the pattern repeated, a head) so that its GeZIGs can be counted
and every valid zero set checked for an exact sub-network. Functions that torchvision wraps for torch.fx are
replicated under the same qualified name (`__module__` + `__qualname__`), which is how otov3 keys them.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

# --- functions keyed by qualified name, as torchvision defines and fx-wraps them ----------------------------


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: drop whole samples ("row") with probability p in training."""
    if not training or p == 0.0:
        return input
    shape = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)
    return input * noise.div_(1.0 - p)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


def shifted_window_attention(
    input: torch.Tensor,
    qkv_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    relative_position_bias: torch.Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """A simplified Swin window attention (one window covering the map) with torchvision's signature."""
    n, h, w, c = input.shape
    tokens = input.reshape(n, h * w, c)
    qkv = F.linear(tokens, qkv_weight, qkv_bias).reshape(n, h * w, 3, num_heads, c // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1)) * (c // num_heads) ** -0.5 + relative_position_bias
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, h * w, c)
    return F.linear(out, proj_weight, proj_bias).reshape(n, h, w, c)


shifted_window_attention.__module__ = "torchvision.models.swin_transformer"
torch.fx.wrap("shifted_window_attention")


# --- the replicas -------------------------------------------------------------------------------------------


def _stem(c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Head(nn.Module):
    def __init__(self, c: int, classes: int = 5) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: a subclass calling F.layer_norm (fx traces through it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7 - LN - Linear - GELU - Linear, LayerScale `gamma * f(x)`, stochastic depth, residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 7, padding=3, groups=c), LayerNorm2d(c), nn.Conv2d(c, 4 * c, 1), nn.GELU(),
            nn.Conv2d(4 * c, c, 1),
        )
        self.layer_scale = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        return stochastic_depth(result, 0.1, "row", self.training) + x


class ConvNeXtNet(nn.Module):
    """Stem, LayerNorm2d, 3 ConvNeXt blocks, head: 3 GeZIGs (one per block)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.norm = LayerNorm2d(c)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(c) for _ in range(3)))
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.norm(self.stem(x))))


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """timm's drop_path, traced through by fx (not wrapped): a product with a random mask in training."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


class SEResidualBlock(nn.Module):
    """`x + se(relu(bn(conv(x))))`, the branch ending in a squeeze-and-excitation gate; DropPath before the add."""

    def __init__(self, c: int, drop: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Conv2d(c, max(c // 4, 1), 1)
        self.fc2 = nn.Conv2d(max(c // 4, 1), c, 1)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return x + drop_path(y * gate, self.drop, self.training)


class SENet(nn.Module):
    """Stem and 3 SE residual blocks: 3 GeZIGs (conv, bn and the SE gate of each block)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = _stem(c)
        self.blocks = nn.Sequential(*(SEResidualBlock(c) for _ in range(3)))
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class SplitGLUNet(nn.Module):
    """Split halves with their own branches then cat (2 GeZIGs), a GLU branch `x + v * sigmoid(g)` (1 GeZIG) and a
    gated MLP `x + down(silu(gate(x)) * up(x))` (1 GeZIG): 4 GeZIGs."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = _stem(c)
        half = c // 2
        self.left = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.mix = nn.Conv2d(c, c, 1)
        self.glu = nn.Conv2d(c, 2 * c, 1)
        self.gate = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.up = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.down = nn.Conv2d(2 * c, c, 1, bias=False)
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = x.split(x.shape[1] // 2, dim=1)
        x = self.mix(torch.cat([self.left(a), self.right(b)], dim=1))
        g, v = self.glu(x).chunk(2, 1)
        x = x + v * torch.sigmoid(g)
        x = x + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(x)


class ViTNet(nn.Module):
    """Patch embedding, class token and positional embedding, pre-LN blocks with nn.MultiheadAttention and an MLP:
    2 GeZIGs per block."""

    def __init__(self, c: int = 16, depth: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, c) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, c) * 0.1)  # 16 patches of a 16x16 input and the class token
        self.ln1 = nn.ModuleList(nn.LayerNorm(c) for _ in range(depth))
        self.attn = nn.ModuleList(nn.MultiheadAttention(c, heads, batch_first=True) for _ in range(depth))
        self.ln2 = nn.ModuleList(nn.LayerNorm(c) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
                                 for _ in range(depth))
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for ln1, attn, ln2, mlp in zip(self.ln1, self.attn, self.ln2, self.mlp, strict=True):
            h = ln1(t)
            t = t + attn(h, h, h, need_weights=False)[0]
            t = t + mlp(ln2(t))
        return self.fc(self.norm(t)[:, 0])


class SwinBlock(nn.Module):
    """Swin-style: channels-last LN, fx-wrapped window attention with its own parameters, MLP, residuals."""

    def __init__(self, c: int, heads: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.table = nn.Parameter(torch.randn(heads, tokens, tokens) * 0.1)
        self.heads = heads
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.table.unsqueeze(0)
        x = x + shifted_window_attention(self.norm1(x), self.qkv.weight, self.proj.weight, bias, [2, 2], self.heads,
                                         [0, 0], qkv_bias=self.qkv.bias, proj_bias=self.proj.bias)
        return x + self.mlp(self.norm2(x))


class SwinNet(nn.Module):
    """Patch embedding to channels-last, 2 Swin blocks (2 GeZIGs each), head."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, stride=4)
        self.blocks = nn.Sequential(SwinBlock(c), SwinBlock(c))
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch(x).permute(0, 2, 3, 1))
        return self.fc(x.mean((1, 2)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit: `x1, x2 = x.chunk(2, 1)`, cat(x1, branch(x2)), channel shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNet(nn.Module):
    """Stem and 3 shuffle units: 3 GeZIGs (each unit's branch)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = _stem(c)
        self.units = nn.Sequential(*(ShuffleUnit(c) for _ in range(3)))
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(self.norm1(x))))))


class DenseNet(nn.Module):
    """torchvision's dense block: every layer reads the concat of all earlier outputs. 4 layers: 4 GeZIGs."""

    def __init__(self, c: int = 6, growth: int = 4, layers: int = 4) -> None:
        super().__init__()
        self.stem = _stem(c)
        self.layers = nn.ModuleList(DenseLayer(c + i * growth, growth) for i in range(layers))
        self.norm = nn.BatchNorm2d(c + layers * growth)
        self.head = _Head(c + layers * growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return self.head(torch.relu(self.norm(torch.cat(features, 1))))


class RecurrentNet(nn.Module):
    """A conv encoder, then an LSTM or GRU over the rows, then a residual MLP on its output: 2 GeZIGs (the two
    residual branches around it), the recurrent module kept."""

    def __init__(self, kind: type[nn.RNNBase], c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.pre = nn.Sequential(nn.Linear(c * 16, c * 16), nn.ReLU())
        self.rnn = kind(c * 16, 12, batch_first=True)
        self.post = nn.Sequential(nn.Linear(12, 12), nn.ReLU())
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        t = t + self.pre(t)
        out, _ = self.rnn(t)
        out = out + self.post(out)
        return self.fc(out[:, -1])


class SharedActivationNet(nn.Module):
    """One nn.LeakyReLU instance called in five branches and after two concats of different widths: 7 GeZIGs."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem = _stem(c)
        self.act = nn.LeakyReLU(0.1)
        self.a = nn.Sequential(nn.Conv2d(c, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(c, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2))
        self.c = nn.Sequential(nn.Conv2d(c, 3, 1, bias=False), nn.BatchNorm2d(3))
        self.bn = nn.BatchNorm2d(9)
        self.fuse = nn.Conv2d(9, c, 1)
        self.d = nn.Sequential(nn.Conv2d(c, 2, 1, bias=False), nn.BatchNorm2d(2))
        self.e = nn.Sequential(nn.Conv2d(c, 5, 1, bias=False), nn.BatchNorm2d(5))
        self.fuse2 = nn.Conv2d(7, c, 1)
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.act(self.a(x)), self.act(self.b(x)), self.act(self.c(x))], 1)
        z = torch.cat([self.act(self.d(x)), self.act(self.e(x))], 1)  # the same activation after a second concat
        return self.head(self.fuse(self.act(self.bn(y))) + self.fuse2(self.act(z)))


class SharedConvOnConcatNet(nn.Module):
    """One conv applied to the stem output and to three concats of two branches each. Removing a branch would
    need that shared conv cut differently per call, so the branches are zero-filled instead: 6 GeZIGs."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = _stem(2 * c)
        self.shared = nn.Conv2d(2 * c, 2 * c, 1)
        self.left = nn.ModuleList(nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))
                                  for _ in range(3))
        self.right = nn.ModuleList(nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
                                   for _ in range(3))
        self.head = _Head(2 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.stem(x))
        for left, right in zip(self.left, self.right, strict=True):
            x = self.shared(torch.relu(torch.cat([left(x), right(x)], 1)))
        return self.head(x)


class GroupNormConcatNet(nn.Module):
    """GroupNorm(4, 16) over a concat of two 8-channel branches (group boundaries = branch boundaries), and
    GroupNorm(2, 12) over branches of 4 and 8 channels (boundaries do not coincide: zero-filled): 4 GeZIGs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _stem(8)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.gn = nn.GroupNorm(4, 16)
        self.fuse = nn.Conv2d(16, 8, 1)
        self.c = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.d = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.gn2 = nn.GroupNorm(2, 12)
        self.fuse2 = nn.Conv2d(12, 8, 1)
        self.head = _Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.fuse(torch.relu(self.gn(torch.cat([self.a(x), self.b(x)], 1))))
        x = self.fuse2(torch.relu(self.gn2(torch.cat([self.c(x), self.d(x)], 1))))
        return self.head(x)
