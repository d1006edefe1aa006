"""Drift between capture and use: the model changed after `OTO(...)` traced it.

`model.double()`, `.half()` or `.to(device)` after `OTO(...)` keep the parameter objects but change their dtype or
device, so the recorded search space no longer describes the model and construction would fail only after
training. Replacing a parameter (``model.fc.weight = nn.Parameter(...)``) leaves the groups bound to the old
tensor, which the optimizer would then train instead. `check_drift` finds both, cheaply enough to run when the
optimizer is created and again at construction: an identity check per parameter, then one eval-mode run of the
model on the dummy input, whose outputs must have the dtypes, devices and shapes recorded at capture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from otov3.capture.fx_capture import preserved_modes
from otov3.errors import DriftError
from otov3.subnet.verify import output_leaves

if TYPE_CHECKING:
    from otov3.api import OTO

_ADVICE = (
    "Convert or move the model (and the dummy input) before creating OTO(model, dummy_input), or undo the change; "
    "then create the optimizer."
)


def check_drift(oto: OTO, *, when: str) -> None:
    """Raises `DriftError` when the model no longer matches what `OTO(...)` captured.

    Args:
        oto: the OTO whose model is checked.
        when: what is about to happen, for the message (e.g. "creating the optimizer").
    """
    _check_parameters(oto, when)
    _check_run(oto, when)


def _check_parameters(oto: OTO, when: str) -> None:
    model = oto.model
    for group in (*oto.space.gezigs, *oto.space.complementary):
        for s in group.slices:
            try:
                current = model.get_parameter(s.name)
            except AttributeError:
                raise DriftError(
                    f"Before {when}: parameter '{s.name}' of group '{group.name}' no longer exists in the model; "
                    f"it was removed after OTO(...) traced the model. {_ADVICE}"
                ) from None
            if current is not s.param:
                raise DriftError(
                    f"Before {when}: parameter '{s.name}' of group '{group.name}' was replaced by a new tensor after "
                    "OTO(...) traced the model (a newly assigned nn.Parameter, or .to() a device whose tensors "
                    "cannot take over the old ones), so the search space and the optimizer would act on the old one. "
                    "Copy new values in place (with torch.no_grad(): param.copy_(value)) instead. "
                    f"{_ADVICE}"
                )


def _meta(value: Any) -> list[tuple[torch.dtype, torch.device, tuple[int, ...]]]:
    return [(t.dtype, t.device, tuple(t.shape)) for _, t in output_leaves(value) if isinstance(t, torch.Tensor)]


def _describe(meta: list[tuple[torch.dtype, torch.device, tuple[int, ...]]]) -> str:
    return ", ".join(f"{str(d).removeprefix('torch.')} on {dev} {list(shape)}" for d, dev, shape in meta[:2]) or "?"


def _parameter_state(model: torch.nn.Module) -> str:
    kinds = sorted({f"{str(p.dtype).removeprefix('torch.')} on {p.device}" for p in model.parameters()})
    return ", ".join(kinds[:3]) or "none"


def _recorded_output(cap: Any) -> Any:
    out = next((n for n in cap.gm.graph.nodes if n.op == "output"), None)
    if out is None:
        return None
    if out.name in cap.values:
        return cap.values[out.name]
    return torch.fx.node.map_arg(out.args[0], lambda n: cap.values.get(n.name))


def _check_run(oto: OTO, when: str) -> None:
    """One eval-mode run of the model on the dummy input; its outputs' dtypes, devices and shapes must be the
    ones recorded at capture."""
    cap = oto.space.captured
    recorded = _recorded_output(cap)
    try:
        with preserved_modes(oto.model), torch.no_grad():
            now = oto.model(*cap.args, **cap.kwargs)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise DriftError(
            f"Before {when}: the model no longer runs on the dummy input that OTO(...) traced it with "
            f"({type(err).__name__}: {first}). Its parameters are now {_parameter_state(oto.model)}. Was the model "
            f"converted (.double(), .half()) or moved (.to(device)) after OTO(...)? {_ADVICE}"
        ) from err
    before, after = _meta(recorded), _meta(now)
    if before and before != after:
        raise DriftError(
            f"Before {when}: the model changed after OTO(...) traced it: its output was {_describe(before)} at "
            f"capture and is {_describe(after)} now (parameters: {_parameter_state(oto.model)}). Was the model "
            f"converted (.double(), .half()) or moved (.to(device)) after OTO(...)? {_ADVICE}"
        )
