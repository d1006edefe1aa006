"""`otov3 demo`: the paper's DemoSupNet experiment on real Fashion-MNIST, end to end (Table 1 shape).

Trains a plain-SGD baseline and an H2SPG run of the same network with the same budget, constructs the
sub-network, checks it is exact, evaluates all on the test set and writes a report. With `--mode prune` the same
run prunes channels instead of erasing operations: HESSO (or DHSPG, `--optimizer`) zeroes `--target-sparsity` of
DemoSupNet's channel groups and the sub-network keeps every operation with fewer channels. `--mode both` does both
in one run: H2SPG removes `--target-groups` operations and slims the others by `--target-sparsity`. `--target-macs F`
replaces the counts in every mode: the sub-network has at most F of the super-network's MACs (in both modes the
`--target-groups` operations go first, channels fill the rest of the budget).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from otov3 import OTO
from otov3.cli.report import plot_group_norms, removed_text, table_markdown, write_report
from otov3.cli.training import evaluate, train
from otov3.data import load_fashion_mnist
from otov3.errors import OTOError
from otov3.metrics import count_flops, count_params
from otov3.zoo.demo_supnet import DemoSupNet

# Default budget: about 10 minutes on 2 CPU cores (stated in the README and the report).
QUICK = dict(epochs=2, train_samples=12_000, test_samples=10_000, width=0.5)
FULL = dict(epochs=30, train_samples=60_000, test_samples=10_000, width=1.0)
PRUNE_OPTIMIZERS = ("hesso", "dhspg")
OPTIMIZER_NAMES = {"h2spg": "H2SPG", "hesso": "HESSO", "dhspg": "DHSPG"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train DemoSupNet on Fashion-MNIST with H2SPG (or prune its channels: --mode prune) and build its "
        "sub-network (the main job)",
        description=__doc__,
    )
    p.add_argument("--data", type=Path, default=None,
                   help="folder with the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (report, sub-network, plots)")
    p.add_argument("--full", action="store_true", help="full schedule: all 60k images, 30 epochs, full width")
    p.add_argument("--epochs", type=int, help="epochs (default 2, or 30 with --full)")
    p.add_argument("--train-samples", type=int, help="training images used (default 12000, 60000 with --full)")
    p.add_argument("--test-samples", type=int, help="test images used (default all 10000)")
    p.add_argument("--width", type=float, help="DemoSupNet width multiplier (default 0.5, 1.0 with --full)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mode", choices=("erase", "prune", "both"), default="erase",
                   help="erase: remove whole operations (GeZIGs) with H2SPG (default); prune: remove channels; "
                   "both: remove operations and slim the others in one run")
    p.add_argument("--target-groups", type=int, default=None,
                   help="erasing mode: GeZIGs to remove (default 3; the paper: 3 of 5); both modes: default 1")
    p.add_argument("--optimizer", choices=PRUNE_OPTIMIZERS, default=None,
                   help="pruning mode: the optimizer that zeroes the channel groups (default hesso)")
    p.add_argument("--target-sparsity", type=float, default=None,
                   help="pruning mode: fraction of the channel groups to remove, in (0, 1) (default 0.5; both "
                   "modes: of the channel groups outside the removed operations, default 0.3)")
    p.add_argument("--target-macs", type=float, default=None,
                   help="a MACs budget instead of the counts: the sub-network keeps at most this fraction of the "
                   "super-network's MACs, in (0, 1)")
    p.add_argument("--warmup-fraction", type=float, default=0.10,
                   help="share of the steps spent averaging redundancy scores before the selection (default 0.10)")
    p.add_argument("--zero-by", type=float, default=0.30,
                   help="share of the steps by which every redundant group is exactly zero (default 0.30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--baseline-from", type=Path, help="reuse a baseline saved by an earlier run (baseline.pt)")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-SGD comparison row")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> dict:
    base = dict(FULL if args.full else QUICK)
    for key in ("epochs", "train_samples", "test_samples", "width"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if base["epochs"] < 1 or base["train_samples"] < args.batch_size:
        raise OTOError("need at least 1 epoch and at least one batch of training images")
    if not 0.0 <= args.warmup_fraction < args.zero_by <= 1.0:
        raise OTOError(f"need 0 <= --warmup-fraction < --zero-by <= 1, got {args.warmup_fraction} and {args.zero_by}")
    return base


def _choice(args: argparse.Namespace) -> tuple[str, str, dict]:
    """(mode, optimizer, target arguments): erasing mode removes `--target-groups` GeZIGs with H2SPG; pruning mode
    removes `--target-sparsity` of the channel groups with `--optimizer`; both modes take both with H2SPG.
    `--target-macs` replaces the count of the mode (both modes: the channel share). Flags of another mode and
    two targets for one thing are refused."""
    budget = args.target_macs
    if budget is not None and not 0.0 < budget < 1.0:
        raise OTOError(f"--target-macs must be a fraction in (0, 1) of the super-network's MACs, got {budget}")
    if args.mode != "prune" and args.optimizer is not None:
        raise OTOError("--optimizer applies to --mode prune (channel groups); erasing and both modes train with H2SPG")
    if args.mode == "erase" and args.target_sparsity is not None:
        raise OTOError("--target-sparsity applies to --mode prune or both (channel groups); erasing mode takes "
                       "--target-groups")
    if args.mode == "prune" and args.target_groups is not None:
        raise OTOError("--target-groups applies to --mode erase or both (whole operations); pruning mode takes "
                       "--target-sparsity F, the fraction of the channel groups to remove")
    if args.target_groups is not None and args.target_groups < 1:
        raise OTOError(f"--target-groups must be at least 1, got {args.target_groups}")
    if args.target_sparsity is not None and not 0.0 < args.target_sparsity < 1.0:
        raise OTOError(f"--target-sparsity must be a fraction in (0, 1), got {args.target_sparsity}")
    counted = args.target_groups if args.mode == "erase" else args.target_sparsity
    if budget is not None and counted is not None:
        flag = "--target-groups" if args.mode == "erase" else "--target-sparsity"
        raise OTOError(f"{flag} and --target-macs both decide how much is removed; pass one")
    if args.mode == "erase":
        return "erase", "h2spg", ({"target_macs": budget} if budget is not None else
                                  {"target_group_sparsity": 3 if counted is None else counted})
    if args.mode == "prune":
        return "prune", args.optimizer or "hesso", ({"target_macs": budget} if budget is not None else
                                                    {"target_group_sparsity": 0.5 if counted is None else counted})
    k = 1 if args.target_groups is None else args.target_groups
    return "both", "h2spg", ({"target_group_sparsity": k, "target_macs": budget} if budget is not None else
                             {"target_group_sparsity": k, "target_channel_sparsity": 0.3 if counted is None
                              else counted})


def _target_text(mode: str, label: str, targets: dict) -> str:
    """What the run removes, in words."""
    budget = f"at most {100 * targets['target_macs']:g} % of the MACs" if "target_macs" in targets else None
    if mode == "erase":
        return f"{label} removes " + (f"GeZIGs down to {budget}" if budget else
                                      f"{targets['target_group_sparsity']} GeZIGs")
    if mode == "prune":
        return f"Pruning mode: {label} removes " + (f"channel groups down to {budget}" if budget else
                                                    f"{100 * targets['target_group_sparsity']:g} % of the "
                                                    "channel groups")
    slim = budget or f"{100 * targets['target_channel_sparsity']:g} % of the remaining channel groups"
    return f"Both modes: {label} removes {targets['target_group_sparsity']} GeZIG(s) and slims the rest ({slim})"


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.2860) / 0.3530


def _schedule(total_steps: int, warmup_fraction: float, zero_by: float) -> tuple[int, int]:
    """Warm-up steps, then hybrid steps until every redundant group is zero (spec §5.7: finish the hybrid phase
    well before the end so the remaining network re-trains at a useful learning rate)."""
    warmup = max(1, round(warmup_fraction * total_steps))
    hybrid = max(1, round(zero_by * total_steps) - warmup)
    return warmup, hybrid


def _sgd_baseline(args, cfg, x, y, steps, device) -> tuple[torch.nn.Module, float]:
    """The plain-SGD comparison row: same network, budget, schedule and seed; returns it and its train seconds."""
    torch.manual_seed(args.seed)
    model = DemoSupNet(width=cfg["width"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    start = time.perf_counter()
    train(model, opt, x, y, epochs=cfg["epochs"], batch_size=args.batch_size, seed=args.seed, device=device,
          scheduler=sched, desc="baseline SGD")
    return model, time.perf_counter() - start


def _removed_per_node_group(groups) -> dict[str, list[int]]:
    """Pruning mode: node group -> [zero channel groups, channel groups] (channel groups are named `node:index`)."""
    out: dict[str, list[int]] = {}
    for g in groups:
        counts = out.setdefault(g.name.rsplit(":", 1)[0], [0, 0])
        counts[0] += int(g.is_zero())
        counts[1] += 1
    return out


def run(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    mode, opt_name, targets = _choice(args)
    label = OPTIMIZER_NAMES[opt_name]
    pruning = mode == "prune"
    channels = mode != "erase"
    device = torch.device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_fashion_mnist(args.data, split="train")
    x_test, y_test = load_fashion_mnist(args.data, split="test")
    x_train, y_train = _subset(_normalise(x_train), y_train, cfg["train_samples"], args.seed)
    x_test, y_test = _subset(_normalise(x_test), y_test, cfg["test_samples"], args.seed + 1)
    steps = cfg["epochs"] * math.ceil(len(x_train) / args.batch_size)
    warmup, hybrid = _schedule(steps, args.warmup_fraction, args.zero_by)
    print(f"{_target_text(mode, label, targets)}. DemoSupNet(width={cfg['width']}) on Fashion-MNIST: "
          f"{len(x_train)} training / {len(x_test)} test "
          f"images, {cfg['epochs']} epochs = {steps} steps of {args.batch_size}; {label} warm-up {warmup} steps, "
          f"redundant groups zero by step {warmup + hybrid}; device {device}.")

    dummy = torch.zeros(1, 1, 28, 28, device=device)
    rows = []
    baseline_acc = baseline_seconds = None
    if args.baseline_from is not None:
        saved = torch.load(args.baseline_from, weights_only=True)
        baseline = DemoSupNet(width=saved["width"]).to(device)
        baseline.load_state_dict(saved["state_dict"])
    elif not args.no_baseline:
        baseline, baseline_seconds = _sgd_baseline(args, cfg, x_train, y_train, steps, device)
        torch.save({"state_dict": baseline.state_dict(), "width": cfg["width"]}, out / "baseline.pt")
    else:
        baseline = None
    if baseline is not None:
        baseline_acc, _ = evaluate(baseline, x_test, y_test, device=device)
        rows.append(("DemoSupNet baseline (SGD)", count_flops(baseline, dummy), count_params(baseline), baseline_acc))

    torch.manual_seed(args.seed)
    model = DemoSupNet(width=cfg["width"]).to(device)
    oto = OTO(model, dummy, mode=mode)
    print(oto.summary())
    make = getattr(oto, opt_name)
    optimizer = make(variant="sgd", lr=args.lr, momentum=0.9, weight_decay=1e-4, warmup_steps=warmup,
                     hybrid_steps=hybrid, **targets)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history: list[list[float]] = []

    def on_step(step: int) -> dict:
        history.append([g.norm() for g in oto.groups])  # metrics() would compute these norms a second time
        return {"phase": optimizer.phase, "zero": f"{len(optimizer.zero_groups)}/{len(oto.groups)}"}

    start = time.perf_counter()
    train(model, optimizer, x_train, y_train, epochs=cfg["epochs"], batch_size=args.batch_size, seed=args.seed,
          device=device, scheduler=scheduler, desc=f"OTOv3 {label}" + ("" if mode == "erase" else f" ({mode})"),
          on_step=on_step)
    train_seconds = time.perf_counter() - start

    super_acc, super_pred = evaluate(model, x_test, y_test, device=device)
    subnet = oto.construct_subnet(out / "subnet")  # raises unless the outputs match the super-network's
    sub_acc, sub_pred = evaluate(subnet, x_test, y_test, device=device)
    same_predictions = round(float((super_pred == sub_pred).double().mean() * 100), 2)
    report = oto.compression_report(subnet)
    tag = {"erase": "", "prune": f" (pruning mode, {label})", "both": " (both modes)"}[mode]
    rows.append((f"DemoSupNet OTOv3 super-network (trained{tag.replace(' (', ', ').rstrip(')')})",
                 report["macs_before"], report["params_before"], super_acc))
    rows.append((f"DemoSupNet OTOv3 sub-network{tag}", report["macs_after"], report["params_after"], sub_acc))

    table = table_markdown(rows)
    print("\n" + table)
    removed = [g.name for g in oto.zero_groups()]
    per_node = _removed_per_node_group([g for g in oto.groups if not g.is_gezig]) if channels else {}
    gone_gezigs = [g.name for g in oto.zero_groups() if g.is_gezig]
    if pruning:
        gone = f"Removed channel groups: {removed_text(per_node)}"
    elif channels:
        gone = f"Removed GeZIGs: {', '.join(gone_gezigs) or 'none'}; slimmed: {removed_text(per_node)}"
    else:
        gone = f"Removed GeZIGs: {', '.join(removed) or 'none'}"
    print(f"\n{gone}; sub-network = "
          f"{100 * report['macs_ratio']:.1f} % of the MACs and {100 * report['params_ratio']:.1f} % of the "
          f"parameters; super- and sub-network agree on {same_predictions:.2f} % of test predictions.")

    names = [g.name for g in oto.groups]
    redundant = {g.name for g in getattr(optimizer, "redundant_groups", [])}
    graphs = oto.visualize(out / "graphs")
    plot = plot_group_norms(history, names, redundant, out / "group_norms.png", warmup=warmup,
                            deadline=warmup + hybrid, optimizer=label, by_node_group=channels)
    settings = {**cfg, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "steps": steps,
                "warmup_steps": warmup, "hybrid_steps": hybrid}
    friendly = {"target_group_sparsity": "target_sparsity" if pruning else "target_groups",
                "target_channel_sparsity": "target_sparsity", "target_macs": "target_macs"}
    settings.update(mode=mode, optimizer=opt_name, **{friendly[k]: v for k, v in targets.items()})
    settings["device"] = str(device)
    metrics = {
        "settings": settings,
        "baseline_top1": baseline_acc,
        "super_top1": super_acc,
        "subnet_top1": sub_acc,
        "same_predictions_percent": same_predictions,
        "removed_groups": removed,
        "redundant_groups": sorted(redundant),
    }
    if channels:
        metrics.update(channel_groups=sum(1 for g in oto.groups if not g.is_gezig), removed_per_node_group=per_node)
    if mode == "both":
        metrics.update(removed_gezigs=gone_gezigs)
    metrics.update({
        "baseline_train_seconds": baseline_seconds,
        f"{opt_name}_train_seconds": train_seconds,
        **report,
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out / "report.md", table, metrics, graphs, plot, oto.summary())
    print(f"\nReport: {out / 'report.md'}")
    return 0
