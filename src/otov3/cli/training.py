"""Plain training and evaluation loops for the CLI (tensors in memory, progress bars with tqdm)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None):
    """Shuffled mini-batches when a generator is given, in order otherwise."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
             device: torch.device | str = "cpu") -> tuple[float, torch.Tensor]:
    """Top-1 accuracy in percent and the predicted labels, in eval mode (training flag restored)."""
    was_training = model.training
    model.eval()
    preds = []
    for xb, _ in batches(x, y, batch_size, None):
        preds.append(model(xb.to(device)).argmax(1).cpu())
    model.train(was_training)
    pred = torch.cat(preds)
    return round(float((pred == y).double().mean() * 100), 2), pred


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    desc: str = "train",
    on_step: Callable[[int], dict[str, float] | None] | None = None,
) -> list[float]:
    """SGD-style loop with cross-entropy; `on_step(step)` may return extra figures for the progress bar."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    losses: list[float] = []
    model.train()
    step = 0
    with tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step", dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            correct = seen = 0
            for xb, yb in batches(x, y, batch_size, generator):
                xb, yb = xb.to(device), yb.to(device)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                step += 1
                losses.append(loss.item())
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                extra = on_step(step) if on_step is not None else None
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}", acc=f"{100 * correct / seen:.1f}",
                                **{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in (extra or {}).items()})
                bar.update()
    return losses
