"""The OTO facade: capture -> search space -> optimizer -> sub-network -> report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from otov3.capture.fx_capture import DummyInput
from otov3.errors import SearchSpaceError
from otov3.graph.validity import valid_basic, valid_strict
from otov3.search_space import SearchSpace, build_search_space
from otov3.space import Group


class OTO:
    """Automatic search space, training and sub-network construction for a super-network.

    Example:
        >>> oto = OTO(model, torch.randn(1, 3, 32, 32))
        >>> optimizer = oto.h2spg(lr=0.1, target_group_sparsity=0.5, warmup_steps=200)
        >>> ...  # ordinary training loop calling optimizer.step()
        >>> subnet = oto.construct_subnet()

    Args:
        model: the super-network; it is traced, never modified.
        dummy_input: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        leaf_modules: module classes to treat as opaque ops (e.g. ones with data-dependent control flow).
        strict_validity: use the strict validity check (no starved vertices, spec §3.3) by default.
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: DummyInput,
        *,
        leaf_modules: Sequence[type] = (),
        strict_validity: bool = True,
    ) -> None:
        self.model = model
        self.dummy_input = dummy_input
        self.strict_validity = strict_validity
        self.space: SearchSpace = build_search_space(model, dummy_input, leaf_modules=leaf_modules)

    # --- the search space ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[Group]:
        """The GeZIGs: minimal removal structures, in dependency-graph order."""
        return list(self.space.gezigs)

    @property
    def complementary(self) -> list[Group]:
        """Parametric segments that cannot be removed, each with its `reason`."""
        return list(self.space.complementary)

    def group(self, name: str) -> Group:
        """The GeZIG called `name`."""
        for g in self.space.gezigs:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.space.gezigs)
        raise SearchSpaceError(f"No GeZIG named {name!r}. Known GeZIGs: {known}")

    def _resolve(self, groups: Iterable[Group | str]) -> list[Group]:
        out = []
        for g in groups:
            if isinstance(g, str):
                g = self.group(g)
            if not g.is_gezig:
                raise SearchSpaceError(f"Group {g.name!r} is not removable: {g.reason}")
            out.append(g)
        return out

    def is_valid_removal(self, groups: Iterable[Group | str], *, strict: bool | None = None) -> bool:
        """Whether removing these GeZIGs leaves a valid network (spec §3.3 hierarchy check).

        Args:
            groups: GeZIGs (objects or names).
            strict: also forbid starved vertices; defaults to the OTO's `strict_validity`.
        """
        segments = {s for g in self._resolve(groups) for s in g.segments}
        strict = self.strict_validity if strict is None else strict
        check = valid_strict if strict else valid_basic
        return check(self.space.dependency, segments)

    def is_valid_indices(self, indices: Iterable[int], *, strict: bool | None = None) -> bool:
        """`is_valid_removal` by positions in `groups` (what the optimizer calls)."""
        gezigs = self.space.gezigs
        return self.is_valid_removal([gezigs[i] for i in indices], strict=strict)

    def summary(self) -> str:
        """A readable table of every parametric segment: group, ops, #params, status or reason."""
        trace = self.space.trace
        rows = [("group", "ops", "#params", "status")]
        everything = sorted((*self.space.gezigs, *self.space.complementary), key=lambda g: g.segment)
        for g in everything:
            ops = "-".join(trace.vertices[v].op for v in g.vertices) if g.vertices else "-"
            status = "GeZIG" if g.is_gezig else f"kept: {g.reason}"
            if g.is_gezig and g.is_zero():
                status = "GeZIG (zero)"
            rows.append((g.name, ops, f"{g.numel():,}", status))
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(3)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
            if i == 0:
                lines.append("-" * (sum(widths) + 6 + 10))
        n_params = sum(g.numel() for g in self.space.gezigs)
        lines.append(
            f"{len(self.space.gezigs)} GeZIGs ({n_params:,} params) and {len(self.space.complementary)} "
            f"complementary groups; {len(self.space.dependency.segments)} segments, "
            f"{len(trace.vertices)} traced ops."
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"OTO({type(self.model).__name__}, gezigs={len(self.space.gezigs)})"
