"""The demo's outputs for people: the Table-1-shaped table, the group-norm plot, report.md."""

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


def plot_group_norms(history: list[list[float]], names: list[str], redundant: set[str], path: Path, *,
                     warmup: int, deadline: int) -> Path | None:
    """Norm of every GeZIG over the training steps; redundant ones drawn dashed, reaching zero."""
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
    for i, name in enumerate(names):
        series = [h[i] for h in history]
        style = "--" if name in redundant else "-"
        ax.plot(steps, series, style, label=name + (" (redundant)" if name in redundant else ""))
    ax.axvline(warmup, color="grey", linestyle=":", label="end of warm-up")
    ax.axvline(deadline, color="black", linestyle=":", label="redundant groups zero")
    ax.set_xlabel("step")
    ax.set_ylabel("group norm ‖x_g‖")
    ax.set_title("GeZIG norms during H2SPG training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(path: Path, table: str, metrics: dict, graphs: list[Path], plot: Path | None, summary: str) -> None:
    s = metrics["settings"]
    lines = [
        "# otov3 demo: DemoSupNet on Fashion-MNIST",
        "",
        f"{s['train_samples']} training images, {s['test_samples']} test images, {s['epochs']} epochs "
        f"({s['steps']} steps of {s['batch_size']}), width {s['width']}, lr {s['lr']}, seed {s['seed']}, "
        f"device {s['device']}. H2SPG: {s['target_groups']} GeZIGs to remove, warm-up {s['warmup_steps']} steps, "
        f"redundant groups zero by step {s['warmup_steps'] + s['hybrid_steps']}.",
        "",
        table,
        "",
        f"Removed GeZIGs: {', '.join(metrics['removed_groups']) or 'none'}. The sub-network was checked to return "
        f"the trained super-network's outputs; they agree on {metrics['same_predictions_percent']:.2f} % of the "
        "test predictions.",
        "",
    ]
    if plot is not None:
        lines += ["## GeZIG norms during training", "", f"![group norms]({plot.name})", ""]
    svgs = [g for g in graphs if g.suffix == ".svg"]
    if svgs:
        lines += ["## Graphs", ""]
        lines += [f"![{g.stem}]({g.parent.name}/{g.name})" for g in svgs]
        lines.append("")
    lines += ["## Search space", "", "```", summary, "```", ""]
    path.write_text("\n".join(lines))
