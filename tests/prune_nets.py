"""Networks and helpers for the pruning-mode tests (spec §4): OTOv2's DemoNet, one small net per special case of
§4.2, and an oracle for the exact parameter count of a pruned sub-network."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from otov3 import OTO
from subnet_equivalence import zero_groups_


class DemoNet(nn.Module):
    """OTOv2's DemoNet (spec §4.3): x2 = BN2(t) + BN3(t) + Conv3(x1) ties Conv2/Conv3; cat(x1, x2) feeds BN4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.conv2, self.bn2, self.bn3 = nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn4, self.conv5 = nn.BatchNorm2d(192), nn.Conv2d(192, 256, 3, padding=1)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.gemm1, self.gemm2 = nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.bn1(self.conv1(x)))
        t = self.conv2(x1)
        x2 = self.bn2(t) + self.bn3(t) + self.conv3(x1)
        x5 = self.conv5(self.bn4(torch.cat([x1, x2], 1)))
        return self.gemm2(self.gemm1(self.flatten(self.pool(x5))))


def conv_bn(c_in: int, c_out: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, **kw), nn.BatchNorm2d(c_out), nn.ReLU())


class DepthwiseNet(nn.Module):
    """conv -> depthwise conv (groups == channels) -> BN -> pointwise conv: the depthwise rows join conv's group."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv = conv_bn(3, c)
        self.dw, self.bn = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.pw(torch.relu(self.bn(self.dw(self.conv(x)))))).mean((2, 3)))


class FlattenNet(nn.Module):
    """conv (5 channels, 4x4 map) -> flatten -> Linear(80): channel j is in-features [16j, 16j + 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 5)
        self.fc1, self.fc2 = nn.Linear(5 * 16, 7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(F.max_pool2d(self.conv(x), 2), 1))))


class GroupNormNet(nn.Module):
    """conv(8) -> GroupNorm(4 groups of 2) -> conv: channels go in pairs; a GroupNorm over a misaligned concat
    (blocks of 3 over operands of 2 and 4 channels) keeps its operands whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gn, self.mid = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.Conv2d(8, 6, 1)
        self.a, self.b, self.gn2 = nn.Conv2d(6, 2, 1), nn.Conv2d(6, 4, 1), nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.mid(torch.relu(self.gn(self.conv(x)))))
        y = self.gn2(torch.cat([self.a(y), self.b(y)], 1))
        return self.fc(y.mean((2, 3)))


class Attention(nn.Module):
    """Pre-LN transformer block on (B, T, C) tokens: q/k/v/o as nn.Linear with `heads` heads (sdpa or explicit
    softmax(q kᵀ) v), and an MLP. Heads and hidden units are groups; the residual stream is kept."""

    def __init__(self, c: int = 8, heads: int = 2, sdpa: bool = True) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.fc1, self.fc2, self.head = nn.Linear(c, 12), nn.Linear(12, c), nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(b, t, self.heads, c // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v
        x = x + self.o(y.transpose(1, 2).reshape(b, t, c))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


class MHANet(nn.Module):
    """nn.MultiheadAttention between two Linears: the attention's input and output channels are kept whole."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.inp, self.attn, self.fc = nn.Linear(4, c), nn.MultiheadAttention(c, 2, batch_first=True), nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.fc(self.attn(h, h, h, need_weights=False)[0].mean(1))


