"""CPU latency of super- vs sub-network, side by side, for zoo models with a fixed zero set.

Target (issue #4): latency ratio <= MACs ratio + 0.05. Run: `.venv/bin/python benchmarks/subnet_latency.py`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from otov3 import OTO
from otov3.metrics import count_flops, count_params

# Fixed zero sets: group-name prefixes (spec §3.4 for DemoSupNet, §3.5 for StackedUnets).
ZERO_SETS = {
    "DemoSupNet": ("branch2.", "branch3.", "branch8."),
    "StackedUnets": ("right.out", "left.bottom", "right.bottom", "right.dec"),
}


def _median_latency(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from otov3.zoo import create_supernet, get_supernet_spec, list_supernets

    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats} runs\n")
    print("| model | zero groups | params super → sub | MACs ratio | latency super (ms) | latency sub (ms) "
          "| latency ratio | target met |")
    print("|---|---|---|---|---|---|---|---|")
    for name, prefixes in ZERO_SETS.items():
        if name not in list_supernets():
            continue
        model = create_supernet(name)
        shape = tuple(get_supernet_spec(name).input_shape)
        x1 = torch.randn(*shape)
        oto = OTO(model, x1)
        zero = [g for g in oto.groups if g.name.startswith(prefixes)]
        with torch.no_grad():
            for g in zero:
                for s in g.slices:
                    s.view().zero_()
        subnet = oto.construct_subnet()
        macs_ratio = count_flops(subnet, x1) / count_flops(model, x1)
        x = torch.randn(args.batch, *shape[1:])
        t_super = _median_latency(model, x, args.repeats)
        t_sub = _median_latency(subnet, x, args.repeats)
        ratio = t_sub / t_super
        print(f"| {name} | {len(zero)}/{len(oto.groups)} | {count_params(model):,} → {count_params(subnet):,} | "
              f"{macs_ratio:.3f} | {t_super * 1e3:.2f} | {t_sub * 1e3:.2f} | {ratio:.3f} | "
              f"{'yes' if ratio <= macs_ratio + 0.05 else 'NO'} |")


if __name__ == "__main__":
    main()
