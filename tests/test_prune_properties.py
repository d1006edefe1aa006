"""Property-based, pruning mode (spec §4): random super-networks x random sets of zero channel groups -> the
sub-network returns the same outputs and has exactly the parameters left after removing those rows and the
columns that read them; channel groups and the rest cover every trainable scalar once.

OTOV3_PROPERTY_EXAMPLES=N overrides the number of examples (for quick local runs).
"""

from __future__ import annotations

import os
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otov3 import OTO
from prune_nets import expected_params, randomize_norms_
from subnet_equivalence import assert_subnet_equivalent, count, randomize_, zero_groups_
from supernets import random_supernets

EXAMPLES = int(os.environ.get("OTOV3_PROPERTY_EXAMPLES", "200"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _draw_zero(oto: OTO, data: st.DataObject) -> list:
    """A random subset of the channel groups, each node group keeping at least one."""
    picks = data.draw(st.lists(st.booleans(), min_size=len(oto.groups), max_size=len(oto.groups)), label="zero")
    chosen = [g for g, p in zip(oto.groups, picks, strict=True) if p]
    for ng in {g.node_group for g in oto.groups}:
        mine = [g for g in oto.groups if g.node_group == ng]
        if all(g in chosen for g in mine):
            chosen.remove(mine[data.draw(st.integers(0, len(mine) - 1), label="kept")])
    assert oto.is_valid_removal(chosen)
    return chosen


def _check(model: torch.nn.Module, x: torch.Tensor, data: st.DataObject, capture: str) -> None:
    seed = data.draw(st.integers(0, 2**16), label="seed")
    randomize_norms_(randomize_(model, seed=seed), seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, x, mode="prune", capture=capture)
    cover = {n: torch.zeros_like(p, dtype=torch.int64) for n, p in model.named_parameters() if p.requires_grad}
    for g in (*oto.groups, *oto.complementary):
        for s in g.slices:
            view = cover[s.name]
            view = view if s.index is None else view.narrow(s.dim, s.index.start, s.index.stop - s.index.start)
            view.add_(1)
    assert all(bool((c == 1).all()) for c in cover.values()), "groups must cover every trainable scalar once"
    if not oto.groups:
        return
    zero = _draw_zero(oto, data)
    zero_groups_(zero)
    want = expected_params(model, zero, (x,))
    sub = oto.construct_subnet()
    assert_subnet_equivalent(model, sub, (x,), expect_smaller=bool(zero), super_gm=oto.space.captured.gm)
    assert want is None or count(sub) == want, (count(sub), want, count(model), [g.name for g in zero])


@PROPERTY
@given(net=random_supernets(), data=st.data())
def test_random_zero_channel_groups_give_exact_subnets_with_exact_parameter_counts(net, data):
    model, x = net
    _check(model, x, data, "fx")


@settings(PROPERTY, max_examples=max(EXAMPLES // 20, 1))
@given(net=random_supernets(), data=st.data())
def test_random_zero_channel_groups_are_exact_under_torch_export_too(net, data):
    model, x = net
    _check(model, x, data, "export")
