"""Search-space construction time against model size: it should grow linearly with the number of traced ops.

Residual stacks of 8..128 blocks (each block: two parallel conv-bn-relu branches plus the identity, joined by Add;
8 trace vertices per block), stacks of today's blocks (ConvNeXt with LayerScale, squeeze-and-excitation, a pre-LN
transformer block with a gated MLP), every zoo super-network if `otov3.zoo` is available, and Hugging Face models
(Llama, GPT-2, BERT, ViT) when `transformers` is installed. Each model is captured with both backends (torch.fx and
non-strict torch.export; "cannot capture" when a backend fails, as fx does on the Hugging Face models). For each
model and backend: median of 3 full `OTO(model, x, capture=...)` constructions (capture + trace graph + segments +
groups), time per trace vertex, and the median of 9 runs of the torch-free graph layer alone (segment growth +
GeZIG partition on the built trace graph). Export graphs hold aten ops, so they have more vertices than fx graphs
of the same model. Garbage collection is paused inside each timed run, as `timeit` does.
The official OTO library needs 6.8 s at ~900 vertices (quadratic edge scans, STYLE.md).

Run: `.venv/bin/python benchmarks/search_space.py` (prints a markdown table);
`--tiny` is a quick smoke run (small stacks, one repeat).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from collections.abc import Callable

import hf_models
import torch
from torch import nn

from otov3 import OTO, CaptureError
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


class ConvNeXtBlock(nn.Module):
    """x + γ · Linear(GELU(Linear(LN(dwconv7x7(x))))), channels-last in the middle (LayerScale γ)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class SEBlock(nn.Module):
    """x + conv-bn(x) · sigmoid(fc(relu(fc(pool(conv-bn(x))))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.fc1, self.fc2 = nn.Conv2d(width, width // 2, 1), nn.Conv2d(width // 2, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return torch.relu(x + y * gate)


class GatedTransformerBlock(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + down(silu(gate(LN(x))) · up(LN(x)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.gate, self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(width, 2 * width), nn.Linear(2 * width,
                                                                                                            width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        y = self.ln2(x)
        return x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))


class BlockStack(nn.Module):
    """A stem, `blocks` copies of a block, a head: image blocks on 8x8 maps, the transformer block on 16 tokens."""

    def __init__(self, block: type[nn.Module], blocks: int, width: int = 16) -> None:
        super().__init__()
        self.tokens = block is GatedTransformerBlock
        self.stem = nn.Linear(8, width) if self.tokens else nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*(block(width) for _ in range(blocks)))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(y.mean(1) if self.tokens else y.mean((2, 3)))

    @staticmethod
    def example(block: type[nn.Module]) -> torch.Tensor:
        return torch.randn(2, 16, 8) if block is GatedTransformerBlock else torch.randn(2, 3, 8, 8)


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


def _row(name: str, model: nn.Module, x, repeats: int, backend: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            oto = OTO(model, x, capture=backend)  # warm-up, and the figures for the table
        except CaptureError as err:
            reason = str(err).split(": ", 2)[-1][:70].replace("|", "/")
            return f"| {name} | {backend} | cannot capture ({reason}...) | | | | | | |"
        build = _median_seconds(lambda: OTO(model, x, capture=backend), repeats)
    trace = oto.space.trace
    graph_only = _median_seconds(lambda: partition(trace, build_dependency_graph(trace)), 3 * repeats)
    n = len(trace.vertices)
    return (
        f"| {name} | {backend} | {n} | {len(oto.space.dependency.segments)} | {len(oto.groups)} | "
        f"{build * 1e3:.1f} | {build / n * 1e6:.0f} | {graph_only * 1e3:.2f} | {graph_only / n * 1e6:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, nargs="*", default=[8, 16, 32, 64, 128])
    parser.add_argument("--replica-blocks", type=int, nargs="*", default=[4, 16],
                        help="stack depths of the ConvNeXt / SE / gated-transformer replicas")
    parser.add_argument("--backends", nargs="*", default=["fx", "export"], choices=["fx", "export", "auto"])
    parser.add_argument("--hf-size", default="tiny", choices=sorted(hf_models.SIZES))
    parser.add_argument("--no-zoo", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="smoke run: small stacks, one repeat, no zoo")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.blocks, args.replica_blocks, args.no_zoo = 1, [8], [2], True
    torch.set_num_threads(args.threads)

    print(f"{args.threads} thread(s), median of {args.repeats} constructions\n")
    print("| model | capture | trace vertices | segments | GeZIGs | OTO(model, x) (ms) | µs / vertex "
          "| graph layer (ms) | graph layer µs / vertex |")
    print("|---|---|---|---|---|---|---|---|---|")
    models: list[tuple[str, nn.Module, object]] = []
    torch.manual_seed(0)
    models += [(f"residual stack ×{b}", ResidualStack(b), torch.randn(2, 3, 8, 8)) for b in args.blocks]
    for block in (ConvNeXtBlock, SEBlock, GatedTransformerBlock):
        models += [(f"{block.__name__} ×{b}", BlockStack(block, b).eval(), BlockStack.example(block))
                   for b in args.replica_blocks]
    if not args.no_zoo:
        try:
            from otov3.zoo import create_supernet, get_supernet_spec, list_supernets
        except ImportError as err:
            print(f"\n(zoo skipped: {err})")
        else:
            models += [(name, create_supernet(name), torch.randn(*get_supernet_spec(name).input_shape))
                       for name in list_supernets()]
    if hf_models.available():
        models += hf_models.hf_cases(args.hf_size)
    for name, model, x in models:
        for backend in args.backends:
            print(_row(name, model, x, args.repeats, backend), flush=True)


if __name__ == "__main__":
    main()
