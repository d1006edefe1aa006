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

_RUN_KEY = "h2spg"


def _deadline_text(defaults: dict[str, Any], step: int) -> tuple[str, str]:
    """(when the groups were due, what to do)."""
    warmup, hybrid = defaults["warmup_steps"], defaults["hybrid_steps"]
    if hybrid is None:
        return ("never: hybrid_steps=None sets no deadline, so H2SPG does not guarantee zeros",
                "train with a deadline, e.g. oto.h2spg(..., hybrid_steps=N), and run past warmup_steps + N")
    due = warmup + hybrid
    if step < due:
        return (f"by step {due} (warmup_steps={warmup} + hybrid_steps={hybrid}); training stopped at step {step}",
                f"train at least {due - step} more step(s)")
    return (f"by step {due}, and training reached step {step}: the weights were changed outside the optimizer "
            "(another optimizer, a model.load_state_dict, a manual edit)",
            "reload the weights that go with the optimizer's state")


def check_promise(optimizer: Any, gezigs: Sequence[Group], *, allow_partial: bool) -> None:
    """Refuses (or, with `allow_partial`, warns) when H2SPG's redundant groups are not all exactly zero.

    Raises:
        ConstructionError: fewer groups are zero than the optimizer promised; the message names them.
    """
    run = optimizer.state[_RUN_KEY]
    defaults = optimizer.defaults
    k, step = defaults["k"], run["step"]
    due, advice = _deadline_text(defaults, step)
    if run["redundant"] is None:
        message = (
            f"H2SPG ran {step} step(s) and is still in warm-up (warmup_steps={defaults['warmup_steps']}): no GeZIG "
            f"was selected for removal, so 0 of the K={k} target groups are zero (due {due}). Construction would "
            f"return the whole network. To fix: {advice}."
        )
    else:
        redundant = [gezigs[i] for i in run["redundant"]]
        pending = [g for g in redundant if not g.is_zero()]
        if len(redundant) < k:
            warnings.warn(
                f"H2SPG could select only {len(redundant)} of the K={k} target GeZIGs while the network stays valid; "
                "the sub-network removes at most those.", UserWarning, stacklevel=4,
            )
        if not pending:
            return
        names = ", ".join(f"'{g.name}' (norm {g.norm():.3g})" for g in pending)
        message = (
            f"Only {len(redundant) - len(pending)} of the {len(redundant)} redundant GeZIGs (target K={k}) are exactly "
            f"zero after {step} H2SPG step(s); still non-zero: {names}. They were due {due}. To fix: {advice}."
        )
    if not allow_partial:
        raise ConstructionError(message + " Or pass allow_partial=True to build the sub-network without them.")
    warnings.warn(f"allow_partial=True, building anyway: {message}", UserWarning, stacklevel=4)
