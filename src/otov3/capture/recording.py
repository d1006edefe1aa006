"""One recorded run of a captured graph: every node's example value, failures turned into `CaptureError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from otov3.errors import CaptureError

# (failing node, the error, the values recorded so far) -> the message of the CaptureError
Explain = Callable[[torch.fx.Node, Exception, dict[str, Any]], str]


def detach(value: Any) -> Any:
    """Tensors detached, inside tuples and lists too; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list | tuple):
        return type(value)(detach(v) for v in value)
    return value


class ValueRecorder(torch.fx.Interpreter):
    """Runs a GraphModule once and keeps every node's value; `explain` words a failure for the backend."""

    def __init__(self, gm: torch.fx.GraphModule, explain: Explain) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[str, Any] = {}
        self._explain = explain

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except Exception as err:
            raise CaptureError(self._explain(n, err, self.values)) from err
        self.values[n.name] = detach(out)
        return out
