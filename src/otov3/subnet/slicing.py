"""Cut channels out of a module in place (the module is a private copy owned by the sub-network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from otov3.errors import ConstructionError


def _take(t: torch.Tensor | None, index: torch.Tensor, dim: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().index_select(dim, index).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if old is None or value is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def slice_output_channels(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only channels `keep` of a per-channel module (BN, InstanceNorm, per-channel GroupNorm)."""
    index = torch.tensor(list(keep), dtype=torch.long)
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _set_param(module, name, _take(getattr(module, name, None), index, 0))
        module.num_features = len(keep)
        return
    if isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels:
        for name in ("weight", "bias"):
            _set_param(module, name, _take(getattr(module, name, None), index, 0))
        module.num_groups = module.num_channels = len(keep)
        return
    if not any(True for _ in module.parameters(recurse=False)) and not any(True for _ in module.buffers(False)):
        return  # element-wise, pooling, resizing: nothing to cut
    raise ConstructionError(f"otov3 does not know how to cut channels of {type(module).__name__}")


def slice_input_channels(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only input channels/features `keep` of a stem (Conv with groups == 1, ConvTranspose, Linear)."""
    index = torch.tensor(list(keep), dtype=torch.long)
    if isinstance(module, nn.Linear):
        _set_param(module, "weight", _take(module.weight, index, 1))
        module.in_features = len(keep)
        return
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups == 1:
        _set_param(module, "weight", _take(module.weight, index, 0))
        module.in_channels = len(keep)
        return
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
        _set_param(module, "weight", _take(module.weight, index, 1))
        module.in_channels = len(keep)
        return
    raise ConstructionError(f"otov3 does not know how to cut input channels of {type(module).__name__}")
