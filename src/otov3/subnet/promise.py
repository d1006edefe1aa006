"""What the optimizer promised, checked at construction: the redundant groups are zero by their deadline.

A run that stops before the deadline (or has none, ``hybrid_steps=None``) can leave redundant groups non-zero,
and construction would then quietly return a network with fewer removals than asked for, or the whole network.
`check_promise` says which groups are missing, their norms and the step they were due, and refuses unless the
caller accepts a partial result (``allow_partial=True``, then it warns).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from otov3.errors import ConstructionError
from otov3.space import Group


def _deadline_text(defaults: dict[str, Any], step: int, name: str) -> tuple[str, str]:
    """(when the groups were due, what to do)."""
    warmup, hybrid = defaults["warmup_steps"], defaults["hybrid_steps"]
    if hybrid is None:
        return (f"never: hybrid_steps=None sets no deadline, so {name} does not guarantee zeros",
                f"train with a deadline, e.g. oto.{name.lower()}(..., hybrid_steps=N), and run past warmup_steps + N")
    due = warmup + hybrid
    if step < due:
        return (f"by step {due} (warmup_steps={warmup} + hybrid_steps={hybrid}); training stopped at step {step}",
                f"train at least {due - step} more step(s)")
    return (f"by step {due}, and training reached step {step}: the weights were changed outside the optimizer "
            "(another optimizer, a model.load_state_dict, a manual edit)",
            "reload the weights that go with the optimizer's state")


def check_promise(optimizer: Any, gezigs: Sequence[Group], *, allow_partial: bool) -> None:
    """Refuses (or, with `allow_partial`, warns) when the optimizer's redundant groups are not all exactly zero.

    Works for every otov3 optimizer (H2SPG, DHSPG, HESSO): it reads their ``redundant_groups``, ``defaults``
    (``k``, ``warmup_steps``, ``hybrid_steps``) and the step count in their run state; ``gezigs`` is unused and
    kept for callers.

    Raises:
        ConstructionError: fewer groups are zero than the optimizer promised; the message names them.
    """
    name = getattr(optimizer, "NAME", type(optimizer).__name__)
    noun = getattr(optimizer, "NOUN", "group")
    run = optimizer.state[getattr(optimizer, "RUN_KEY", "h2spg")]
    defaults = optimizer.defaults
    k, step, warmup, hybrid = defaults["k"], run["step"], defaults["warmup_steps"], defaults["hybrid_steps"]
    due, advice = _deadline_text(defaults, step, name)
    redundant = optimizer.redundant_groups
    if not redundant and step <= warmup:
        target = f"K={k}" if k is not None else "groups its budget will choose at the end of warm-up (K)"
        message = (
            f"{name} ran {step} step(s) and is still in warm-up (warmup_steps={warmup}): no {noun} was selected for "
            f"removal, so 0 of the {target} target groups are zero (due {due}). Construction would return the "
            f"whole network. To fix: {advice}."
        )
    else:
        k = len(redundant) if k is None else k  # a budget's K is only known once it has chosen
        pending = [g for g in redundant if not g.is_zero()]
        unchosen = k - len(redundant) if hybrid is not None and step < warmup + hybrid else 0  # HESSO's periods
        if len(redundant) < k and not unchosen:
            warnings.warn(
                f"{name} could select only {len(redundant)} of the K={k} target {noun}s while the network stays "
                "valid; the sub-network removes at most those.", UserWarning, stacklevel=4,
            )
        if not pending and unchosen <= 0:
            return
        names = ", ".join(f"'{g.name}' (norm {g.norm():.3g})" for g in pending[:10])
        names += f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        later = f"; {unchosen} more of the K={k} are still to be chosen" if unchosen > 0 else ""
        message = (
            f"Only {len(redundant) - len(pending)} of the {len(redundant)} redundant {noun}s (target K={k}) are "
            f"exactly zero after {step} {name} step(s); still non-zero: {names or 'none'}{later}. They were due "
            f"{due}. To fix: {advice}."
        )
    if not allow_partial:
        raise ConstructionError(message + " Or pass allow_partial=True to build the sub-network without them.")
    warnings.warn(f"allow_partial=True, building anyway: {message}", UserWarning, stacklevel=4)
