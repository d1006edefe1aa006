"""Median ``optimizer.step()`` time of H2SPG against torch.optim.SGD / Adam, per H2SPG phase.

Run: ``.venv/bin/python benchmarks/optimizer_overhead.py [--reps N]``. Single-threaded (``torch.set_num_threads(1)``),
CPU. Gradients are random and set once before timing; only ``step()`` is timed, and the two optimizers are timed
alternately so that background load hits both alike. Prints a markdown table (target: ratio ≤ 1.25).

Phases: ``warm-up`` (scores over every GeZIG each step), ``hybrid`` (λ step + half-space test on the redundant
groups, inside the deadline window so the extra shrink is timed too), ``plain`` (after the deadline: redundant
groups fixed at zero; H2SPG skips parameters made entirely of zero groups, so it updates fewer parameters than
the baseline there). Scores come from random gradients, so which groups are redundant (and how large) varies
with the network; the table says how many GeZIGs there are and K.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from otov3.optim import H2SPG
from otov3.space import Group, GroupKind, ParamSlice


def _gezig(name: str, modules: list[tuple[str, nn.Module]], segment: int) -> Group:
    slices = tuple(ParamSlice(f"{prefix}.{n}", p) for prefix, m in modules for n, p in m.named_parameters())
    return Group(name, GroupKind.GEZIG, slices, (name,), segment)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class DemoLikeNet(nn.Module):
    """DemoSupNet topology (spec §3.4) with width 96: ~0.8 M parameters, 5 GeZIGs."""

    def __init__(self, c: int = 96) -> None:
        super().__init__()
        self.conv1 = _conv_bn(1, c)
        self.g2 = _conv_bn(c, c)
        self.g3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(c, c))
        self.g4 = nn.Sequential(nn.AvgPool2d(3, 1, 1), _conv_bn(c, c), _conv_bn(c, c))
        self.conv6 = _conv_bn(3 * c, c)
        self.g7 = _conv_bn(c, c)
        self.g8 = _conv_bn(c, c)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv1(x)
        z = self.conv6(torch.cat([self.g2(z), self.g3(z), self.g4(z)], dim=1))
        z = self.g7(z) + self.g8(z)
        return self.head(z.mean(dim=(2, 3)))

    def gezigs(self) -> list[Group]:
        return [_gezig(n, [(n, getattr(self, n))], i) for i, n in enumerate(["g2", "g3", "g4", "g7", "g8"])]


class SuperBlock(nn.Module):
    """``skip(x) + body(x) + short(x)``: a ResNet basic-block body and a 1×1 branch in parallel (both GeZIGs)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.ReLU(), _conv_bn(cout, cout))
        self.short = _conv_bn(cin, cout, 1, stride)
        self.skip = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.body(x) + self.short(x))


class ResNet18Super(nn.Module):
    """ResNet-18 layout (64-128-256-512, 2 blocks per stage) with parallel branches: ~11.6 M parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 64)
        widths = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                  (256, 512, 2), (512, 512, 1)]
        self.blocks = nn.Sequential(*(SuperBlock(a, b, s) for a, b, s in widths))
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    def gezigs(self) -> list[Group]:
        out = []
        for i, block in enumerate(self.blocks):
            out.append(_gezig(f"blocks.{i}.body", [(f"blocks.{i}.body", block.body)], 2 * i))
            out.append(_gezig(f"blocks.{i}.short", [(f"blocks.{i}.short", block.short)], 2 * i + 1))
        return out


def _demo_network() -> tuple[str, nn.Module, list[Group]]:
    try:
        from otov3.zoo import DemoSupNet  # the zoo's network, once it exists
    except ImportError:
        net = DemoLikeNet()
        return "DemoSupNet-like (own, width 96)", net, net.gezigs()
    net = DemoSupNet()
    # The zoo model's GeZIGs are its five branches (spec §3.4); named directly so the benchmark needs no tracing.
    branches = [(n, m) for n, m in net.named_children() if n.startswith("branch")]
    return "otov3.zoo.DemoSupNet", net, [_gezig(n, [(n, m)], i) for i, (n, m) in enumerate(branches)]


def _with_grads(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    return net


def _median_pair(step_a: Callable[[], object], step_b: Callable[[], object], reps: int,
                 settle: int) -> tuple[float, float]:
    for _ in range(settle):
        step_a()
        step_b()
    ta, tb = [], []
    for _ in range(reps):
        for step, sink in ((step_a, ta), (step_b, tb)):
            t0 = time.perf_counter()
            step()
            sink.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


PHASES = {
    # name: (H2SPG options, steps before timing)
    "warm-up": ({"warmup_steps": 10**9}, 3),
    "hybrid": ({"warmup_steps": 1, "hybrid_steps": 10**6, "deadline_window": 1.0}, 3),
    "plain": ({"warmup_steps": 1, "hybrid_steps": 1}, 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=0, help="timed steps per cell (default: 40 small, 15 large)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo_name, demo, demo_groups = _demo_network()
    resnet = ResNet18Super()
    nets = [(demo_name, demo, demo_groups, args.reps or 40), ("ResNet-18 super-network", resnet,
                                                                resnet.gezigs(), args.reps or 15)]
    print("| network | params | GeZIGs (K) | variant | phase | H2SPG ms | torch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, net, groups, reps in nets:
        _with_grads(net)
        n_params = sum(p.numel() for p in net.parameters())
        k = max(1, len(groups) // 2)
        for variant, baseline, kw in [
            ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=5e-4),
             {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}),
            ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-4), {"lr": 1e-4}),
        ]:
            for phase, (opts, settle) in PHASES.items():
                saved = {k_: v.detach().clone() for k_, v in net.state_dict().items()}
                twin = _with_grads(copy.deepcopy(net))  # the baseline steps its own copy
                opt = H2SPG(net.parameters(), groups, lambda r: True, target_group_sparsity=k, variant=variant,
                            **opts, **kw)
                h_ms, t_ms = _median_pair(opt.step, baseline(twin.parameters()).step, reps, settle)
                assert opt.phase == phase.replace("-", ""), opt.phase
                if phase == "hybrid":  # the measured steps did the λ step on every redundant group
                    assert not opt.zero_groups
                net.load_state_dict(saved)
                print(f"| {name} | {n_params / 1e6:.2f} M | {len(groups)} ({k}) | {variant} | {phase} | "
                      f"{h_ms:.2f} | {t_ms:.2f} ({'SGD' if variant == 'sgd' else 'Adam'}) | {h_ms / t_ms:.2f} |")


if __name__ == "__main__":
    main()
