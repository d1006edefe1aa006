"""Verification: float32 rounding amplified by a network is told apart from a wrong sub-network by comparing
float64 copies; a sub-network that computes another function is refused whatever the precision."""

from __future__ import annotations

import pytest
import torch

import otov3.api
from otov3 import OTO
from otov3.errors import ConstructionError
from otov3.subnet.verify import FLOAT64_AGREEMENT, float64_difference
from otov3.zoo import DemoSupNet
from subnet_equivalence import randomize_, zero_groups_

X = torch.randn(2, 1, 28, 28)


def _oto_with_zeros():
    model = randomize_(DemoSupNet(width=0.25), 3)
    oto = OTO(model, X)
    zero_groups_([oto.groups[0]])
    return model, oto


def test_float32_rounding_beyond_the_tolerance_is_accepted_when_float64_copies_agree():
    model, oto = _oto_with_zeros()
    with pytest.warns(UserWarning, match="float64 copies agree"):
        subnet = oto.construct_subnet(rtol=1e-14)  # below float32 rounding: only the float64 check can pass it
    assert float64_difference(model, subnet, (X,), {}) <= FLOAT64_AGREEMENT


def test_a_sub_network_that_computes_another_function_is_refused(monkeypatch):
    model, oto = _oto_with_zeros()
    real = otov3.api.apply_plan

    def wrong(*args, **kwargs):
        subnet = real(*args, **kwargs)
        with torch.no_grad():
            next(p for n, p in subnet.named_parameters() if "fc" in n or "linear" in n).add_(0.1)
        return subnet

    monkeypatch.setattr(otov3.api, "apply_plan", wrong)
    with pytest.raises(ConstructionError, match="differ from the super-network's by .* First divergent node"):
        oto.construct_subnet()
    assert oto.last_subnet is None
