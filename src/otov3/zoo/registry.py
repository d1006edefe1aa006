"""The registry of the paper's super-networks, looked up by name (timm-style `@register_supernet`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from otov3.errors import OTOError


@dataclass(frozen=True)
class SupernetSpec:
    """One registered super-network.

    Attributes:
        name: registry key.
        factory: builds the model; keyword arguments override its defaults.
        input_shape: shape of the default dummy input, batch size 1 included (e.g. ``(1, 1, 28, 28)``).
        num_classes: number of outputs of the default model.
        params: ``count_params`` of the default model (the figure its docstring states).
        macs: ``count_flops`` of the default model on a dummy input of `input_shape`.
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    params: int
    macs: int


_REGISTRY: dict[str, SupernetSpec] = {}


def register_supernet(
    name: str, *, input_shape: tuple[int, ...], num_classes: int, params: int, macs: int
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Return a decorator that registers a model factory under `name` and hands the factory back unchanged.

    Args:
        name: registry key; must be new.
        input_shape: default dummy input shape, batch size 1 included.
        num_classes: number of outputs of the default model.
        params: parameter count of the default model.
        macs: MACs of the default model at `input_shape`.

    Raises:
        OTOError: `name` is already registered.
    """

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise OTOError(
                f"super-network {name!r} is already registered (by {_REGISTRY[name].factory.__qualname__}); "
                "choose another name"
            )
        _REGISTRY[name] = SupernetSpec(name, factory, tuple(input_shape), num_classes, params, macs)
        return factory

    return decorate


def get_supernet_spec(name: str) -> SupernetSpec:
    """Return the registry entry for `name`.

    Raises:
        OTOError: `name` is not registered; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OTOError(f"unknown super-network {name!r}; registered: {', '.join(list_supernets())}") from None


def create_supernet(name: str, **kwargs: Any) -> nn.Module:
    """Build the super-network registered under `name`; `kwargs` override the factory's defaults.

    Raises:
        OTOError: `name` is not registered.
    """
    return get_supernet_spec(name).factory(**kwargs)


def list_supernets() -> list[str]:
    """Return the registered names, sorted."""
    return sorted(_REGISTRY)
