"""`otov3 search MODULE:CLASS`: build any model's search space, print it, draw it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

from otov3 import OTO
from otov3.errors import OTOError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="build and print the search space of any model class",
        description="Import MODULE:CLASS from the Python path, build it with no arguments, trace it on a random "
        "input of --input-shape, and print every GeZIG and every kept segment with its reason.",
    )
    p.add_argument("target", help="model class as MODULE:CLASS, e.g. otov3.zoo.demo_supnet:DemoSupNet")
    p.add_argument("--input-shape", help="dummy input shape, e.g. 1,3,32,32 (zoo models know their own)")
    p.add_argument("--out", type=Path, help="write graph pictures (DOT, SVG) and summary.txt here")
    p.set_defaults(run=run)


def _import_class(target: str):
    if ":" not in target:
        raise OTOError(f"expected MODULE:CLASS, got {target!r} (e.g. otov3.zoo.demo_supnet:DemoSupNet)")
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise OTOError(f"cannot import module {module_name!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise OTOError(f"module {module_name!r} has no attribute {attr!r}") from None


def _zoo_input_shape(model: torch.nn.Module) -> tuple[int, ...] | None:
    """The registered input shape of a zoo model built with its defaults (matched by class and size)."""
    from otov3.metrics import count_params
    from otov3.zoo import get_supernet_spec, list_supernets

    n_params = count_params(model)
    for name in list_supernets():
        spec = get_supernet_spec(name)
        returns = getattr(spec.factory, "__annotations__", {}).get("return")
        same_class = spec.factory is type(model) or returns in (type(model), type(model).__name__)
        if same_class and spec.params == n_params:
            return spec.input_shape
    return None


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise OTOError(f"--input-shape must be comma-separated integers, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise OTOError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def run(args: argparse.Namespace) -> int:
    factory = _import_class(args.target)
    try:
        model = factory()
    except TypeError as err:
        raise OTOError(f"{args.target} cannot be built without arguments: {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise OTOError(f"{args.target}() returned {type(model).__name__}, not a torch.nn.Module")
    shape = _parse_shape(args.input_shape) if args.input_shape else _zoo_input_shape(model)
    if shape is None:
        raise OTOError(f"{args.target} is not a zoo model: give --input-shape, e.g. --input-shape 1,3,32,32")
    oto = OTO(model, torch.randn(*shape))
    text = oto.summary()
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.txt").write_text(text + "\n")
        files = oto.visualize(args.out)
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 0
