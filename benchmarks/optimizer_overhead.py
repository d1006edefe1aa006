"""Median ``optimizer.step()`` time of H2SPG, DHSPG and HESSO against torch.optim.SGD / Adam, per phase.

Run: ``.venv/bin/python benchmarks/optimizer_overhead.py [--reps N] [--nets chain8,resnet50,...] [--engine eager]``.
``--engine eager`` measures the engine without its fused C kernels (as on a machine without a C compiler).
Single-threaded (``torch.set_num_threads(1)``), CPU. Gradients are random and set once before timing; only
``step()`` is timed, and the two optimizers are timed alternately so that background load hits both alike. Prints a
markdown table; ratio = median over the timed pairs of (step time ÷ baseline step time); target ≤ 1.25 in every phase.

Networks: residual chains of 8, 16 and 64 blocks (16–64 channels; each block body and its parallel 1×1 branch
are GeZIGs), the zoo's DemoSupNet with hand-made channel groups, every zoo network (DemoSupNet, StackedUnets,
SuperResNet, DARTS-8, DARTS-14) with the groups `OTO` finds in erasing and pruning mode, and a ResNet-50-sized
bottleneck network (25.6 M parameters). H2SPG runs over
the GeZIGs (erasing mode); DHSPG and HESSO over pruning-mode channel groups (one group per output channel of
each node group: conv rows + BN entries, residual outputs of a stage tied), the way `OTO(mode="prune")` hands
them over; on the ResNet-50 that is ~11 500 groups.

Phases: ``warm-up`` (H2SPG: scores over every GeZIG each step; DHSPG/HESSO: plain steps), ``hybrid`` (H2SPG/DHSPG:
λ step + half-space test on the redundant groups inside the deadline window; HESSO: the active half of the groups
shrinking, the median step of a period), ``plain`` (after the deadline: zero groups kept at zero; parameters made
entirely of zero groups are skipped, so the optimizers update less than the baseline there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from otov3.optim import DHSPG, H2SPG, HESSO, _native
from otov3.space import Group, GroupKind, ParamSlice


def _gezig(name: str, modules: list[tuple[str, nn.Module]], segment: int) -> Group:
    slices = tuple(ParamSlice(f"{prefix}.{n}", p) for prefix, m in modules for n, p in m.named_parameters())
    return Group(name, GroupKind.GEZIG, slices, (name,), segment)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


def _channels(tied: list[list[nn.Sequential]], name: str) -> list[Group]:
    """One CHANNEL group per output channel j of a node group: row j of each conv, entry j of each BN."""
    out = []
    for j in range(tied[0][0].out_channels):
        slices = []
        for conv, bn in tied:
            slices += [ParamSlice(f"{name}.w", conv.weight, slice(j, j + 1)),
                       ParamSlice(f"{name}.g", bn.weight, slice(j, j + 1)),
                       ParamSlice(f"{name}.b", bn.bias, slice(j, j + 1))]
        out.append(Group(f"{name}[{j}]", GroupKind.CHANNEL, tuple(slices), (name,), 0))
    return out


class SuperBlock(nn.Module):
    """``skip(x) + body(x) + short(x)``: a basic-block body and a 1×1 branch in parallel (both GeZIGs)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.ReLU(), _conv_bn(cout, cout))
        self.short = _conv_bn(cin, cout, 1, stride)
        self.skip = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.body(x) + self.short(x))


