"""Budget targets (issue 13): `target_params=` / `target_macs=` instead of a group count.

For a sweep of budgets over zoo models (erasing mode with H2SPG, pruning mode with DHSPG and HESSO), a short run on
random data past the deadline gives a sub-network that (1) meets the budget, (2) has exactly the predicted size and
(3) is minimal: its groups are the shortest prefix of the optimizer's admission walk that fits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otov3 import OTO
from otov3.optim._budget import shortest_fitting_prefix
from otov3.zoo import DemoSupNet, StackedUnets, SuperResNet


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus an identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A residual network: stem, three basic blocks (the last one strided with a projection), pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 16, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


MODELS = {
    "demo": (lambda: DemoSupNet(width=0.125), (1, 28, 28)),
    "unets": (lambda: StackedUnets(widths=(8, 8, 8, 8)), (3, 32, 32)),
    "super_resnet": (lambda: SuperResNet(stem_width=8, widths=(8, 16), depths=(2, 1), strides=(1, 2)), (3, 32, 32)),
    "resnet": (TinyResNet, (3, 32, 32)),
}
METHODS = [("erase", "h2spg"), ("prune", "dhspg"), ("prune", "hesso")]
# (kind, value, absolute): an absolute budget is value x the super-network's size, passed as a count
BUDGETS = [("macs", 0.7, False), ("macs", 0.45, False), ("params", 0.5, False), ("macs", 0.85, True),
           ("params", 0.9, True)]
WARMUP, HYBRID = 2, 4


def _oto(name: str, mode: str) -> tuple[nn.Module, OTO, tuple[int, ...]]:
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make()
    return model, OTO(model, torch.zeros(1, *shape), mode=mode), shape


def _train(model: nn.Module, opt: torch.optim.Optimizer, shape: tuple[int, ...], steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        x, y = torch.randn(2, *shape, generator=gen), torch.randint(0, 10, (2,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _walk_order(opt, method: str) -> list[int]:
    """The optimizer's score order: most redundant first (HESSO: least important), ties by MACs then index."""
    macs = [g.macs for g in opt._groups]
    if method == "hesso":
        imp = opt.importance_scores.tolist()
        return sorted(range(len(macs)), key=lambda i: (imp[i], macs[i], i))
    s = opt.redundancy_scores.tolist()
    return sorted(range(len(macs)), key=lambda i: (-s[i], macs[i], i))


def _assert_minimal_prefix(oto: OTO, opt, method: str, chosen: list[int], kind: str, limit: float) -> None:
    """Every group ranked above the last admitted one was admitted unless the validity rule refused it, and
    the set without the last admitted group would not fit the budget."""
    order = _walk_order(opt, method)
    rank = {g: r for r, g in enumerate(order)}
    last = max(chosen, key=rank.__getitem__)
    admitted: list[int] = []
    for g in order[: rank[last] + 1]:
        if g in chosen:
            assert oto.is_valid_indices([*admitted, g])
            admitted.append(g)
        else:
            assert not oto.is_valid_indices([*admitted, g]), f"admissible group {oto.groups[g].name} left out"
    assert sorted(admitted) == sorted(chosen)
    groups = oto.groups
    assert oto.predict_size([groups[i] for i in chosen])[kind] <= limit
    assert oto.predict_size([groups[i] for i in chosen if i != last])[kind] > limit


@pytest.mark.parametrize("kind,value,absolute", BUDGETS, ids=[f"{k}-{v}{'-abs' if a else ''}" for k, v, a in BUDGETS])
@pytest.mark.parametrize("mode,method", METHODS, ids=[m for _, m in METHODS])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_subnetwork_meets_the_budget_has_the_predicted_size_and_is_minimal(name, mode, method, kind, value,
                                                                               absolute):
    model, oto, shape = _oto(name, mode)
    reference = oto._size_predictor().reference[0 if kind == "params" else 1]
    target = round(value * reference) if absolute else value
    opt = getattr(oto, method)(lr=0.01, momentum=0.9, warmup_steps=WARMUP, hybrid_steps=HYBRID,
                               **{f"target_{kind}": target})
    limit = target if absolute else value * reference
    _train(model, opt, shape, WARMUP + HYBRID + 1)
    chosen = [oto.groups.index(g) for g in opt.redundant_groups]
    assert opt.metrics()["target_k"] == len(chosen) > 0
    assert {g.name for g in oto.zero_groups()} == {oto.groups[i].name for i in chosen}

    oto.construct_subnet()  # verifies the outputs against the super-network's
    report = oto.compression_report()
    assert report[f"{kind}_after"] <= limit == report[f"budget_{kind}"]
    assert (report["predicted_params"], report["predicted_macs"]) == (report["params_after"], report["macs_after"])
    _assert_minimal_prefix(oto, opt, method, chosen, kind, limit)


