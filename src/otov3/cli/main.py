"""The `otov3` command: `otov3 demo` (the main job) and `otov3 search MODULE:CLASS`."""

from __future__ import annotations

import argparse
import re
import sys

from otov3.errors import OTOError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otov3",
        description="Automatic sub-network search: build a search space, train once with H2SPG, construct the "
        "sub-network.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from otov3.cli import demo_cmd, search_cmd

    demo_cmd.add_parser(sub)
    search_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except OTOError as err:
        print(f"otov3: error: {_one_line(str(err))}", file=sys.stderr)
        return 2


# Notes torch appends to errors raised inside fx/export (node dumps, tracebacks, logging hints): noise on a CLI.
_NOISE = re.compile(
    r"While executing %.*?Use tlparse to see full graph\. \(\S+\)"
    r"|For more information, run with TORCH_LOGS=\S+"
    r"|For extended logs when we create symbols, also add \S+"
    r"|If you suspect the guard was triggered from C\+\+, add \S+"
    r"|Caused by: \([^)]*\)"
)


def _one_line(message: str) -> str:
    """Tracer and exporter messages span many lines; the CLI reports one, without torch's debugging notes."""
    return " ".join(_NOISE.sub(" ", " ".join(message.split())).split())


if __name__ == "__main__":
    sys.exit(main())
