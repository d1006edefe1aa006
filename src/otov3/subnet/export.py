"""Write a sub-network to disk: state_dict, standalone source, ONNX, JSON summary — all or nothing.

Every file is written to a staging folder first (`otov3.subnet.artefacts`) and moved into `out_dir` only when all
are complete. A file that cannot be produced (no `onnx` package, an op the ONNX exporter does not know, a layer
the source generator cannot write) is named with its reason in a warning and in ``summary.json["skipped"]``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from otov3.errors import ConstructionError, ExportError
from otov3.subnet.artefacts import MARKER, check_target, commit, staging
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


def export_onnx(subnet: torch.nn.Module, args: tuple, path: Path, kwargs: dict[str, Any] | None = None) -> bool:
    """Export with the TorchScript-based exporter (needs only the `onnx` package); False when unavailable.

    Keyword inputs are passed by position (the sub-network's placeholders are named after them) and keep their
    names as ONNX input names. Raises what the exporter raises (see `export_subnet`).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    names = [f"input_{i}" for i in range(len(args))]
    if kwargs:
        if not isinstance(subnet, torch.fx.GraphModule):
            raise TypeError("keyword inputs need a GraphModule to order them")
        order = [n.target for n in subnet.graph.nodes if n.op == "placeholder"][len(args):]
        rest = order[:len(kwargs)]
        if set(rest) != set(kwargs):
            raise TypeError(f"keyword inputs {list(kwargs)} are not the next arguments of the forward {order}")
        args, names = (*args, *(kwargs[k] for k in rest)), names + rest
    tensors = [n for n, v in zip(names, args, strict=True) if isinstance(v, torch.Tensor)]
    was_training = subnet.training
    subnet.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_Plain(subnet), args, str(path), dynamo=False, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in tensors})
    finally:
        subnet.train(was_training)
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _save_state_dict(subnet: torch.nn.Module, path: Path, final: Path) -> None:
    try:
        torch.save(subnet.state_dict(), path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full or read-only disk as RuntimeError
        raise ExportError(f"Cannot write '{final}': {err}", path=final) from err


def _write_text(path: Path, text: str, final: Path) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise ExportError(f"Cannot write '{final}': {err}", path=final) from err


def export_subnet(oto: OTO, subnet: torch.fx.GraphModule, out_dir: Path, *, overwrite: bool = False) -> dict[str, str]:
    """Write everything a user needs to reuse the sub-network without the super-network.

    Returns:
        The files written, by kind (``state_dict``, ``source``, ``onnx``, ``summary``).

    Raises:
        ExportError: `out_dir` is a file, a non-empty folder that is no export (without `overwrite`), or the file
            system refused a write; `out_dir` is left exactly as it was.
    """
    check_target(out_dir, overwrite=overwrite)
    cap = oto.space.captured
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with staging(out_dir) as tmp:
        _save_state_dict(subnet, tmp / "state_dict.pt", out_dir / "state_dict.pt")
        written["state_dict"] = "state_dict.pt"
        try:
            source = generate_source(subnet)
            check_source(source, subnet, cap.args, cap.kwargs)
        except ConstructionError as err:
            skipped["subnet.py"] = str(err)
        else:
            _write_text(tmp / "subnet.py", source, out_dir / "subnet.py")
            written["source"] = "subnet.py"
        try:
            if export_onnx(subnet, cap.args, tmp / "subnet.onnx", cap.kwargs):
                written["onnx"] = "subnet.onnx"
            else:
                skipped["subnet.onnx"] = "the 'onnx' package is not installed (pip install onnx)"
        except OSError as err:
            raise ExportError(f"Cannot write '{out_dir / 'subnet.onnx'}': {err}", path=out_dir / "subnet.onnx") from err
        except Exception as err:  # the exporter raises many types for ops it cannot convert
            skipped["subnet.onnx"] = f"the ONNX exporter failed: {_first_line(err)}"
        try:
            report = oto.compression_report(subnet)
        except Exception as err:  # the counts are a convenience; the sub-network itself was verified
            report = {}
            skipped["summary.json (parameter and MAC counts)"] = f"counting failed: {_first_line(err)}"
        summary = {MARKER: 1, "removed_groups": [g.name for g in oto.zero_groups()], "files": written,
                   "skipped": skipped, **report}
        _write_text(tmp / "summary.json", json.dumps(summary, indent=2), out_dir / "summary.json")
        written["summary"] = "summary.json"
        commit(tmp, out_dir)
    for name, reason in skipped.items():
        warnings.warn(f"otov3 export: '{out_dir / name}' was not written: {reason}", UserWarning, stacklevel=3)
    return written