@pytest.mark.parametrize("mode,method", METHODS, ids=[m for _, m in METHODS])
@pytest.mark.parametrize("kind", ["params", "macs"])
def test_an_unreachable_budget_is_refused_with_the_smallest_reachable_size(mode, method, kind):
    _, oto, _ = _oto("demo", mode)
    with pytest.raises(ValueError, match=rf"target_{kind}=1 .*cannot be reached: the smallest reachable size.* is "
                                         rf"[\d,]+ (parameters|MACs) \(0\.\d+ of the super-network's"):
        getattr(oto, method)(warmup_steps=WARMUP, hybrid_steps=HYBRID, **{f"target_{kind}": 1})


@pytest.mark.parametrize("kwargs,message", [
    ({"target_params": 0.5, "target_macs": 0.5}, "at most one of target_params and target_macs"),
    ({"target_group_sparsity": 0.5, "target_macs": 0.5}, "either target_group_sparsity=0.5 or target_macs=0.5"),
    ({"target_macs": 0}, "target_macs=0 must be a fraction"),
    ({"target_params": -3}, "target_params=-3 must be a fraction"),
    ({"target_macs": float("nan")}, "target_macs=nan must be a fraction"),
    ({"target_macs": float("inf")}, "target_macs=inf must be a fraction"),
    ({"target_params": True}, "target_params=True must be a fraction"),
    ({"target_params": "0.5"}, "target_params='0.5' must be a fraction"),
    ({"target_params": 10**9}, "is not below the super-network's size"),
])
@pytest.mark.parametrize("mode,method", METHODS, ids=[m for _, m in METHODS])
def test_bad_budget_arguments_are_refused(mode, method, kwargs, message):
    _, oto, _ = _oto("demo", mode)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        getattr(oto, method)(warmup_steps=WARMUP, hybrid_steps=HYBRID, **kwargs)


def test_the_prefix_search_finds_the_shortest_fitting_prefix_with_few_calls():
    sizes = [100, 90, 90, 70, 41, 40, 40, 12, 5, 5, 1]  # size after removing the first k of the walk, monotone
    walk = list(range(10))
    for limit in [100, 95, 90, 89, 40, 39, 12, 5, 1]:
        calls: list[int] = []

        def fits(removed: frozenset[int], limit=limit, calls=calls) -> bool:
            calls.append(len(removed))
            return sizes[len(removed)] <= limit

        k = shortest_fitting_prefix(walk, fits)
        assert k == min(j for j, s in enumerate(sizes) if s <= limit)
        assert len(calls) <= 6  # the whole walk once, then log2(11) halvings
    assert shortest_fitting_prefix(walk, lambda removed: False) is None
    assert shortest_fitting_prefix([], lambda removed: True) == 0


@pytest.mark.parametrize("method", ["dhspg", "hesso"])
def test_dhspg_and_hesso_meet_a_budget_in_erasing_mode_too(method):
    model, oto, shape = _oto("super_resnet", "erase")
    opt = getattr(oto, method)(lr=0.01, momentum=0.9, target_macs=0.5, warmup_steps=WARMUP, hybrid_steps=HYBRID)
    _train(model, opt, shape, WARMUP + HYBRID + 1)
    chosen = [oto.groups.index(g) for g in opt.redundant_groups]
    oto.construct_subnet()
    report = oto.compression_report()
    assert report["macs_after"] <= 0.5 * report["macs_before"] and report["predicted_macs"] == report["macs_after"]
    _assert_minimal_prefix(oto, opt, method, chosen, "macs", 0.5 * report["macs_before"])
