"""The demo's outputs for people: the Table-1-shaped table, the group-norm plot, report.md (both modes)."""

from __future__ import annotations

import warnings
from pathlib import Path


def table_markdown(rows: list[tuple[str, int, int, float]]) -> str:
    """Rows of (name, MACs, params, top-1 %), in the shape of the paper's Table 1."""
    lines = ["| Model | FLOPs (M MACs) | # of Params (M) | Top-1 Acc. (%) |", "|---|---:|---:|---:|"]
    base = rows[0]
    for name, macs, params, acc in rows:
        rel = f" ({100 * macs / base[1]:.0f} %)" if base[1] and (name, macs) != base[:2] else ""
        lines.append(f"| {name} | {macs / 1e6:.1f}{rel} | {params / 1e6:.3f} | {acc:.2f} |")
    return "\n".join(lines)


def removed_text(per_node: dict[str, list[int]]) -> str:
    """Pruning mode: "102 of 204 (stem.conv1 12/24, ...)" from node group -> [zero, total] channel groups."""
    zero = sum(z for z, _ in per_node.values())
    total = sum(n for _, n in per_node.values())
    parts = ", ".join(f"{name} {z}/{n}" for name, (z, n) in per_node.items())
    return f"{zero} of {total} ({parts})"


def _node_group_series(history: list[list[float]], names: list[str],
                       redundant: set[str]) -> dict[str, tuple[list[float], list[float] | None]]:
    """Pruning mode: per node group, the norm of its kept channel groups and of its redundant ones over the steps
    (channel groups are named `node:index`; hundreds of single-channel lines would be unreadable)."""
    members: dict[str, tuple[list[int], list[int]]] = {}
    for i, name in enumerate(names):
        kept, gone = members.setdefault(name.rsplit(":", 1)[0], ([], []))
        (gone if name in redundant else kept).append(i)
    def norm(idx: list[int]) -> list[float]:
        return [sum(h[i] ** 2 for i in idx) ** 0.5 for h in history]

    return {node: (norm(kept), norm(gone) if gone else None) for node, (kept, gone) in members.items()}


def plot_group_norms(history: list[list[float]], names: list[str], redundant: set[str], path: Path, *,
                     warmup: int, deadline: int, optimizer: str = "H2SPG", by_node_group: bool = False) -> Path | None:
    """Norm of every GeZIG over the training steps; redundant ones drawn dashed, reaching zero.

    With `by_node_group` (pruning mode) one colour per node group: the norm of its kept channel groups solid, of
    its redundant ones dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed; skipping the group-norm plot (pip install matplotlib)",
                      stacklevel=2)
        return None
    if not history:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = range(1, len(history) + 1)
    if by_node_group:
        for node, (kept, gone) in _node_group_series(history, names, redundant).items():
            (line,) = ax.plot(steps, kept, "-", label=f"{node} (kept)")
            if gone is not None:
                ax.plot(steps, gone, "--", color=line.get_color(), label=f"{node} (redundant)")
    else:
        for i, name in enumerate(names):
            series = [h[i] for h in history]
            style = "--" if name in redundant else "-"
            ax.plot(steps, series, style, label=name + (" (redundant)" if name in redundant else ""))
    ax.axvline(warmup, color="grey", linestyle=":", label="end of warm-up")
    ax.axvline(deadline, color="black", linestyle=":", label="redundant groups zero")
    ax.set_xlabel("step")
    ax.set_ylabel("norm of the node group's channels" if by_node_group else "group norm ‖x_g‖")
    what = "Channel-group norms (per node group)" if by_node_group else "GeZIG norms"
    ax.set_title(f"{what} during {optimizer} training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plan_text(s: dict, metrics: dict, deadline: int) -> str:
    """What the run set out to remove, in words (counts or a MACs budget, per mode)."""
    budget = f"at most {100 * s['target_macs']:g} % of the MACs" if s.get("target_macs") is not None else None
    tail = f", warm-up {s['warmup_steps']} steps, redundant groups zero by step {deadline}."
    mode = s.get("mode", "erase")
    if mode == "prune":
        what = budget or f"{100 * s['target_sparsity']:g} % of the {metrics['channel_groups']} channel groups"
        return f"{s['optimizer'].upper()} (pruning mode): channel groups removed down to {what}{tail}" if budget \
            else f"{s['optimizer'].upper()} (pruning mode): {what} to remove{tail}"
    if mode == "both":
        slim = budget or f"{100 * s['target_sparsity']:g} % of the remaining channel groups"
        return f"H2SPG (both modes): {s['target_groups']} GeZIG(s) to remove, then channels slimmed ({slim}){tail}"
    return f"H2SPG: GeZIGs removed down to {budget}{tail}" if budget else \
        f"H2SPG: {s['target_groups']} GeZIGs to remove{tail}"


def write_report(path: Path, table: str, metrics: dict, graphs: list[Path], plot: Path | None, summary: str) -> None:
    s = metrics["settings"]
    mode = s.get("mode", "erase")
    deadline = s["warmup_steps"] + s["hybrid_steps"]
    plan = _plan_text(s, metrics, deadline)
    if mode == "prune":
        title = "# otov3 demo: DemoSupNet on Fashion-MNIST, pruning mode (channels)"
        removed = f"Removed channel groups: {removed_text(metrics['removed_per_node_group'])}"
        plot_heading = "## Channel-group norms during training (per node group)"
    elif mode == "both":
        title = "# otov3 demo: DemoSupNet on Fashion-MNIST, both modes (operations and channels)"
        removed = (f"Removed GeZIGs: {', '.join(metrics['removed_gezigs']) or 'none'}; slimmed channel groups: "
                   f"{removed_text(metrics['removed_per_node_group'])}. Removal saved "
                   f"{metrics['macs_saved_by_removal'] / 1e6:.1f} M MACs and {metrics['params_saved_by_removal']:,} "
                   f"parameters, slimming {metrics['macs_saved_by_slimming'] / 1e6:.1f} M MACs and "
                   f"{metrics['params_saved_by_slimming']:,} parameters")
        plot_heading = "## Group norms during training (GeZIGs, and channel groups per node group)"
    else:
        title = "# otov3 demo: DemoSupNet on Fashion-MNIST"
        removed = f"Removed GeZIGs: {', '.join(metrics['removed_groups']) or 'none'}"
        plot_heading = "## GeZIG norms during training"
    lines = [
        title,
        "",
        f"{s['train_samples']} training images, {s['test_samples']} test images, {s['epochs']} epochs "
        f"({s['steps']} steps of {s['batch_size']}), width {s['width']}, lr {s['lr']}, seed {s['seed']}, "
        f"device {s['device']}. {plan}",
        "",
        table,
        "",
        f"{removed}. The sub-network was checked to return "
        f"the trained super-network's outputs; they agree on {metrics['same_predictions_percent']:.2f} % of the "
        "test predictions.",
        "",
    ]
    if plot is not None:
        lines += [plot_heading, "", f"![group norms]({plot.name})", ""]
    svgs = [g for g in graphs if g.suffix == ".svg"]
    if svgs:
        lines += ["## Graphs", ""]
        lines += [f"![{g.stem}]({g.parent.name}/{g.name})" for g in svgs]
        lines.append("")
    lines += ["## Search space", "", "```", summary, "```", ""]
    path.write_text("\n".join(lines))