class TransposeNet(nn.Module):
    """ConvTranspose (output channels are weight dim 1), a LayerScale γ·x, and an Embedding (rows are dim 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 6, 2, stride=2)
        self.gamma = nn.Parameter(torch.full((6, 1, 1), 0.7))
        self.conv = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(self.gamma * torch.relu(self.up(x)))).mean((2, 3)))


class EmbeddingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.fc2 = nn.Embedding(11, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))).mean(1))


class Unprunable(nn.Module):
    """One node group per reason of spec §4.2: chunk, channel shuffle, a sigmoid before a conv, a grouped conv,
    an Add fed by the model input, frozen weights, and the output."""

    def __init__(self) -> None:
        super().__init__()
        self.glu = nn.Conv2d(3, 8, 1)  # chunked
        self.shuf = nn.Conv2d(4, 4, 1)  # channel shuffle after it
        self.sig = nn.Conv2d(4, 4, 1)  # sigmoid, then a conv reads it
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.res = nn.Conv2d(3, 3, 1)  # added to the model input
        self.frozen = nn.Conv2d(3, 4, 1).requires_grad_(False)
        self.mix = nn.Conv2d(4 + 4 + 4 + 3 + 4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, v = self.glu(x).chunk(2, 1)
        y = self.shuf(v * torch.sigmoid(g))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        parts = [y, torch.sigmoid(self.sig(y)), self.grouped(y), x + self.res(x), self.frozen(x)]
        return self.fc(self.mix(torch.cat(parts, 1)).mean((2, 3)))


def randomize_norms_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm scales in [0.5, 1.5] and small shifts, so that no channel dies by chance behind a ReLU."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
    return model


def zero_random_(oto: OTO, fraction: float, seed: int = 0) -> list:
    """Zero a random valid set of about `fraction` of the channel groups (each node group keeps one)."""
    rng = random.Random(seed)
    chosen = [g for g in oto.groups if rng.random() < fraction]
    by_node: dict[int, list] = {}
    for g in oto.groups:
        by_node.setdefault(g.node_group, []).append(g)
    for members in by_node.values():
        if all(m in chosen for m in members):
            chosen.remove(members[0])
    assert oto.is_valid_removal(chosen)
    zero_groups_(chosen)
    return chosen


@contextlib.contextmanager
def _identity_relus() -> Iterator[None]:
    """ReLUs pass values through (only while probing): then no channel is zero by chance, only by structure."""
    saved = (torch.relu, F.relu, nn.ReLU.forward, nn.ReLU6.forward)
    torch.relu = F.relu = lambda x, *a, **k: x
    nn.ReLU.forward = nn.ReLU6.forward = lambda self, x: x
    try:
        yield
    finally:
        torch.relu, F.relu, nn.ReLU.forward, nn.ReLU6.forward = saved


def zero_input_channels(model: nn.Module, inputs: tuple, seed: int = 0, *, train: bool = False, passes: int = 1
                        ) -> dict[int, set[int]]:
    """For every Conv/Linear/MultiheadAttention: the input channels that are exactly zero on `passes` random
    batches (in train mode norms use batch statistics, so a live channel is centred and a ReLU cannot silence it)."""
    zero_in: dict[int, set[int]] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd | nn.MultiheadAttention) and getattr(m, "groups", 1) == 1:
            def hook(mod, args, _out):
                axis = 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1
                x = args[0].detach().movedim(axis, 0).reshape(args[0].shape[axis], -1)
                found = {j for j in range(x.shape[0]) if bool((x[j] == 0).all())}
                zero_in[id(mod)] = found & zero_in.get(id(mod), found)
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.train(train)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad(), _identity_relus():
        for _ in range(8):
            model(*[torch.randn(a.shape, generator=generator) if a.is_floating_point() else a for a in inputs])
    model.train(was)
    for h in hooks:
        h.remove()
    return zero_in


def expected_params(model: nn.Module, zero: list, inputs: tuple) -> int | None:
    """Oracle: the super-network's parameters minus the zero groups' rows and the input columns of every stem that
    reads a structurally zero channel, found by running the model (not by otov3's plan): a channel counts when it
    is zero in a copy whose other parameters are redrawn positive and whose ReLUs pass everything (so no channel
    is zero by chance)
    and not zero in a copy where nothing is zeroed; None when such a copy has zero channels (a LayerNorm over one
    channel is zero whatever the weights, so zero channels do not tell which were removed)."""
    rows: dict[tuple[str, int], set[int]] = {}
    for g in zero:
        for s in g.slices:
            rows.setdefault((s.name, s.dim), set()).update(range(s.index.start, s.index.stop))
    found: list[dict[str, set[int]]] = []
    modules = dict(model.named_modules())
    for draw in range(2):  # draw 0 keeps the zero rows; draw 1 zeroes nothing (what is zero anyway)
        probe = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(100 + draw)
        with torch.no_grad():
            for name, p in probe.named_parameters():
                keep = torch.zeros(p.shape, dtype=torch.bool)
                for (pname, dim), idx in rows.items():
                    if pname == name and draw == 0:
                        keep.index_fill_(dim, torch.tensor(sorted(idx)), True)
                fresh = torch.rand(p.shape, generator=generator) * 0.5 + 0.05  # positive: a ReLU cannot silence
                p.copy_(torch.where(keep, p, fresh))  # a channel of positive inputs by chance
        by_name = {id(m): n for n, m in probe.named_modules()}
        found.append({by_name[k]: v for k, v in zero_input_channels(probe, inputs, draw).items()})
    if any(found[1].values()):
        return None  # a channel is zero whatever the weights (a LayerNorm over one channel): no oracle
    zero_in = {id(modules[n]): v for n, v in found[0].items()}
    used = _reaching_output(model, inputs)
    total = 0
    for mod_name, m in modules.items():
        for name, p in m.named_parameters(recurse=False):
            shape = list(p.shape)
            full = f"{mod_name}.{name}" if mod_name else name
            if full not in used:
                continue  # dead code in the super-network too: no sub-network keeps it
            for (pname, dim), idx in rows.items():
                if pname == full:
                    shape[dim] -= len(idx)
            if name in ("weight", "in_proj_weight") and id(m) in zero_in:
                in_dim = 0 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 1
                shape[in_dim] -= len(zero_in[id(m)])
            total += math.prod(shape)
    return total


def _reaching_output(model: nn.Module, inputs: tuple) -> set[str]:
    """Names of the parameters the model's output depends on (the autograd graph of one forward pass)."""
    probe = copy.deepcopy(model).eval()
    out = probe(*inputs)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    named = [(n, p) for n, p in probe.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(t.sum() for t in leaves), [p for _, p in named], allow_unused=True)
    frozen = {n for n, p in probe.named_parameters() if not p.requires_grad}  # cannot tell: counted as used
    return frozen | {n for (n, _), g in zip(named, grads, strict=True) if g is not None}


class MoreUnprunable(nn.Module):
    """The remaining reasons: an op pruning mode does not know (cumsum), a conv shared with the model input, and
    a BN on the model input (no stem writes its channels, so no node group holds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.odd, self.a, self.shared = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        odd = torch.cumsum(self.odd(self.bn0(x)), 1)
        parts = [odd, self.shared(torch.relu(self.a(x))), self.shared(x)]
        return self.fc(torch.cat(parts, 1).mean((2, 3)))
