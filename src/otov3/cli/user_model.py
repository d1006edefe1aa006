"""The user's side of `otov3 search`: import MODULE:CLASS, build it with --kwargs, make the dummy input.

Everything that can go wrong here is the user's code or arguments, so every failure becomes an `OTOError` whose
message names the cause in one line (the CLI prints it as ``otov3: error: ...`` with exit status 2).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import torch

from otov3.errors import OTOError

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (tracebacks and multi-line tracer output stay out of the CLI line)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def import_class(target: str) -> Any:
    """MODULE:CLASS from the Python path (the current folder included)."""
    if ":" not in target:
        raise OTOError(f"expected MODULE:CLASS, got {target!r} (e.g. otov3.zoo.demo_supnet:DemoSupNet)")
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise OTOError(f"cannot import module {module_name!r}: {err}") from err
    except SyntaxError as err:
        raise OTOError(f"module {module_name!r} has a syntax error: {err.msg} ({err.filename}, line {err.lineno})"
                       ) from err
    except Exception as err:  # the module's own code raised while importing
        raise OTOError(f"importing module {module_name!r} raised {first_line(err)}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise OTOError(f"module {module_name!r} has no attribute {attr!r}") from None


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """--kwargs: a JSON object of constructor arguments, e.g. '{"width": 0.5}'."""
    if text is None:
        return {}
    example = "--kwargs must be a JSON object such as '{\"width\": 0.5}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise OTOError(f"{example}, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise OTOError(f"{example}, got {type(value).__name__}")
    return value


def build_model(factory: Any, target: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``factory(**kwargs)``, which must return an nn.Module."""
    call = f"{target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if not callable(factory):
        raise OTOError(f"{target} is a {type(factory).__name__}, not a class or function")
    try:
        model = factory(**kwargs)
    except TypeError as err:
        hint = "" if kwargs else "; pass constructor arguments with --kwargs '{\"name\": value}'"
        raise OTOError(f"{call} cannot be built: {first_line(err)}{hint}") from err
    except Exception as err:
        raise OTOError(f"{call} raised {first_line(err)}") from err
    if not isinstance(model, torch.nn.Module):
        raise OTOError(f"{call} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise OTOError(f"--input-shape must be comma-separated integers, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise OTOError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def dummy_input(shape: tuple[int, ...], dtype_name: str | None, range_text: str | None) -> torch.Tensor:
    """A random tensor: normal for floats (or uniform in --input-range), integers in [LOW, HIGH) for token ids."""
    name = dtype_name or "float32"
    if name not in DTYPES:
        raise OTOError(f"--input-dtype {name!r} is unknown; choose one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    bounds = _parse_range(range_text) if range_text is not None else None
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        if bounds is None:
            return torch.randn(shape, generator=gen).to(dtype)
        low, high = bounds
        return (torch.rand(shape, generator=gen) * (high - low) + low).to(dtype)
    if bounds is None:
        raise OTOError(f"--input-dtype {name} needs --input-range LOW,HIGH (e.g. 0,VOCAB for token ids)")
    low, high = bounds
    if low != int(low) or high != int(high):
        raise OTOError(f"--input-range for {name} must be integers, got {range_text!r}")
    info = torch.iinfo(dtype)
    if low < info.min or high - 1 > info.max:
        raise OTOError(f"--input-range {range_text!r} does not fit {name} ([{info.min}, {info.max}])")
    return torch.randint(int(low), int(high), shape, generator=gen, dtype=dtype)


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(t) for t in text.split(","))
    except ValueError:
        raise OTOError(f"--input-range must be LOW,HIGH (two numbers), got {text!r}") from None
    if not low < high:
        raise OTOError(f"--input-range needs LOW < HIGH, got {text!r}")
    return low, high
