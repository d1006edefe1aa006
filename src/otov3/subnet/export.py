"""Write a sub-network to disk: state_dict, standalone source, ONNX (when available), JSON summary."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.fx

from otov3.errors import ConstructionError
from otov3.subnet.source import check_source, generate_source

if TYPE_CHECKING:
    from otov3.api import OTO


class _Plain(torch.nn.Module):
    """The exporter inspects `model.graph` as a TorchScript graph; hide the fx one behind a wrapper."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def export_onnx(subnet: torch.nn.Module, args: tuple, path: Path) -> bool:
    """Export with the TorchScript-based exporter (needs only the `onnx` package); False when unavailable."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        warnings.warn("The 'onnx' package is not installed; skipping the ONNX export.", stacklevel=3)
        return False
    was_training = subnet.training
    subnet.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            names = [f"input_{i}" for i in range(len(args))]
            torch.onnx.export(_Plain(subnet), args, str(path), dynamo=False, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names})
    finally:
        subnet.train(was_training)
    return True


def export_subnet(oto: OTO, subnet: torch.fx.GraphModule, out_dir: Path) -> dict[str, str]:
    """Write everything a user needs to reuse the sub-network without the super-network."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    torch.save(subnet.state_dict(), out_dir / "state_dict.pt")
    written["state_dict"] = "state_dict.pt"
    cap = oto.space.captured
    try:
        source = generate_source(subnet)
        check_source(source, subnet, cap.args, cap.kwargs)
        (out_dir / "subnet.py").write_text(source)
        written["source"] = "subnet.py"
    except ConstructionError as err:
        warnings.warn(str(err), stacklevel=3)
    if not cap.kwargs and export_onnx(subnet, cap.args, out_dir / "subnet.onnx"):
        written["onnx"] = "subnet.onnx"
    report = oto.compression_report(subnet)
    summary = {"removed_groups": [g.name for g in oto.zero_groups()], "files": written, **report}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    written["summary"] = "summary.json"
    return written
