"""`oto.hesso()` / `oto.dhspg()` in pruning mode (OTO(mode="prune")): a fraction of the channel groups is exactly
zero by the deadline, no node group loses every channel, and construct_subnet builds the promised network."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from otov3 import OTO, ConstructionError
from otov3.zoo import DemoSupNet
from subnet_equivalence import assert_subnet_equivalent

OPTS = {"hesso": {"periods": 2}, "dhspg": {}}


def _pruning_oto():
    torch.manual_seed(0)
    model = DemoSupNet(width=0.125)
    return model, OTO(model, torch.zeros(1, 1, 28, 28), mode="prune")


def _train(model, opt, steps: int, gen: torch.Generator) -> None:
    for _ in range(steps):
        opt.zero_grad()
        x, y = torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("method", list(OPTS))
def test_a_fraction_of_the_channel_groups_is_zero_at_the_deadline_and_the_subnet_is_exact(method):
    model, oto = _pruning_oto()
    opt = getattr(oto, method)(lr=0.01, momentum=0.9, target_group_sparsity=0.5, warmup_steps=2, hybrid_steps=6,
                               **OPTS[method])
    gen = torch.Generator().manual_seed(1)
    _train(model, opt, 5, gen)
    with pytest.raises(ConstructionError, match=r"(still non-zero|still to be chosen).*due by step 8"):
        oto.construct_subnet()
    _train(model, opt, 3, gen)
    zero = [g for g in oto.groups if g.is_zero()]
    assert len(zero) == int(0.5 * len(oto.groups)) == len(opt.zero_groups)
    sizes = Counter(g.node_group for g in oto.groups)
    assert all(n < sizes[ng] for ng, n in Counter(g.node_group for g in zero).items())
    subnet = oto.construct_subnet()
    assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in model.parameters())
    assert_subnet_equivalent(model, subnet, (torch.zeros(2, 1, 28, 28),))


@pytest.mark.parametrize("method", list(OPTS))
def test_pruning_mode_takes_the_target_as_a_fraction_only(method):
    _, oto = _pruning_oto()
    with pytest.raises(ValueError, match=r"target_group_sparsity=3: in pruning mode it is the fraction"):
        getattr(oto, method)(target_group_sparsity=3, warmup_steps=2, hybrid_steps=6)
