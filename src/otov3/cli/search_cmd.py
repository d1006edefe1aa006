"""`otov3 search MODULE:CLASS`: build any model's search space, print it, draw it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from otov3 import OTO
from otov3.cli.user_model import DTYPES, build_model, dummy_input, first_line, import_class, parse_kwargs, parse_shape
from otov3.errors import OTOError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="build and print the search space of any model class",
        description="Import MODULE:CLASS from the Python path, build it (with --kwargs), trace it on a random "
        "input of --input-shape and --input-dtype, and print every GeZIG and every kept segment with its reason.",
    )
    p.add_argument("target", help="model class as MODULE:CLASS, e.g. otov3.zoo.demo_supnet:DemoSupNet")
    p.add_argument("--input-shape", help="dummy input shape, e.g. 1,3,32,32 (zoo models know their own)")
    p.add_argument("--input-dtype", help=f"dummy input dtype (default float32): {', '.join(DTYPES)}")
    p.add_argument("--input-range", metavar="LOW,HIGH",
                   help="values of the dummy input: integers in [LOW, HIGH) for integer dtypes (token ids: "
                   "0,VOCAB; required there), uniform in [LOW, HIGH) for floats (default: normal)")
    p.add_argument("--kwargs", metavar="JSON", help="constructor arguments as a JSON object, e.g. '{\"width\": 0.5}'")
    p.add_argument("--out", type=Path, help="write graph pictures (DOT, SVG) and summary.txt here")
    p.add_argument("--capture", choices=("auto", "fx", "export"), default="auto",
                   help="capture backend: torch.fx, non-strict torch.export, or fx falling back to export (default)")
    p.set_defaults(run=run)


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


def run(args: argparse.Namespace) -> int:
    kwargs = parse_kwargs(args.kwargs)
    model = build_model(import_class(args.target), args.target, kwargs)
    shape = parse_shape(args.input_shape) if args.input_shape else _zoo_input_shape(model)
    if shape is None:
        raise OTOError(f"{args.target} is not a zoo model: give --input-shape, e.g. --input-shape 1,3,32,32")
    dummy = dummy_input(shape, args.input_dtype, args.input_range)
    try:
        oto = OTO(model, dummy, capture=args.capture)
    except OTOError:
        raise
    except Exception as err:  # a user model can fail in ways no capture backend anticipates
        raise OTOError(f"building the search space of {args.target} failed: {first_line(err)}") from err
    text = oto.summary()
    print(text)
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "summary.txt").write_text(text + "\n")
            files = oto.visualize(args.out)
        except OSError as err:
            raise OTOError(f"cannot write into --out {str(args.out)!r}: {first_line(err)}") from err
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 0
