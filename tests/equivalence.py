"""Shared test helpers carrying the project's central properties.

- `segment_outputs`: the value of every traced node, to look inside a super-network.
- `assert_zero_invariant`: a GeZIG set to zero makes each of its segments output exactly zero (spec §3.2 rule 3),
  in train and in eval mode.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn

from otov3 import OTO


class _Recorder(torch.fx.Interpreter):
    """Runs a GraphModule node by node and keeps every node's output."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _positional(inputs: Any) -> tuple[Any, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, list | tuple):
        return tuple(inputs)
    raise TypeError(f"inputs must be a tensor or a tuple of positional inputs, got {type(inputs)!r}")


def segment_outputs(oto: OTO, inputs: Any) -> dict[str, Any]:
    """Run `oto.space.captured.gm` on `inputs` (in its modules' current modes) and return every node's output.

    Keys are fx node names, which are also the trace-vertex names.
    """
    recorder = _Recorder(oto.space.captured.gm)
    with torch.no_grad():
        recorder.run(*_positional(inputs))
    return recorder.values


def _build(model_factory_or_model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(model_factory_or_model, nn.Module):
        return copy.deepcopy(model_factory_or_model)
    return model_factory_or_model()


def zero_group_(oto: OTO, group_name: str) -> None:
    """Set every parameter slice of the group, and the running means it resets, to exactly zero."""
    group = oto.group(group_name)
    with torch.no_grad():
        for s in group.slices:
            s.view().zero_()
        for buf in group.reset_buffers:
            buf.zero_()


def assert_zero_invariant(
    model_factory_or_model: nn.Module | Callable[[], nn.Module],
    dummy_input: Any,
    group_name: str,
    inputs: Any,
    train_mode: bool,
) -> None:
    """Zeroing GeZIG `group_name` makes every segment of it that feeds the rest of the network output exactly zero.

    Works on a deep copy (or a fresh model from the factory): builds an OTO on it, zeros the group's slices and
    reset buffers, runs the captured graph in train or eval mode and compares with `torch.equal`. On failure the
    message lists every vertex of the offending segment with its op and largest absolute output.
    """
    model = _build(model_factory_or_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, dummy_input)
    group = oto.group(group_name)
    zero_group_(oto, group_name)
    oto.space.captured.gm.train(train_mode)
    values = segment_outputs(oto, inputs)
    dep, trace = oto.space.dependency, oto.space.trace
    mode = "train" if train_mode else "eval"
    assert group.segments, f"GeZIG {group_name!r} spans no segment"
    inside = set(group.vertices)
    for sid in group.segments:
        segment = dep.segments[sid]
        if all(w in inside for w in trace.successors(segment.last)):
            continue  # internal to the removal structure (a gate's producers): only what leaves it must be 0
        out = values[segment.last]
        if isinstance(out, torch.Tensor) and torch.equal(out, torch.zeros_like(out)):
            continue
        lines = []
        for v in segment.vertices:
            val = values[v]
            peak = float(val.abs().max()) if isinstance(val, torch.Tensor) and val.numel() else float("nan")
            vert = trace.vertices[v]
            lines.append(f"    {v:<24} {vert.op:<18} max|out| = {peak:.3g}  params={list(vert.params)}")
        nonzero = int((out != 0).sum()) if isinstance(out, torch.Tensor) else -1
        raise AssertionError(
            f"GeZIG {group_name!r} is not zero-invariant in {mode} mode: segment {sid} ends at "
            f"{segment.last!r}, whose output has {nonzero} non-zero entries after zeroing "
            f"{[s.name + ('' if s.index is None else f'[{s.index.start}:{s.index.stop}]') for s in group.slices]} "
            f"and resetting {len(group.reset_buffers)} running mean(s).\n  segment vertices:\n" + "\n".join(lines)
        )


# `assert_subnet_equivalent` (sub-network output equality) is added below by the sub-network work.
