"""Predicted sub-network size: what `OTO.compression_report` will measure, before training has zeroed anything.

Budget targets (``target_params`` / ``target_macs``, `otov3.optim._budget`) choose the redundant set by the
size of the sub-network it would leave. The only prediction that is exact on every model (concat slices, starved
vertices, dead branches, channel rounding to ``group_divisible``) is to build that sub-network: the same plan and
surgery as `OTO.construct_subnet`, without checking zeros or outputs (the weights need not be zero yet), and count
it as the report does (spec §7: `count_params`, `count_flops` on one sample).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.fx

from otov3.errors import ConstructionError
from otov3.metrics import count_flops, count_params

__all__ = ["SubnetSizer"]

_CACHE_LIMIT = 1024  # sizes are ints: a thousand builds' answers cost nothing to keep


class SubnetSizer:
    """``sizer(indices) -> (params, MACs)`` of the sub-network without the groups ``oto.groups[i]``.

    Erasing mode builds with `plan_subnet` + `apply_plan`, pruning mode with `build_channel_subnet`, both followed
    by `merge_duplicate_ops` as `construct_subnet` does by default. Answers are cached per set (the structure, not
    the weights, decides them).

    Args:
        oto: the `OTO` whose groups are removed.
    """

    def __init__(self, oto: Any) -> None:
        from otov3.api import _one_sample

        self._oto = oto
        cap = oto.space.captured
        self._example = _one_sample(cap.kwargs) if cap.kwargs else _one_sample(cap.args)
        self._cache: dict[frozenset[int], tuple[int, int]] = {}
        self._reference: tuple[int, int] | None = None

    @property
    def reference(self) -> tuple[int, int]:
        """The super-network's ``(params, MACs)``, as ``compression_report`` gives them (``*_before``)."""
        if self._reference is None:
            model = self._oto.model
            self._reference = (count_params(model), count_flops(model, self._example))
        return self._reference

    def __call__(self, indices: Iterable[int]) -> tuple[int, int]:
        key = frozenset(indices)
        if key not in self._cache:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            groups = self._oto.groups
            subnet = self._build([groups[i] for i in sorted(key)])
            self._cache[key] = (count_params(subnet), count_flops(subnet, self._example))
        return self._cache[key]

    def _build(self, groups: list[Any]) -> torch.fx.GraphModule:
        from otov3.subnet.dedupe import merge_duplicate_ops

        oto, space = self._oto, self._oto.space
        try:
            if oto.mode == "prune":
                from otov3.prune_space import build_channel_subnet

                subnet = build_channel_subnet(space, oto._prune, groups)
            elif oto.mode == "erase":
                from otov3.subnet.plan import plan_subnet
                from otov3.subnet.surgery import apply_plan

                plan = plan_subnet(space.trace, space.dependency, {s for g in groups for s in g.segments})
                subnet = apply_plan(space.captured, space.trace, plan)
            elif oto.mode == "both":
                from otov3.both_mode import build_both_without

                subnet = build_both_without(space, groups, group_divisible=oto.group_divisible)
            else:
                raise ConstructionError(f"OTO(mode={oto.mode!r}) has no size prediction yet; pass size_of= to the "
                                        "optimizer")
            merge_duplicate_ops(subnet)
        except ConstructionError:
            raise
        except Exception as err:
            raise ConstructionError(
                f"Predicting the size of the sub-network without {[g.name for g in groups]} failed: {err}"
            ) from err
        return subnet
