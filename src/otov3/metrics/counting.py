"""Parameter and MAC counting with the paper's conventions (spec §7).

"# of Params" is the sum of ``numel`` over ``model.named_parameters()``: trainable and frozen parameters, shared
parameters once, buffers (BN running statistics) never. "FLOPs" in the paper's tables are multiply-accumulates
(MACs) of Conv, ConvTranspose and Linear only; BN, activations, pooling, additions and resizes are free.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from otov3.capture.fx_capture import preserved_modes

DummyInput = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | Mapping[str, torch.Tensor]


def count_params(model: nn.Module) -> int:
    """Count the scalars of every parameter of `model`, each shared parameter once.

    Args:
        model: any module.

    Returns:
        Σ numel over ``model.named_parameters()`` (which already drops duplicates of a shared parameter),
        frozen parameters included, buffers excluded (spec §7).
    """
    return sum(p.numel() for _, p in model.named_parameters())


def count_flops(model: nn.Module, dummy_input: DummyInput) -> int:
    """Count the multiply-accumulates (MACs) of one forward pass of `model` on `dummy_input`.

    The pass runs in eval mode under ``torch.no_grad()`` inside ``torch.utils.flop_counter.FlopCounterMode``,
    which reports FLOPs = 2 × MACs for convolutions and matrix products (Conv ``Cin·Cout·kh·kw·Hout·Wout/groups``,
    Linear ``in·out``) and ignores BN, activations, pooling, additions and resizes — the MAC convention of the
    paper's "FLOPs (M)" columns (spec §7). Every submodule's own training flag is restored afterwards (a frozen
    BN stays in eval mode inside a training model), also when the forward pass raises.

    The count is for the whole dummy input; callers who want the paper's per-sample figure pass batch size 1.

    Args:
        model: the network to measure.
        dummy_input: one tensor (``model(x)``), a tuple or list of tensors (``model(*xs)``), or a mapping of
            keyword tensors (``model(**kw)``).

    Returns:
        Total FLOPs reported by the counter, halved: the MACs of the pass.
    """
    counter = FlopCounterMode(display=False)
    with preserved_modes(model), torch.no_grad(), counter:
        if isinstance(dummy_input, torch.Tensor):
            model(dummy_input)
        elif isinstance(dummy_input, Mapping):
            model(**dummy_input)
        else:
            model(*dummy_input)
    return counter.get_total_flops() // 2
