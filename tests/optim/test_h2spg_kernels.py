"""Hand-computed cases of the pure H2SPG kernels (spec §5.2–§5.5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otov3.optim import kernels
from otov3.optim._halfspace import decide
from otov3.optim._layout import CHUNK, chunk_rows


def _lam(x: list[float], d: list[float], lam: float = 1e-3, eta: float = 2.0, kappa: float = 10.0) -> float:
    xt, dt = torch.tensor(x, dtype=torch.float64), torch.tensor(d, dtype=torch.float64)
    out = kernels.lambda_rule(torch.dot(xt, dt).reshape(1), xt.norm().reshape(1), dt.norm().reshape(1),
                              lam=lam, eta=eta, kappa=kappa)
    return float(out[0])


def test_lambda_rule_returns_lambda_when_plain_step_already_shrinks():
    assert _lam([1.0, 0.0], [1.0, 0.0]) == 1e-3  # ⟨x,d⟩ > 0
    assert _lam([1.0, 0.0], [0.0, 1.0]) == 1e-3  # ⟨x,d⟩ = 0


def test_lambda_rule_clips_eta_lb_to_lambda_and_kappa_lambda():
    # lb = 1e-4, η·lb = 2e-4 < λ  → λ
    assert _lam([1.0, 0.0], [-1e-4, 1.0]) == pytest.approx(1e-3)
    # lb = 0.003, η·lb = 0.006 inside [λ, κλ], ub ≈ 333 → 0.006
    assert _lam([1.0, 0.0], [-0.003, 1.0]) == pytest.approx(0.006)
    # lb = 0.1, η·lb = 0.2 > κλ = 0.01, ub = 0.1 → 0.01
    assert _lam([1.0, 0.0], [-0.1, 0.0]) == pytest.approx(0.01)


def test_lambda_rule_falls_back_to_midpoint_when_clipped_value_reaches_ub():
    # x = (2, 0), d = (-0.004, 0.003): ⟨x,d⟩ = -0.008, lb = 0.004, ub = ‖d‖²‖x‖/0.008 = 0.00625,
    # η·lb = 0.008 ≥ ub → (lb + ub)/2 = 0.005125
    assert _lam([2.0, 0.0], [-0.004, 0.003]) == pytest.approx(0.005125)


def test_lambda_rule_is_batched_over_groups():
    xd = torch.tensor([1.0, -0.003, -0.1], dtype=torch.float64)
    out = kernels.lambda_rule(xd, torch.ones(3, dtype=torch.float64),
                              torch.tensor([1.0, math.hypot(0.003, 1.0), 0.1], dtype=torch.float64),
                              lam=1e-3, eta=2.0, kappa=10.0)
    assert out.tolist() == pytest.approx([1e-3, 0.006, 0.01])


def test_half_space_projection_zeroes_outside_half_space_and_keeps_inside():
    x = torch.tensor([1.0, 1.0])
    assert torch.equal(kernels.half_space_project(torch.tensor([0.5, 0.5]), x, 0.95), torch.zeros(2))
    kept = torch.tensor([0.98, 0.98])  # ⟨x̃,x⟩ = 1.96 ≥ 0.95·2
    assert torch.equal(kernels.half_space_project(kept, x, 0.95), kept)
    # ε = 0 projects only when the step flips the component along x
    assert torch.equal(kernels.half_space_project(torch.tensor([-0.1, 0.05]), x, 0.0), torch.zeros(2))
    assert torch.equal(kernels.half_space_project(torch.tensor([0.1, -0.05]), x, 0.0), torch.tensor([0.1, -0.05]))


def test_half_space_mask_never_selects_zero_groups():
    mask = kernels.half_space_mask(torch.tensor([0.0, 1.0, 1.9]), torch.tensor([0.0, 2.0, 2.0]), 0.95)
    assert mask.tolist() == [False, True, False]


def test_reference_redundant_step_matches_formula():
    x = torch.tensor([3.0, 4.0], dtype=torch.float64)
    d = torch.tensor([0.5, -1.0], dtype=torch.float64)  # ⟨x,d⟩ = -2.5 < 0: lb = 0.5, ub = 1.25·5/2.5 = 2.5
    out = kernels.reference_redundant_step(x, d, lr=0.1, lam=0.1, eta=2.0, kappa=10.0, epsilon=0.5)
    lam_g = 1.0  # η·lb = 1.0 = κλ, below ub
    expected = x - 0.1 * (d + lam_g * x / 5.0)
    assert torch.allclose(out, expected)
    assert torch.allclose(out, torch.tensor([2.89, 4.02], dtype=torch.float64))
    assert torch.equal(kernels.reference_redundant_step(x, d, lr=10.0, lam=0.1, eta=2.0, kappa=10.0,
                                                        epsilon=0.5), torch.zeros(2, dtype=torch.float64))


def test_dhspg_scores_mix_normalised_cosine_and_inverse_magnitude():
    # g0: x = d = (3, 4) → cos 1, a = 5/2; g1: x = (1, 0), d = (0, 1) → cos 0, a = 1
    s = kernels.dhspg_scores(torch.tensor([25.0, 0.0], dtype=torch.float64),
                             torch.tensor([25.0, 1.0], dtype=torch.float64),
                             torch.tensor([25.0, 1.0], dtype=torch.float64),
                             torch.tensor([2.0, 1.0], dtype=torch.float64))
    r = torch.tensor([1 / (2.5 + 1e-6), 1 / (1 + 1e-6)], dtype=torch.float64)
    expected = 0.5 * torch.tensor([1.0, 0.0], dtype=torch.float64) + 0.5 * r / r.norm()
    assert torch.allclose(s, expected)


def test_dhspg_scores_treat_zero_norms_as_zero_cosine():
    s = kernels.dhspg_scores(torch.zeros(2, dtype=torch.float64), torch.tensor([0.0, 4.0], dtype=torch.float64),
                             torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert torch.isfinite(s).all()
    assert s[0] > s[1]  # the zero group has the largest inverse magnitude


def _demo_valid(removed: frozenset[int]) -> bool:
    # DemoSupNet (spec §3.4), GeZIGs [g2, g3, g4, g7, g8]: Concat keeps one of g2..g4, Add keeps one of g7, g8
    return not ({0, 1, 2} <= removed or {3, 4} <= removed)


def test_greedy_select_reproduces_demosupnet_worked_example():
    scores = [0.6, 0.5, 0.4, 0.7, 0.8]  # g8 > g7 > g2 > g3 > g4
    sel = kernels.greedy_select(scores, [0] * 5, 3, _demo_valid)
    assert sel.selected == (4, 0, 1)  # g8, g2, g3
    assert sel.rejected == (3,)  # g7: the Add would lose both inputs


def test_greedy_select_breaks_ties_by_fewer_macs():
    sel = kernels.greedy_select([1.0, 1.0, 1.0], [30, 10, 20], 2, lambda r: True)
    assert sel.selected == (1, 2)


def test_greedy_select_stops_short_when_validity_forbids():
    sel = kernels.greedy_select([3.0, 2.0, 1.0], [0, 0, 0], 3, lambda r: len(r) <= 1)
    assert sel.selected == (0,)
    assert sel.rejected == (1, 2)


def test_target_count_from_int_and_fraction():
    assert kernels.target_count(3, 5) == 3
    assert kernels.target_count(0.6, 5) == 3
    assert kernels.target_count(0.9999, 10) == 9  # min(ρ, 0.999)


@pytest.mark.parametrize(("target", "pattern"), [
    (6, r"target_group_sparsity=6"), (0, r"target_group_sparsity=0"), (1.5, r"target_group_sparsity=1\.5"),
    (0.1, r"target_group_sparsity=0\.1 gives K=0"), (True, r"target_group_sparsity"),
])
def test_target_count_rejects_out_of_range(target, pattern):
    with pytest.raises(ValueError, match=pattern):
        kernels.target_count(target, 5)


def test_forcing_factors_decay_linearly_to_exact_zero_at_deadline():
    deadline, window = 80, kernels.forcing_window(60, 0.5)
    assert window == 30
    assert kernels.forcing_factor(50, deadline, window) == 1.0
    assert kernels.forcing_factor(51, deadline, window) == pytest.approx(29 / 30)
    assert kernels.forcing_factor(80, deadline, window) == 0.0
    assert kernels.forcing_factor(81, deadline, window) == 1.0
    envelope = math.prod(kernels.forcing_factor(t, deadline, window) for t in range(51, 66))
    assert envelope == pytest.approx(15 / 30)


def test_segment_sum_adds_slices_into_their_groups():
    out = kernels.segment_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 0]), 2)
    assert out.tolist() == [4.0, 2.0]


# Zero, or at least 1e-6 in magnitude: with |x| ~ 1e-120 beside |d| ~ 1 the half-space test is decided by the
# rounding of two cancelling 1e-121 terms against ‖x‖² ~ 1e-240, so the two implementations may round either way.
_floats = st.one_of(st.just(0.0), st.floats(1e-6, 10.0), st.floats(-10.0, -1e-6))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_floats, _floats, _floats, _floats), min_size=1, max_size=6))
def test_scalar_and_batched_kernels_agree(rows):
    # a random 2-d x and d per group: the reductions are then consistent (Cauchy–Schwarz holds)
    x = torch.tensor([[a, b] for a, b, _, _ in rows], dtype=torch.float64)
    d = torch.tensor([[c, e] for _, _, c, e in rows], dtype=torch.float64)
    xd, x_sq, d_sq = (x * d).sum(1), (x * x).sum(1), (d * d).sum(1)
    numel = torch.full((len(rows),), 2.0, dtype=torch.float64)
    batched = kernels.dhspg_scores(xd, x_sq, d_sq, numel)
    scalar = kernels.dhspg_scores_scalar(xd.tolist(), x_sq.tolist(), d_sq.tolist(), numel.tolist())
    assert batched.tolist() == pytest.approx(scalar, rel=1e-9, abs=1e-12)
    lam_b = kernels.lambda_rule(xd, x_sq.sqrt(), d_sq.sqrt(), lam=1e-2, eta=20.0, kappa=1e3)
    lam_s = [kernels.lambda_rule_scalar(a, math.sqrt(b), math.sqrt(c), lam=1e-2, eta=20.0, kappa=1e3)
             for a, b, c in zip(xd.tolist(), x_sq.tolist(), d_sq.tolist(), strict=True)]
    assert lam_b.tolist() == pytest.approx(lam_s, rel=1e-9)


def _decide_scalar(local, per_slice, alpha, is_target, cfg, force):
    """Per-group reference on Python floats (what the removed `_decide.decide_scalar` computed)."""
    groups = range(len(is_target))
    tot = [[sum(r[j] for r, g in zip(per_slice, local, strict=True) if g == k) for j in range(3)] for k in groups]
    shrink = []
    for x_sq, xd, d_sq in tot:
        lam_g = kernels.lambda_rule_scalar(xd, math.sqrt(x_sq), math.sqrt(d_sq), lam=cfg["lam"], eta=cfg["eta"],
                                           kappa=cfg["kappa"])
        shrink.append(lam_g / math.sqrt(x_sq) if x_sq > 0 else 0.0)
    trial = [0.0] * len(tot)
    for k, (x_sq, xd, _) in enumerate(per_slice):
        trial[local[k]] += (1 - alpha[k] * shrink[local[k]]) * x_sq - alpha[k] * xd
    project = [g for g in groups if is_target[g] and (force or tot[g][0] == 0 or trial[g] < cfg["epsilon"] * tot[g][0])]
    return project, [s if t else 0.0 for s, t in zip(shrink, is_target, strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), _floats, _floats, st.floats(0.01, 1.0)), min_size=1, max_size=8),
       st.lists(st.booleans(), min_size=3, max_size=3), st.booleans())
def test_scalar_and_batched_decisions_agree(slices, is_target, force):
    local = [g for g, _, _, _ in slices]
    x = [a for _, a, _, _ in slices]
    d = [b for _, _, b, _ in slices]
    alpha = [lr for _, _, _, lr in slices]
    per_slice = [[a * a, a * b, b * b] for a, b in zip(x, d, strict=True)]
    cfg = {"lam": 0.05, "eta": 2.0, "kappa": 10.0, "epsilon": 0.9}
    project, shrink = _decide_scalar(local, per_slice, alpha, is_target, cfg, force)
    rows = torch.tensor([[xs, xd, ds, xs, lr * xs, lr * xd] for (xs, xd, ds), lr in zip(per_slice, alpha, strict=True)],
                        dtype=torch.float64)
    per_group = torch.zeros(3, 6, dtype=torch.float64).index_add_(0, torch.tensor(local), rows)
    got, c = decide(per_group, torch.tensor(is_target), **cfg, force=force)
    assert got.nonzero().flatten().tolist() == project
    assert c.tolist() == pytest.approx(shrink, rel=1e-9)


def test_chunk_rows_never_straddle_a_row_and_split_only_rows_larger_than_a_chunk():
    pieces = chunk_rows(10 * 300, [True, False] * 5)  # 10 rows of 300
    covered = [i for p in pieces for i in range(p.lo, p.hi)]
    assert covered == list(range(3000))
    assert all(p.hi - p.lo <= CHUNK and p.lo % 300 == 0 and p.hi % 300 == 0 and not p.partial for p in pieces)
    wide = chunk_rows(2 * (CHUNK + 5), [False, True])  # rows wider than a chunk: parts of one row each
    assert [(p.r0, p.hi - p.lo, p.owned) for p in wide] == [(0, CHUNK, False), (0, 5, False), (1, CHUNK, True),
                                                           (1, 5, True)]
    assert all(p.partial for p in wide)
