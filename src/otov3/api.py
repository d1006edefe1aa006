"""The OTO facade: capture -> search space -> optimizer -> sub-network -> report."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch.fx
from torch import nn

from otov3.capture.fx_capture import DummyInput
from otov3.errors import ConstructionError, SearchSpaceError
from otov3.graph.validity import valid_basic, valid_strict
from otov3.search_space import SearchSpace, build_search_space
from otov3.space import Group
from otov3.subnet.dedupe import merge_duplicate_ops
from otov3.subnet.plan import plan_subnet
from otov3.subnet.surgery import apply_plan
from otov3.subnet.verify import first_divergent_node, max_relative_difference


def _one_sample(example):
    """MACs are reported per sample (spec §7): keep the first item of every batched tensor."""
    import torch

    def first(x):
        return x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x

    if isinstance(example, dict):
        return {k: first(v) for k, v in example.items()}
    return tuple(first(a) for a in example)


class OTO:
    """Automatic search space, training and sub-network construction for a super-network.

    Example:
        >>> oto = OTO(model, torch.randn(1, 3, 32, 32))
        >>> optimizer = oto.h2spg(lr=0.1, target_group_sparsity=0.5, warmup_steps=200, hybrid_steps=800)
        >>> ...  # ordinary training loop calling optimizer.step(), for more than 200 + 800 steps
        >>> subnet = oto.construct_subnet()

    Args:
        model: the super-network; it is traced, never modified. A ``DistributedDataParallel`` or
            ``DataParallel`` wrapper is looked through (its ``.module`` is used, the parameters are the same
            objects), so group names never carry the wrapper's ``module.`` prefix.
        dummy_input: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        leaf_modules: module classes to treat as opaque ops (e.g. ones with data-dependent control flow);
            torch.fx capture only.
        strict_validity: use the strict validity check (no starved vertices, spec §3.3) by default.
        capture: the capture backend. "fx" traces with torch.fx (module calls stay single ops); "export" uses
            non-strict ``torch.export`` (aten ops; handles Python shape checks, a ``forward`` re-bound on the
            instance, Hugging Face models; the sub-network computes the eval-mode graph); "auto" (default) tries
            fx and falls back to export. ``oto.capture_backend`` says which one was used.
        mode: "erase" (default; OTOv3: groups are whole operations, GeZIGs), "prune" (OTOv2: groups are
            channels, hidden units and attention heads of node groups, spec §4; `otov3.prune_space`) or "both"
            (the GeZIGs and the channel groups: ``oto.h2spg(target_group_sparsity=K,
            target_channel_sparsity=ρ)`` removes K operations and slims the others in one run).
        group_divisible: pruning mode: node groups with at most this many channel groups are kept whole, and the
            sub-network keeps channel counts that are multiples of it (zero channels come back to round up).

    Raises:
        CaptureError: the backend(s) could not capture the model; the message names each backend, the module
            where it failed and what to try.
        ValueError: `mode` is not "erase", "prune" or "both", or `group_divisible` is not a positive integer.
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: DummyInput,
        *,
        leaf_modules: Sequence[type] = (),
        strict_validity: bool = True,
        capture: str = "auto",
        mode: str = "erase",
        group_divisible: int = 1,
    ) -> None:
        if mode not in ("erase", "prune", "both"):
            raise ValueError(f"mode must be 'erase' (whole operations), 'prune' (channels) or 'both', got {mode!r}.")
        if isinstance(group_divisible, bool) or not isinstance(group_divisible, int) or group_divisible < 1:
            raise ValueError(f"group_divisible must be a positive integer, got {group_divisible!r}.")
        self.mode = mode
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        self.model = model
        self.dummy_input = dummy_input
        self.strict_validity = strict_validity
        self.space: SearchSpace = build_search_space(model, dummy_input, leaf_modules=leaf_modules, capture=capture)
        self._prune = self._both = None
        self.group_divisible = group_divisible
        if mode in ("prune", "both"):
            from otov3.prune_space import build_prune_space

            self._prune = build_prune_space(self.space, model, group_divisible=group_divisible)
        if mode == "both":
            from otov3.both_space import build_both_space

            self._both = build_both_space(tuple(self.space.gezigs), self._prune.groups)

    @property
    def capture_backend(self) -> str:
        """The backend that captured the model: "fx" (torch.fx) or "export" (non-strict torch.export)."""
        return self.space.captured.backend

    # --- the search space ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[Group]:
        """The removable groups: GeZIGs (minimal removal structures, in dependency-graph order), or in pruning
        mode the channel groups (`Group.node_group` says which node group each belongs to); in both modes the
        GeZIGs, then the channel groups (`Group.kind` tells them apart)."""
        if getattr(self, "_both", None) is not None:
            return [*self._both.gezigs, *self._both.channels]
        if self._prune is not None:
            return list(self._prune.groups)
        return list(self.space.gezigs)

    @property
    def complementary(self) -> list[Group]:
        """Parametric segments (pruning mode: node groups) that cannot be removed, each with its `reason`."""
        if getattr(self, "_both", None) is not None:
            return list(self.space.complementary)
        if self._prune is not None:
            return list(self._prune.complementary)
        return list(self.space.complementary)

    def group(self, name: str) -> Group:
        """The GeZIG called `name`.

        Raises:
            SearchSpaceError: no GeZIG has that name (the message lists them), or `name` is not a string.
        """
        if not isinstance(name, str):
            raise SearchSpaceError(f"A GeZIG name must be a string, got {type(name).__name__} {name!r}.")
        for g in self.groups:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.groups)
        raise SearchSpaceError(f"No GeZIG named {name!r}. Known GeZIGs: {known}")

    def _resolve(self, groups: Iterable[Group | str] | Group | str) -> list[Group]:
        if isinstance(groups, str | Group):
            groups = [groups]  # one group, not an iterable of characters
        mine = {id(g) for g in (*self.groups, *self.complementary)}
        out = []
        for g in groups:
            if isinstance(g, str):
                g = self.group(g)
            elif not isinstance(g, Group):
                raise SearchSpaceError(
                    f"Expected GeZIGs (oto.groups items) or their names, got {type(g).__name__} {g!r}."
                )
            if id(g) not in mine:
                raise SearchSpaceError(
                    f"Group {g.name!r} belongs to another OTO (another search space), not to this one; pass this "
                    "OTO's groups (oto.groups) or their names."
                )
            if not g.removable:
                raise SearchSpaceError(f"Group {g.name!r} is not removable: {g.reason}")
            out.append(g)
        return out

    def is_valid_removal(self, groups: Iterable[Group | str], *, strict: bool | None = None) -> bool:
        """Whether removing these GeZIGs leaves a valid network (spec §3.3 hierarchy check).

        Args:
            groups: GeZIGs (objects or names), or one of them.
            strict: also forbid starved vertices; defaults to the OTO's `strict_validity`.

        Raises:
            SearchSpaceError: a name is unknown, a group belongs to another OTO or is not removable.
        """
        if getattr(self, "_both", None) is not None:
            return self._valid_both(self._resolve(groups), strict)
        if self._prune is not None:
            from otov3.prune_space import is_valid_channels

            return is_valid_channels(self._prune, self._resolve(groups))
        segments = {s for g in self._resolve(groups) for s in g.segments}
        strict = self.strict_validity if strict is None else strict
        check = valid_strict if strict else valid_basic
        return check(self.space.dependency, segments)

    def is_valid_indices(self, indices: Iterable[int], *, strict: bool | None = None) -> bool:
        """`is_valid_removal` by positions in `groups` (what the optimizer calls).

        Raises:
            ValueError: an index is not an integer, or lies outside ``0 .. len(oto.groups) - 1`` (negative
                positions are refused: they would silently name another group).
        """
        import operator

        gezigs = self.groups
        chosen = []
        for i in indices:
            try:
                if isinstance(i, bool):
                    raise TypeError
                position = operator.index(i)
            except TypeError:
                raise ValueError(f"GeZIG indices must be integers, got {type(i).__name__} {i!r}.") from None
            if not 0 <= position < len(gezigs):
                raise ValueError(
                    f"GeZIG index {position} is out of range: this OTO has {len(gezigs)} GeZIGs, indices "
                    f"0..{len(gezigs) - 1}."
                )
            chosen.append(gezigs[position])
        if getattr(self, "_both", None) is not None:
            return self._valid_both(chosen, strict)
        if self._prune is not None:
            from otov3.prune_space import is_valid_channels

            return is_valid_channels(self._prune, chosen)
        segments = {s for g in chosen for s in g.segments}
        strict = self.strict_validity if strict is None else strict
        return (valid_strict if strict else valid_basic)(self.space.dependency, segments)

    def _valid_both(self, chosen: Sequence[Group], strict: bool | None) -> bool:
        from otov3.both_mode import is_valid_both

        strict = self.strict_validity if strict is None else strict
        return is_valid_both(self.space, self._both.channels, chosen, strict=strict)

    def _make_joint(self, label: str, *, strict: bool | None, options: dict, **kw):
        """Both modes: H2SPG over the GeZIGs and the channel groups (`otov3.optim.joint.JointH2SPG`)."""
        from otov3.optim.joint import JointH2SPG

        if label != "h2spg":
            raise ValueError(f"oto.{label}() works in one mode; in mode='both' train with oto.h2spg("
                             "target_group_sparsity=K, target_channel_sparsity=rho)")
        options = dict(options)
        rho = options.pop("target_channel_sparsity", None)
        if kw.get("target_group_sparsity") is None:
            kw["target_group_sparsity"] = 0.5
        if kw.get("target_params") is not None or kw.get("target_macs") is not None:
            sizer = self._size_predictor()
            kw.update(size_of=sizer, reference_size=sizer.reference)
        strict = self.strict_validity if strict is None else strict
        check = valid_strict if strict else valid_basic
        gezigs = self._both.gezigs
        is_valid = lambda idx: check(self.space.dependency, {s for i in idx for s in gezigs[i].segments})  # noqa: E731
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        both = self._both
        return JointH2SPG(params, both.gezigs, both.channels, both.atoms, both.atom_gezig, both.atom_channel,
                          is_valid, target_channel_sparsity=rho, param_names=[names[id(p)] for p in params], **kw,
                          **options)

    # --- training ------------------------------------------------------------------------------------

    def h2spg(
        self,
        *,
        variant: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.0,
        weight_decay: float | None = None,
        target_group_sparsity: int | float | None = None,
        warmup_steps: int = 0,
        hybrid_steps: int | None = None,
        target_params: int | float | None = None,
        target_macs: int | float | None = None,
        strict: bool | None = None,
        **options,
    ):
        """Create the H2SPG optimizer over every trainable parameter of the model (spec §5.5).

        After `warmup_steps` it fixes the redundant set: `target_group_sparsity` GeZIGs (a count, or a fraction of
        the GeZIGs), chosen by redundancy score and admitted only while the hierarchy check (`is_valid_removal`)
        holds; by step `warmup_steps + hybrid_steps` they are exactly zero. See `otov3.optim.H2SPG` for every
        option (betas, epsilon, score_momentum, lam, eta, kappa, deadline_window, ...).

        Args:
            variant: base optimizer, "sgd", "adam" or "adamw".
            lr: learning rate (default per variant).
            momentum: SGD momentum.
            weight_decay: weight decay (default per variant).
            target_group_sparsity: K (int >= 1) or a fraction of the GeZIGs in (0, 1); default 0.5 unless a
                budget is given (passing both is a ValueError).
            target_params: a parameter budget instead of K: a fraction of the super-network in (0, 1) or an
                absolute count. After warm-up the redundant set is the shortest prefix of the score walk whose
                predicted sub-network (`predict_size`) fits; `compression_report` shows predicted and built sizes.
            target_macs: a MAC budget instead of K, likewise (MACs of one sample, spec §7).
            warmup_steps: steps of plain training while redundancy scores are averaged.
            hybrid_steps: steps after warm-up by which every redundant group is zero; train past
                ``warmup_steps + hybrid_steps``. None = no deadline: zeros are not guaranteed (a warning says so).
            strict: strict validity for the selection; defaults to the OTO's `strict_validity`.

        Raises:
            DriftError: the model was converted, moved or had parameters replaced after `OTO(...)`.
            ValueError: a budget with ``target_group_sparsity``, both budgets, or a budget below the smallest
                reachable size (the message says it, absolute and as a fraction).
            OptimizerError: (at the end of warm-up) the score order cannot reach the budget; nothing moved.
        """
        from otov3.optim import H2SPG

        return self._make_optimizer(
            H2SPG, "h2spg", strict=strict, no_deadline=(
                "oto.h2spg(hybrid_steps=None) sets no deadline: redundant groups reach zero only if the half-space "
                "test happens to project them, so construct_subnet() may find fewer zero groups than the target. "
                "Pass hybrid_steps=N and train past warmup_steps + N."),
            variant=variant, lr=lr, momentum=momentum,
            weight_decay=weight_decay, target_group_sparsity=target_group_sparsity, warmup_steps=warmup_steps,
            hybrid_steps=hybrid_steps, target_params=target_params, target_macs=target_macs, options=options,
        )

    def hesso(
        self,
        *,
        variant: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.0,
        weight_decay: float | None = None,
        target_group_sparsity: int | float | None = None,
        warmup_steps: int = 0,
        hybrid_steps: int | None = None,
        target_params: int | float | None = None,
        target_macs: int | float | None = None,
        strict: bool | None = None,
        **options,
    ):
        """Create the HESSO optimizer over every trainable parameter of the model (spec §5.6).

        After `warmup_steps` it shrinks the least important groups progressively (`periods` quotas, no λ) so that
        `target_group_sparsity` of `oto.groups` (a fraction; erasing mode also takes a count) are exactly zero by
        step `warmup_steps + hybrid_steps`; in erasing mode each group is admitted only while the hierarchy check
        holds. See `otov3.optim.HESSO` for every option (periods, betas, importance_weights, ...).

        Args: as `h2spg` (budgets too: the periods split the K the budget gives, and the last period admits
            groups until everything chosen fits); ``hybrid_steps`` (the pruning phase's length) must be >=
            ``periods``.

        Raises:
            DriftError: the model was converted, moved or had parameters replaced after `OTO(...)`.
            ValueError: a hyper-parameter is out of range; in pruning mode, a target that is not a fraction; a
                budget as `h2spg`.
            OptimizerError: (at the first or last period) the importance order cannot reach the budget.
        """
        from otov3.optim import HESSO

        return self._make_optimizer(
            HESSO, "hesso", strict=strict, no_deadline=None, variant=variant, lr=lr, momentum=momentum,
            weight_decay=weight_decay, target_group_sparsity=target_group_sparsity, warmup_steps=warmup_steps,
            hybrid_steps=hybrid_steps, target_params=target_params, target_macs=target_macs, options=options,
        )

    def dhspg(
        self,
        *,
        variant: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.0,
        weight_decay: float | None = None,
        target_group_sparsity: int | float | None = None,
        warmup_steps: int = 0,
        hybrid_steps: int | None = None,
        target_params: int | float | None = None,
        target_macs: int | float | None = None,
        strict: bool | None = None,
        **options,
    ):
        """Create the DHSPG optimizer over every trainable parameter of the model (spec §5.4).

        At the end of `warmup_steps` one-step redundancy scores pick the candidates (``target_group_sparsity`` +
        ``tolerance`` of `oto.groups`); λ steps and half-space projections then zero `target_group_sparsity` of
        them, all by step `warmup_steps + hybrid_steps`. In erasing mode the candidates keep the hierarchy check
        true. See `otov3.optim.DHSPG` for every option (tolerance, epsilon, lam, eta, kappa, ...).

        Args: as `h2spg`.

        Raises:
            DriftError: the model was converted, moved or had parameters replaced after `OTO(...)`.
            ValueError: a hyper-parameter is out of range; in pruning mode, a target that is not a fraction; a
                budget as `h2spg` (with a budget the candidates are exactly the fitting prefix, no tolerance).
            OptimizerError: (at the end of warm-up) the score order cannot reach the budget; nothing moved.
        """
        from otov3.optim import DHSPG

        return self._make_optimizer(
            DHSPG, "dhspg", strict=strict, no_deadline=(
                "oto.dhspg(hybrid_steps=None) sets no deadline: groups reach zero only if the half-space test "
                "happens to project them. Pass hybrid_steps=N and train past warmup_steps + N."),
            variant=variant, lr=lr, momentum=momentum,
            weight_decay=weight_decay, target_group_sparsity=target_group_sparsity, warmup_steps=warmup_steps,
            hybrid_steps=hybrid_steps, target_params=target_params, target_macs=target_macs, options=options,
        )

    def _make_optimizer(self, cls, label: str, *, strict: bool | None, no_deadline: str | None, options: dict,
                        **kw):
        """One optimizer over every trainable parameter and `self.groups`; erasing mode passes the hierarchy
        check (`is_valid_indices`), pruning mode none (any channel set is valid) and takes a fraction only; a
        budget brings the size predictor (`predict_size`) and the super-network's size."""
        from otov3.drift import check_drift

        check_drift(self, when="creating the optimizer")
        budget = {k: v for k in ("target_params", "target_macs") if (v := kw.pop(k)) is not None}
        if not budget and kw["target_group_sparsity"] is None:
            kw["target_group_sparsity"] = 0.5  # the default target when no budget is given
        if getattr(self, "_both", None) is not None:
            optimizer = self._make_joint(label, strict=strict, options=options, **kw, **budget)
            self._optimizer = optimizer
            return optimizer
        if no_deadline is not None and kw["hybrid_steps"] is None:
            warnings.warn(no_deadline, UserWarning, stacklevel=3)
        pruning = getattr(self, "mode", "erase") == "prune"
        target = kw["target_group_sparsity"]
        if pruning and target is not None and not (isinstance(target, float) and 0.0 < target < 1.0):
            raise ValueError(
                f"target_group_sparsity={target!r}: in pruning mode it is the fraction of the channel groups to "
                "remove, a float in (0, 1)"
            )
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        is_valid = None if pruning else (lambda indices: self.is_valid_indices(indices, strict=strict))
        if budget:
            sizer = self._size_predictor()
            budget.update(size_of=sizer, reference_size=sizer.reference)
        optimizer = cls(params, self.groups, is_valid, param_names=[names[id(p)] for p in params], **kw, **budget,
                        **options)
        if getattr(self, "_optimizer", None) is not None:
            warnings.warn(
                f"oto.{label}() was already called on this OTO: two optimizers over the same parameters undo each "
                "other's zeros. construct_subnet() checks the newest one; step only that one.",
                UserWarning, stacklevel=3,
            )
        self._optimizer = optimizer
        return optimizer

    def predict_size(self, groups: Iterable[Group | str] | Group | str) -> dict[str, int]:
        """Parameters and MACs (spec §7) of the sub-network without these groups, exactly as
        `compression_report` will measure it after `construct_subnet`: the sub-network is built (not verified;
        the groups need not be zero yet) and counted (`otov3.sizing`). Budget targets choose by it.

        Args:
            groups: removable groups (objects or names), or one of them.

        Raises:
            SearchSpaceError: a name is unknown, a group belongs to another OTO or is not removable.
            ConstructionError: the sub-network cannot be built without them (e.g. they disconnect it).
        """
        chosen = {id(g) for g in self._resolve(groups)}
        params, macs = self._size_predictor()(i for i, g in enumerate(self.groups) if id(g) in chosen)
        return {"params": params, "macs": macs}

    def _size_predictor(self):
        """The cached `SubnetSizer` of this OTO (its answers depend on the structure only)."""
        from otov3.sizing import SubnetSizer

        if getattr(self, "_sizer", None) is None:
            self._sizer = SubnetSizer(self)
        return self._sizer

    # --- the sub-network -------------------------------------------------------------------------------

    def zero_groups(self) -> list[Group]:
        """Removable groups (GeZIGs, or channel groups in pruning mode) whose every scalar is exactly zero now."""
        return [g for g in self.groups if g.is_zero()]

    def construct_subnet(
        self,
        out_dir: str | Path | None = None,
        *,
        verify: bool = True,
        rtol: float = 1e-5,
        trials: int = 3,
        merge_duplicates: bool = True,
        allow_partial: bool = False,
        overwrite: bool = False,
    ) -> torch.fx.GraphModule:
        """Build the standalone sub-network without the zero GeZIGs (spec §6).

        The user's model is not touched: the sub-network is a new GraphModule with copies of the surviving
        parameters and buffers, kept modules under their original names. Before returning, its weights are checked
        to be finite and its outputs are compared with the super-network's on fresh random inputs in eval mode.
        When `oto.h2spg()` created an optimizer, every group it chose for removal must be exactly zero (train past
        ``warmup_steps + hybrid_steps``); the returned network is also kept as `oto.last_subnet`.

        Args:
            out_dir: also write the state_dict, generated source, ONNX and a JSON summary here, all or nothing
                (a file that cannot be produced is named, with the reason, in a warning and in the summary).
            verify: compare outputs; an inexact sub-network raises instead of being returned.
            rtol: largest allowed max|super(x) - sub(x)| / max|super(x)| (float16/bfloat16 outputs: at least a few
                ulps of their precision).
            trials: number of random inputs compared.
            merge_duplicates: compute each parameter-free, deterministic op (pooling, activation, ...) once per
                distinct input instead of once per call, as `otov3.subnet.dedupe` explains; same outputs, less time.
            allow_partial: build even when the optimizer's redundant groups are not all zero yet (warns instead).
            overwrite: write into a non-empty `out_dir` that holds no earlier otov3 export (its other files stay).

        Raises:
            ConstructionError: the zero groups disconnect the network, the optimizer's redundant groups are not all
                zero (without `allow_partial`), a weight or output is NaN/Inf, or the outputs differ.
            DriftError: the model was converted, moved or had parameters replaced after `OTO(...)`.
            ExportError: `out_dir` cannot be written; the verified sub-network is on the error (`err.subnet`) and
                on `oto.last_subnet`.
        """
        from otov3.drift import check_drift
        from otov3.subnet.promise import check_promise
        from otov3.subnet.verify import non_finite_tensors

        check_drift(self, when="constructing the sub-network")
        optimizer = getattr(self, "_optimizer", None)
        if optimizer is not None:
            check_promise(optimizer, self.groups, allow_partial=allow_partial)
        zero = self.zero_groups()
        self._warn_nearly_zero(zero)
        self._stages = None
        if getattr(self, "_both", None) is not None:
            from otov3.both_mode import build_both_subnet

            def builder():
                result = build_both_subnet(self.space, zero, group_divisible=self.group_divisible)
                self._stages = result
                return result.subnet
        elif self._prune is not None:
            from otov3.prune_space import build_channel_subnet, is_valid_channels

            if not is_valid_channels(self._prune, zero):
                raise ConstructionError(
                    "Every channel group of a node group is zero, so removing them would cut the network: "
                    f"{[g.name for g in zero]}. Keep at least one channel group per node group.")
            builder = lambda: build_channel_subnet(self.space, self._prune, zero)  # noqa: E731
        segments = {s for g in zero for s in g.segments}
        if self.mode == "erase" and not valid_basic(self.space.dependency, segments):
            raise ConstructionError(
                "The zero groups disconnect the network (no path from input to output would remain): "
                + ", ".join(g.name for g in zero)
                + ". Use oto.is_valid_removal() to choose groups, or train with oto.h2spg()."
            )
        cap = self.space.captured
        if self.mode == "erase":
            plan = plan_subnet(self.space.trace, self.space.dependency, segments)
            builder = lambda: apply_plan(cap, self.space.trace, plan)  # noqa: E731
        try:
            subnet = builder()
            if merge_duplicates:
                merge_duplicate_ops(subnet)
        except ConstructionError:
            raise
        except Exception as err:
            raise ConstructionError(
                f"Building the sub-network failed after removing {[g.name for g in zero]}: {err}"
            ) from err
        subnet.train(self.model.training)
        bad = non_finite_tensors(subnet)
        if bad:
            raise ConstructionError(
                f"The sub-network's weights hold NaN/Inf: {', '.join(bad[:5])}. Training diverged or a weight was "
                "corrupted; reload a checkpoint from before (lower the learning rate), nothing was returned."
            )
        if verify:
            self._verify(subnet, zero, rtol=rtol, trials=trials)
        self._last_subnet = subnet
        self._last_removed = tuple(zero)
        if out_dir is not None:
            from otov3.errors import ExportError
            from otov3.subnet.export import export_subnet

            try:
                export_subnet(self, subnet, Path(out_dir), overwrite=overwrite)
            except ExportError as err:
                err.subnet = subnet
                raise
        return subnet

    @property
    def last_subnet(self) -> torch.fx.GraphModule | None:
        """The sub-network the last successful `construct_subnet` verified (kept even if writing files failed)."""
        return getattr(self, "_last_subnet", None)

    def _warn_nearly_zero(self, zero: list[Group]) -> None:
        near = [
            g.name for g in self.groups
            if g not in zero and g.norm() <= 1e-6 * math.sqrt(max(g.numel(), 1))
        ]
        if near:
            warnings.warn(
                f"GeZIG(s) {near} are nearly but not exactly zero and are kept in the sub-network.", stacklevel=3
            )

    def _verify(self, subnet: torch.fx.GraphModule, zero: list[Group], *, rtol: float, trials: int) -> None:
        cap = self.space.captured
        try:
            diff = max_relative_difference(self.model, subnet, cap.args, cap.kwargs, trials=trials, rtol=rtol)
        except ConstructionError as err:
            raise ConstructionError(f"Verifying the sub-network without {[g.name for g in zero]}: {err}") from err
        except Exception as err:
            raise ConstructionError(
                f"The sub-network without {[g.name for g in zero]} does not run: {err}"
            ) from err
        if diff > 1.0:  # diff is relative to the tolerance
            from otov3.subnet.verify import FLOAT64_AGREEMENT, float64_difference

            wide = float64_difference(self.model, subnet, cap.args, cap.kwargs, trials=trials)
            if wide is not None and wide <= FLOAT64_AGREEMENT:
                warnings.warn(
                    f"The sub-network's float32 outputs differ from the super-network's by {diff:.3g} times the "
                    f"allowed relative difference ({rtol:g}), but float64 copies agree to {wide:.2g}: the same "
                    "function, with float32 rounding that this network amplifies (the order of summation changed "
                    "where zero rows were cut). The sub-network was kept.", UserWarning, stacklevel=3)
                return
            node = first_divergent_node(cap.gm, subnet, cap.args, cap.kwargs, rtol)
            where = f" First divergent node: '{node}'." if node else ""
            raise ConstructionError(
                f"The sub-network's outputs differ from the super-network's by {diff:.3g} times the allowed "
                f"relative difference ({rtol:g}) after removing {[g.name for g in zero]}.{where} Nothing was "
                "returned; please report this model."
            )

    def compression_report(self, subnet: nn.Module | None = None) -> dict[str, float | int]:
        """Parameters and MACs (spec §7) of the super-network and of the sub-network; in both modes also after
        removal alone, and what removal and slimming each saved (``*_saved_by_removal``, ``*_saved_by_slimming``).
        When the newest optimizer has a budget: its limit (``budget_params`` or ``budget_macs``, absolute) and
        the size it predicted for its chosen groups (``predicted_params``, ``predicted_macs``).

        Args:
            subnet: the sub-network to measure; defaults to the last one `construct_subnet` built.
        """
        from otov3.metrics import count_flops, count_params

        subnet = subnet if subnet is not None else getattr(self, "_last_subnet", None)
        if subnet is None:
            raise ConstructionError("No sub-network yet: call oto.construct_subnet() first.")
        cap = self.space.captured
        example = _one_sample(cap.kwargs) if cap.kwargs else _one_sample(cap.args)
        before_p, after_p = count_params(self.model), count_params(subnet)
        before_f, after_f = count_flops(self.model, example), count_flops(subnet, example)
        report = {
            "params_before": before_p,
            "params_after": after_p,
            "params_ratio": after_p / before_p if before_p else 1.0,
            "macs_before": before_f,
            "macs_after": after_f,
            "macs_ratio": after_f / before_f if before_f else 1.0,
        }
        stages = getattr(self, "_stages", None)
        if stages is not None and subnet is stages.subnet:  # both modes: what removal and what slimming saved
            erased_p, erased_f = count_params(stages.erased), count_flops(stages.erased, example)
            report.update(params_after_removal=erased_p, macs_after_removal=erased_f,
                          params_saved_by_removal=before_p - erased_p, macs_saved_by_removal=before_f - erased_f,
                          params_saved_by_slimming=erased_p - after_p, macs_saved_by_slimming=erased_f - after_f)
        optimizer = getattr(self, "_optimizer", None)
        budget, predicted = getattr(optimizer, "budget", None), getattr(optimizer, "predicted_size", None)
        if budget is not None:
            report[f"budget_{budget.kind}"] = budget.limit
            if predicted is not None:
                report.update(predicted_params=predicted[0], predicted_macs=predicted[1])
        return report

    def visualize(self, out_dir: str | Path, *, svg: bool = True) -> list[Path]:
        """Draw the trace graph, the dependency graph (GeZIGs coloured, zero ones dashed) and the sub-network.

        Writes Graphviz DOT files, plus SVG when Graphviz's `dot` is installed (a warning says when it is not).
        """
        from otov3.viz.dot import dependency_dot, fx_dot, trace_dot
        from otov3.viz.render import write_graph

        out = Path(out_dir)
        space = self.space
        files = write_graph(trace_dot(space.trace), out / "trace_graph", svg=svg)
        if self._prune is not None:  # pruning mode: the trace graph with its node groups coloured
            from otov3.viz.dot import node_group_dot

            zeros = {g.node_group for g in self.zero_groups() if not g.is_gezig}
            groups = [(self._prune.names[g.id], g.vertices, g.prunable, g.id in zeros) for g in self._prune.node_groups]
            files += write_graph(node_group_dot(space.trace, groups), out / "channel_groups", svg=svg)
        if self.mode != "prune":  # erasing and both modes: the dependency graph with its GeZIGs
            zero = [s for g in self.zero_groups() if g.is_gezig for s in g.segments]
            gezigs = [(g.name, g.segments) for g in space.gezigs]
            files += write_graph(dependency_dot(space.trace, space.dependency, gezigs, zero),
                                 out / "dependency_graph", svg=svg)
        subnet = getattr(self, "_last_subnet", None)
        if subnet is not None:
            nodes = [
                (n.name, f"{n.name}\\n{type(subnet.get_submodule(n.target)).__name__}" if n.op == "call_module"
                 else f"{n.name}\\n{getattr(n.target, '__name__', n.target)}", [i.name for i in n.all_input_nodes])
                for n in subnet.graph.nodes
            ]
            files += write_graph(fx_dot(nodes), out / "subnet_graph", svg=svg)
        return files

    def summary(self) -> str:
        """A readable table of every parametric segment: group, ops, #params, status or reason (pruning mode:
        every node group with its channel groups, or the reason it is kept whole; both modes: both tables)."""
        if self._prune is not None:
            from otov3.prune_space import prune_summary

            table = prune_summary(self.space, self._prune)
            if getattr(self, "_both", None) is None:
                return table
            left = "".join(f"\n  left out: {g.name}: {why}" for g, why in self._both.left_out[:10])
            return f"{self._erase_summary()}\n\nChannel groups of the operations:\n{table}{left}"
        return self._erase_summary()

    def _erase_summary(self) -> str:
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
        captured = self.space.captured
        how = {"fx": "torch.fx", "export": "torch.export (non-strict, aten ops)"}.get(captured.backend,
                                                                                    captured.backend)
        why = f" ({captured.fallback_reason.splitlines()[0][:160]})" if captured.fallback_reason else ""
        lines.append(f"Captured with {how}{why}.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if getattr(self, "_both", None) is not None:
            return (f"OTO({type(self.model).__name__}, mode='both', gezigs={len(self._both.gezigs)}, "
                    f"channel_groups={len(self._both.channels)})")
        if self._prune is not None:
            return f"OTO({type(self.model).__name__}, mode='prune', channel_groups={len(self._prune.groups)})"
        return f"OTO({type(self.model).__name__}, gezigs={len(self.space.gezigs)})"
