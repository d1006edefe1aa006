"""Choose the capture backend: torch.fx, non-strict torch.export, or fx with export as the fallback.

fx keeps module calls as single ops (readable graphs, the modules themselves in the sub-network) and is tried
first; models that fx cannot trace (shape checks in Python, a `forward` re-bound on the instance, most
Hugging Face models) are exported instead. Both give the same kind of `Captured` record, so everything after
capture (trace graph, GeZIGs, H2SPG, sub-network) is backend-agnostic (spec §2 "Capture backends").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from otov3.capture.fx_capture import Captured, DummyInput, capture
from otov3.errors import CaptureError

BACKENDS = ("auto", "fx", "export")

_TRY_EXPORT = "What to try: capture='export' (torch.export records aten ops and runs Python shape checks)."
_TRY_FX = ("What to try: capture='fx' with leaf_modules=[<the failing module class>] (fx keeps it as one opaque "
           "op), or rewrite the data-dependent Python control flow with tensor ops (torch.where).")
_TRY_OP = "An op otov3 does not know can be declared with otov3.register_op."


def _export(model: nn.Module, dummy_input: DummyInput) -> Captured:
    from otov3.capture.export_capture import capture_export  # imports the aten op table on first use

    return capture_export(model, dummy_input)


def capture_model(
    model: nn.Module, dummy_input: DummyInput, *, capture_backend: str = "auto", leaf_modules: Sequence[type] = ()
) -> Captured:
    """Capture `model` with the chosen backend; "auto" tries fx, then non-strict torch.export.

    Args:
        model: the super-network (left unchanged).
        dummy_input: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        capture_backend: "auto", "fx" or "export".
        leaf_modules: module classes fx keeps as opaque ops (torch.export always records their aten ops).

    Raises:
        CaptureError: the backend(s) failed; the message names each backend, the module where it failed, the
            underlying error, and what to try.
    """
    if capture_backend not in BACKENDS:
        raise CaptureError(f"capture must be one of {', '.join(map(repr, BACKENDS))}, got {capture_backend!r}.")
    if capture_backend == "fx":
        try:
            return capture(model, dummy_input, leaf_modules=leaf_modules)
        except CaptureError as err:
            raise CaptureError(f"torch.fx capture failed: {err} {_TRY_EXPORT} {_TRY_OP}") from err
    if capture_backend == "export":
        try:
            return _export(model, dummy_input)
        except CaptureError as err:
            raise CaptureError(f"{err} {_TRY_FX} {_TRY_OP}") from err
    try:
        return capture(model, dummy_input, leaf_modules=leaf_modules)
    except CaptureError as fx_err:
        try:
            captured = _export(model, dummy_input)
        except CaptureError as export_err:
            raise CaptureError(
                f"Neither capture backend could capture {type(model).__name__}.\n"
                f"  torch.fx: {fx_err}\n  {export_err}\n{_TRY_FX} {_TRY_OP}"
            ) from export_err
        return dataclasses.replace(captured, fallback_reason=f"torch.fx could not trace the model: {fx_err}")
