"""Search-space construction time against model size: it should grow linearly with the number of traced ops.

Residual stacks of 8..128 blocks (each block: two parallel conv-bn-relu branches plus the identity, joined by Add;
8 trace vertices per block), then every zoo super-network if `otov3.zoo` is available. For each model: median of
3 full `OTO(model, x)` constructions (capture + trace graph + segments + groups), time per trace vertex, and the
median of 9 runs of the torch-free graph layer alone (segment growth + GeZIG partition on the built trace graph).
Garbage collection is paused inside each timed run, as `timeit` does.
The official OTO library needs 6.8 s at ~900 vertices (quadratic edge scans, STYLE.md).

Run: `.venv/bin/python benchmarks/search_space.py` (prints a markdown table).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from otov3 import OTO
from otov3.graph.gezig import partition
from otov3.graph.segments import build_dependency_graph


class ResidualBlock(nn.Module):
    """y = branch_a(x) + branch_b(x) + x, each branch Conv3x3-BN-ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x) + x


class ResidualStack(nn.Module):
    def __init__(self, blocks: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()  # as timeit does: a collection inside one run is noise, not construction cost
        try:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times)


def _row(name: str, model: nn.Module, x: torch.Tensor, repeats: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, x)  # warm-up, and the figures for the table
        build = _median_seconds(lambda: OTO(model, x), repeats)
    trace = oto.space.trace
    graph_only = _median_seconds(lambda: partition(trace, build_dependency_graph(trace)), 3 * repeats)
    n = len(trace.vertices)
    return (
        f"| {name} | {n} | {len(oto.space.dependency.segments)} | {len(oto.groups)} | {build * 1e3:.1f} "
        f"| {build / n * 1e6:.0f} | {graph_only * 1e3:.2f} | {graph_only / n * 1e6:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, nargs="*", default=[8, 16, 32, 64, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"{args.threads} thread(s), median of {args.repeats} constructions\n")
    print("| model | trace vertices | segments | GeZIGs | OTO(model, x) (ms) | µs / vertex | graph layer (ms) "
          "| graph layer µs / vertex |")
    print("|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for blocks in args.blocks:
        print(_row(f"residual stack ×{blocks}", ResidualStack(blocks), torch.randn(1, 3, 8, 8), args.repeats),
              flush=True)
    try:
        from otov3.zoo import create_supernet, get_supernet_spec, list_supernets
    except ImportError as err:
        print(f"\n(zoo skipped: {err})")
        return
    for name in list_supernets():
        shape = tuple(get_supernet_spec(name).input_shape)
        print(_row(name, create_supernet(name), torch.randn(*shape), args.repeats), flush=True)


if __name__ == "__main__":
    main()
