"""The paper's Table 2 shape: the zoo's SuperResNet searched at 1.0 M and 2.0 M parameters (issue 13).

Run: ``.venv/bin/python benchmarks/super_resnet_budget.py [--train-samples N] [--epochs E] [--threads T]``.

The paper trains on CIFAR-10, which this machine does not have; the search runs on the real Fashion-MNIST
(``/usr/share/datasets/fashion-mnist``, 1×28×28, so the stem takes one channel) on a short schedule. Every row
trains the same SuperResNet (3.55 M parameters) from the same seed with the same schedule (SGD momentum 0.9, cosine
lr, warm-up 10 % of the steps, every redundant group zero by 40 %), then builds the sub-network (verified exact)
and evaluates it on the 10 000 test images:

- erasing mode, ``oto.h2spg(target_params=1.0e6)`` and ``2.0e6``: whole blocks removed until the predicted
  sub-network fits;
- both modes, ``oto.h2spg(target_group_sparsity=K, target_params=...)``: K blocks removed, then channels of the
  rest until it fits (so the budget is met closely).

Prints a markdown table: params, MACs (one sample), top-1 of the super-network and of the sub-network, the
budget and the predicted size.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from otov3 import OTO
from otov3.cli.training import evaluate, train
from otov3.data import load_fashion_mnist
from otov3.zoo import SuperResNet


def _run(mode: str, budget: float, k: int | None, x, y, xt, yt, args) -> dict:
    torch.manual_seed(args.seed)
    model = SuperResNet(in_channels=1)
    oto = OTO(model, torch.zeros(1, 1, 28, 28), mode=mode)
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    warmup = max(1, round(0.1 * steps))
    hybrid = max(1, round(0.4 * steps) - warmup)
    extra = {"target_group_sparsity": k} if k is not None else {}
    opt = oto.h2spg(lr=args.lr, momentum=0.9, weight_decay=1e-4, target_params=budget, warmup_steps=warmup,
                    hybrid_steps=hybrid, **extra)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    start = time.perf_counter()
    train(model, opt, x, y, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, scheduler=sched,
          desc=f"{mode} @ {budget / 1e6:.1f}M")
    seconds = time.perf_counter() - start
    super_acc, _ = evaluate(model, xt, yt)
    subnet = oto.construct_subnet()
    sub_acc, _ = evaluate(subnet, xt, yt)
    report = oto.compression_report(subnet)
    return {"mode": mode, "k": k, "budget": budget, "report": report, "super": super_acc, "sub": sub_acc,
            "seconds": seconds, "removed": sum(1 for g in opt.redundant_groups if g.is_gezig),
            "slimmed": sum(1 for g in opt.redundant_groups if not g.is_gezig)}  # channels inside removed
    # blocks are zero too, but they go with their block: only the slimmed ones of the kept blocks count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=6000)
    parser.add_argument("--test-samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--both", default="2.0:2,1.0:4,1.0:2",
                        help="both-modes rows as BUDGET_M:K (K blocks removed before slimming), comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_fashion_mnist(None, split="train")
    xt, yt = load_fashion_mnist(None, split="test")
    x, xt = (x - 0.2860) / 0.3530, (xt - 0.2860) / 0.3530
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.train_samples]
    x, y = x[idx], y[idx]
    xt, yt = xt[:args.test_samples], yt[:args.test_samples]
    rows = [_run("erase", b, None, x, y, xt, yt, args) for b in (2.0e6, 1.0e6)]
    for item in args.both.split(","):
        budget, k = item.split(":")
        rows.append(_run("both", float(budget) * 1e6, int(k), x, y, xt, yt, args))
    print("| search | budget (params) | removed blocks | slimmed channel groups | params | MACs (M) | predicted "
          "params | super top-1 | sub top-1 | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rep = r["report"]
        search = "erasing, H2SPG" if r["mode"] == "erase" else f"both modes, H2SPG (K={r['k']})"
        print(f"| {search} | {r['budget'] / 1e6:.1f} M | {r['removed']} | {r['slimmed']} | "
              f"{rep['params_after']:,} | {rep['macs_after'] / 1e6:.1f} | {rep['predicted_params']:,} | "
              f"{r['super']:.2f} | {r['sub']:.2f} | {r['seconds']:.0f} |")
    first = rows[0]["report"]
    print(f"\nSuper-network: {first['params_before']:,} params, {first['macs_before'] / 1e6:.1f} M MACs; "
          f"{len(x)} training / {len(xt)} test images, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"{args.threads} thread(s).")


if __name__ == "__main__":
    main()