class Chain(nn.Module):
    """``n`` SuperBlocks in three equal stages of 16, 32 and 64 channels."""

    def __init__(self, n: int) -> None:
        super().__init__()
        widths, cin = [], 16
        for i in range(n):
            cout = (16, 32, 64)[min(3 * i // n, 2)]
            widths.append((cin, cout, 2 if cout != cin else 1))
            cin = cout
        self.stem = _conv_bn(3, 16)
        self.blocks = nn.Sequential(*(SuperBlock(a, b, s) for a, b, s in widths))
        self.head = nn.Linear(64, 10)

    def gezigs(self) -> list[Group]:
        out = []
        for i, block in enumerate(self.blocks):
            out.append(_gezig(f"blocks.{i}.body", [(f"blocks.{i}.body", block.body)], 2 * i))
            out.append(_gezig(f"blocks.{i}.short", [(f"blocks.{i}.short", block.short)], 2 * i + 1))
        return out

    def channels(self) -> list[Group]:
        out, stage, name = [], [self.stem[0:2]], "stem"
        for i, block in enumerate(self.blocks):
            out += _channels([block.body[0]], f"blocks.{i}.body.0")
            if not isinstance(block.skip, nn.Identity):  # a new stage: the old residual node group is complete
                out += _channels([(m[0], m[1]) for m in stage], name)
                stage, name = [block.skip], f"stage{i}"
            stage += [block.body[2], block.short]
        return out + _channels([(m[0], m[1]) for m in stage], name)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = _conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride), _conv_bn(width,
                                                                                                           4 * width, 1)
        self.down = _conv_bn(cin, 4 * width, 1, stride) if stride != 1 or cin != 4 * width else None


class ResNet50Like(nn.Module):
    """ResNet-50's bottleneck layout (3-4-6-3 blocks, widths 64-128-256-512): 25.6 M parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 64, 7, 2)
        self.stages = nn.ModuleList()
        cin = 64
        for width, n, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            blocks = nn.ModuleList(Bottleneck(cin if i == 0 else 4 * width, width, stride if i == 0 else 1)
                                   for i in range(n))
            self.stages.append(blocks)
            cin = 4 * width
        self.fc = nn.Linear(2048, 1000)

    def gezigs(self) -> list[Group]:  # erasing mode: every non-first bottleneck body of a stage is removable
        return [_gezig(f"s{s}.b{i}", [(f"s{s}.b{i}.{k}", getattr(b, k)) for k in ("c1", "c2", "c3")], 10 * s + i)
                for s, blocks in enumerate(self.stages) for i, b in enumerate(blocks) if i > 0]

    def channels(self) -> list[Group]:
        out = _channels([self.stem], "stem")
        for s, blocks in enumerate(self.stages):
            for i, b in enumerate(blocks):
                out += _channels([b.c1], f"s{s}.b{i}.c1") + _channels([b.c2], f"s{s}.b{i}.c2")
            out += _channels([blocks[0].down] + [b.c3 for b in blocks], f"s{s}.out")
        return out


def _zoo() -> tuple[nn.Module, list[Group], list[Group]]:
    from otov3.zoo import DemoSupNet

    net = DemoSupNet()
    branches = [(n, m) for n, m in net.named_children() if n.startswith("branch")]
    gezigs = [_gezig(n, [(n, m)], i) for i, (n, m) in enumerate(branches)]
    channels = []  # every conv+BN pair, untied: the benchmark needs the row structure, not exact node groups
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            bn = dict(net.named_modules()).get(name.replace("conv", "bn"))
            if isinstance(bn, nn.BatchNorm2d) and bn.num_features == m.out_channels:
                channels += _channels([(m, bn)], name)
    return net, gezigs, channels


def _nets(which: list[str]) -> list[tuple[str, nn.Module, list[Group], list[Group], int]]:
    out = []
    for key in which:
        if key.startswith("chain"):
            net = Chain(int(key[5:]))
            out.append((f"residual chain, {key[5:]} blocks", net, net.gezigs(), net.channels(), 40))
        elif key == "zoo":
            net, gezigs, channels = _zoo()
            out.append(("zoo DemoSupNet", net, gezigs, channels, 40))
        elif key == "resnet50":
            net = ResNet50Like()
            out.append(("ResNet-50-sized", net, net.gezigs(), net.channels(), 9))
        elif key.startswith("zoo:"):
            out.append(_zoo_searched(key[4:]))
    return out


def _zoo_searched(name: str) -> tuple[str, nn.Module, list[Group], list[Group], int]:
    """A zoo super-network with the groups `OTO` finds: its GeZIGs (erasing mode, for H2SPG) and its channel
    groups (pruning mode, for DHSPG and HESSO), as a user's run would hand them over."""
    from otov3 import OTO
    from otov3.zoo import create_supernet, get_supernet_spec

    spec = get_supernet_spec(name)
    net = create_supernet(name)
    dummy = torch.randn(spec.input_shape)
    gezigs = list(OTO(net, dummy).groups)
    channels = list(OTO(net, dummy, mode="prune").groups)
    return f"zoo {name} (OTO's groups)", net, gezigs, channels, 40


def _with_grads(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    return net


def _median_pair(step_a: Callable[[], object], step_b: Callable[[], object], reps: int,
                 settle: int) -> tuple[float, float, float]:
    """Median times of ``step_a`` and ``step_b`` (ms), run alternately, and the median of the per-pair ratios
    (robust to load that drifts during the measurement, as on a shared machine)."""
    for _ in range(settle):
        step_a()
        step_b()
    ta, tb = [], []
    for _ in range(reps):
        for step, sink in ((step_a, ta), (step_b, tb)):
            t0 = time.perf_counter()
            step()
            sink.append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(ta, tb, strict=True))
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3, ratio


BIG = 10**9
_WINDOW = {"warmup_steps": 1, "hybrid_steps": BIG, "deadline_window": 1.0}  # inside the deadline window
PHASES = {  # optimizer: {phase: options}
    H2SPG: {"warm-up": {"warmup_steps": BIG}, "hybrid": _WINDOW, "plain": {"warmup_steps": 1, "hybrid_steps": 1}},
    DHSPG: {"warm-up": {"warmup_steps": BIG}, "hybrid": _WINDOW, "plain": {"warmup_steps": 1, "hybrid_steps": 1}},
    HESSO: {"warm-up": {"warmup_steps": BIG, "hybrid_steps": 1}, "hybrid": {"warmup_steps": 1, "hybrid_steps": BIG},
            "plain": {"warmup_steps": 1, "hybrid_steps": 1}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=0, help="timed steps per cell (default: 40 small, 9 ResNet-50)")
    parser.add_argument("--nets", default="chain8,chain16,chain64,zoo,zoo:demo_supnet,zoo:stacked_unets,"
                        "zoo:super_resnet,zoo:darts8,zoo:darts14,resnet50",
                        help="chainN, zoo (DemoSupNet, hand-made channel groups), zoo:NAME (a zoo network with "
                             "OTO's own groups), resnet50")
    parser.add_argument("--optimizers", default="H2SPG,DHSPG,HESSO")
    parser.add_argument("--variants", default="sgd,adam")
    parser.add_argument("--engine", choices=["native", "eager"], default="native",
                        help="eager: without the fused C kernels (otov3.optim._native)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    status = _native.status()
    if args.engine == "eager":
        _native.available = lambda: False
        status = "fused kernels off"
    print(f"engine: {args.engine} ({status})\n")
    chosen = [c for c in (H2SPG, DHSPG, HESSO) if c.__name__ in args.optimizers.split(",")]
    print("| network | params | optimizer | groups (K) | variant | phase | ms | torch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, net, gezigs, channels, reps in _nets(args.nets.split(",")):
        _with_grads(net)
        n_params = sum(p.numel() for p in net.parameters())
        for cls in chosen:
            groups, valid = (gezigs, (lambda r: True)) if cls is H2SPG else (channels, None)
            k = max(1, len(groups) // 2)
            for variant in args.variants.split(","):
                if variant == "sgd":
                    kw = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
                    baseline = lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=5e-4)  # noqa: E731
                else:
                    kw = {"lr": 1e-4}
                    baseline = lambda ps: torch.optim.Adam(ps, lr=1e-4)  # noqa: E731
                for phase, opts in PHASES[cls].items():
                    saved = {k_: v.detach().clone() for k_, v in net.state_dict().items()}
                    _with_grads(net)  # fresh gradients: an earlier cell's zero rows must not carry over
                    twin = _with_grads(copy.deepcopy(net))  # the baseline steps its own copy
                    opt = cls(net.parameters(), groups, valid, target_group_sparsity=k, variant=variant, **opts, **kw)
                    ms, t_ms, ratio = _median_pair(opt.step, baseline(twin.parameters()).step, args.reps or reps, 3)
                    assert opt.phase == phase.replace("-", ""), (cls.__name__, phase, opt.phase)
                    net.load_state_dict(saved)
                    print(f"| {name} | {n_params / 1e6:.2f} M | {cls.__name__} | {len(groups)} ({k}) | {variant} | "
                          f"{phase} | {ms:.2f} | {t_ms:.2f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
