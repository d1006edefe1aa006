"""CPU latency of super- vs sub-network, side by side, for every zoo model with a fixed zero set.

Zero sets: the paper's for DemoSupNet (spec §3.4) and StackedUnets (§3.5); for the others a deterministic greedy
rule (walk the GeZIGs by descending MACs, zero each one that keeps the network valid, stop at half of them).
Target (issue #4): latency ratio <= MACs ratio + 0.05. The sub-network is `construct_subnet()`'s default, which
computes duplicate parameter-free ops once (`otov3.subnet.dedupe`). The last two columns separate the two effects:
the sub-network built without that step, and the sub-network against a super-network merged the same way.
Hugging Face models (Llama, GPT-2, BERT, ViT; random init, `--hf-size small` by default: hidden 256, 4 layers,
128 tokens) follow when `transformers` is installed; they are captured with torch.export, and their super-network
column times the Hugging Face module itself.
Run: `.venv/bin/python benchmarks/subnet_latency.py`; `--tiny` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import hf_models
import torch

from otov3 import OTO
from otov3.metrics import count_flops, count_params
from otov3.subnet.dedupe import merge_duplicate_ops

# Fixed zero sets: group-name prefixes (spec §3.4 for DemoSupNet, §3.5 for StackedUnets).
PAPER_ZERO_SETS = {
    "demo_supnet": ("branch2.", "branch3.", "branch8."),
    "stacked_unets": ("right.out", "left.bottom", "right.bottom", "right.dec"),
}


def _zero_set(name: str, oto: OTO) -> list:
    if name in PAPER_ZERO_SETS:
        return [g for g in oto.groups if g.name.startswith(PAPER_ZERO_SETS[name])]
    chosen: list = []
    for g in sorted(oto.groups, key=lambda g: -g.macs):
        if len(chosen) == len(oto.groups) // 2:
            break
        if oto.is_valid_removal(chosen + [g]):
            chosen.append(g)
    return chosen


def _call(model: torch.nn.Module, x):
    return model(**x) if isinstance(x, dict) else model(x)


def _interleaved_latency(models: list[torch.nn.Module], x, repeats: int, budget_s: float = 60.0) -> list[float]:
    """Median forward time of each model, runs interleaved so that clock drift and load hit all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model.eval()
            _call(model, x)
            _call(model, x)
        while len(times[0]) < repeats and (len(times[0]) < 5 or sum(map(sum, times)) < budget_s):
            for model, bucket in zip(models, times, strict=True):
                start = time.perf_counter()
                _call(model, x)
                bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


# Timing inputs other than (args.batch, *registry shape[1:]): label -> (zoo name, input shape, batch).
# DARTS-14 is an ImageNet network; the registry's 64×64 dummy only keeps tests light, and there its last stages
# are 2×2 maps where PyTorch's dilated 5×5 depthwise kernel runs ~25× slower than the 3×3 one. Both are printed;
# the 224×224 row is the deployment case.
EXTRA_ROWS = {"darts14 @224": ("darts14", (1, 3, 224, 224), 2)}


def _row(label: str, name: str, shape: tuple[int, ...], batch: int, repeats: int) -> str:
    from otov3.zoo import create_supernet

    torch.manual_seed(0)
    model = create_supernet(name)
    x1 = torch.randn(*shape)
    return _measure(label, name, model, x1, torch.randn(batch, *shape[1:]), repeats)


def _measure(label: str, name: str, model: torch.nn.Module, x1, x, repeats: int) -> str:
    """One table row: zero the fixed set, build the sub-network, time both on `x` (MACs on the one-sample `x1`)."""
    oto = OTO(model, x1)
    zero = _zero_set(name, oto)
    with torch.no_grad():
        for g in zero:
            for s in g.slices:
                s.view().zero_()
    subnet = oto.construct_subnet()
    unmerged = oto.construct_subnet(merge_duplicates=False)
    merged_super = copy.deepcopy(oto.space.captured.gm)
    merge_duplicate_ops(merged_super)
    macs_ratio = count_flops(subnet, x1) / count_flops(model, x1)
    t_super, t_sub, t_unmerged, t_merged_super = _interleaved_latency(
        [model, subnet, unmerged, merged_super], x, repeats
    )
    ratio = t_sub / t_super
    shape = next(iter(x.values())).shape if isinstance(x, dict) else x.shape
    return (f"| {label} | {'×'.join(map(str, shape))} | {len(zero)}/{len(oto.groups)} | "
            f"{count_params(model):,} → {count_params(subnet):,} | {macs_ratio:.3f} | {t_super * 1e3:.2f} | "
            f"{t_sub * 1e3:.2f} | {ratio:.3f} | {'yes' if ratio <= macs_ratio + 0.05 else 'NO'} | "
            f"{t_unmerged / t_super:.3f} | {t_sub / t_merged_super:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", help="row labels to time (default: all)")
    parser.add_argument("--hf-size", default="small", choices=sorted(hf_models.SIZES))
    parser.add_argument("--tiny", action="store_true", help="smoke run: one zoo model, tiny HF models, 5 runs")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.batch, args.hf_size = 5, 2, "tiny"
        args.models = args.models or ["demo_supnet"]
    torch.set_num_threads(args.threads)
    from otov3.zoo import get_supernet_spec, list_supernets

    rows = {name: (name, tuple(get_supernet_spec(name).input_shape), args.batch) for name in list_supernets()}
    rows.update(EXTRA_ROWS)
    print(f"{args.threads} thread(s), median of up to {args.repeats} interleaved runs, eval mode\n")
    print("| model | timing input | zero groups | params super → sub | MACs ratio | latency super (ms) "
          "| latency sub (ms) | latency ratio | target met | sub unmerged ÷ super | sub ÷ merged super |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label in args.models or sorted(rows):
        print(_row(label, *rows[label], repeats=args.repeats), flush=True)
    if hf_models.available():
        for (label, model, x1), (_, _, x) in zip(hf_models.hf_cases(args.hf_size, batch=1),
                                                 hf_models.hf_cases(args.hf_size, batch=args.batch), strict=True):
            print(_measure(label, label, model, x1, x, args.repeats), flush=True)


if __name__ == "__main__":
    main()
