"""The fused C kernels of the optimizer engine (`otov3.optim._native`): built where a compiler exists, the same
results as the eager passes and spec §5.1 (bit for bit where torch's operations are correctly rounded),
independent of the thread count, and a clean fallback to the eager engine when disabled or not buildable."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otov3.optim import DHSPG, H2SPG, HESSO, _native
from otov3.optim._halfspace import decide
from otov3.space import Group, GroupKind, ParamSlice

needs_kernels = pytest.mark.skipif(not _native.available(), reason=f"fused kernels unavailable: {_native.status()}")

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_kernels_are_built_wherever_a_c_compiler_exists():
    if shutil.which("cc") or shutil.which("gcc"):
        assert _native.available() and _native.status().startswith("loaded"), _native.status()


# ------------------------------------------------------------------------------------------ per-group maths
_sums = st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: 0.0 if abs(v) < 1e-3 else v)


@needs_kernels
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_sums, _sums, _sums, _sums, st.booleans()), min_size=1, max_size=12),
       st.booleans(), st.sampled_from([1.0, 0.75, 0.0]))
def test_halfspace_kernel_equals_the_torch_rule(rows, force, post):
    x_sq = torch.tensor([abs(r[0]) for r in rows], dtype=torch.float64)
    d_sq = torch.tensor([abs(r[2]) for r in rows], dtype=torch.float64)
    xd = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    alpha, keep = 0.05, 0.999
    per_group = torch.stack((x_sq, xd, d_sq, keep * x_sq, alpha * x_sq, alpha * xd), dim=1)
    targets = torch.tensor([r[4] for r in rows])
    options = {"lam": 1e-3, "eta": 2.0, "kappa": 10.0, "epsilon": 0.95, "force": force}
    project, c = decide(per_group, targets, **options)
    n_project, c_n, m_n, count = _native.halfspace(per_group, targets, post=post, **options)
    assert torch.equal(project, n_project) and count == int(project.sum())
    # torch's vectorised float64 sqrt may be 1 ulp off the correctly rounded one the kernel uses
    assert torch.allclose(torch.where(project, 0.0, c), c_n, rtol=1e-14, atol=0)
    assert torch.equal(torch.where(project, 0.0, torch.where(targets, post, 1.0)), m_n)


@needs_kernels
def test_row_factors_and_group_sums_equal_the_torch_path():
    gen = torch.Generator().manual_seed(0)
    n_groups, n_rows = 7, 40
    row_group = torch.randint(0, n_groups + 1, (n_rows,), generator=gen)  # n_groups: rows no group owns
    c, m = torch.rand(n_groups, generator=gen, dtype=torch.float64), torch.rand(n_groups, generator=gen,
                                                                                dtype=torch.float64)
    alpha, keep = torch.rand(n_rows, generator=gen, dtype=torch.float64), 1 - torch.rand(n_rows, dtype=torch.float64)
    ext = torch.zeros(n_groups + 1, dtype=torch.float64)
    m_rows = torch.cat((m, ext[:1] + 1))[row_group]
    ma_rows = m_rows * (keep - alpha * torch.cat((c, ext[:1]))[row_group])
    for dtype in (torch.float32, torch.float64):
        out_m, out_ma = torch.empty(n_rows, dtype=dtype), torch.empty(n_rows, dtype=dtype)
        _native.row_factors(row_group, n_groups, c, m, alpha, keep, out_m, out_ma)
        assert torch.equal(out_m, m_rows.to(dtype)) and torch.equal(out_ma, ma_rows.to(dtype))
    sums = torch.randn(n_rows, 3, generator=gen, dtype=torch.float64)
    factors = (1.0, 0.5, 0.25, 0.99, 0.1, 0.05)
    expected = torch.zeros(n_groups + 1, 3, dtype=torch.float64).index_add_(0, row_group, sums)[:-1]
    expected = expected[:, [0, 1, 2, 0, 0, 1]] * torch.tensor(factors, dtype=torch.float64)
    assert torch.equal(_native.group_sums(row_group, sums, n_groups, factors), expected)
    sums[3, 1] = float("nan")
    assert _native.group_sums(row_group, sums, n_groups, factors) is None


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_nonfinite_names_the_first_tensor_with_nan_or_inf(dtype):
    tensors = [torch.randn(n, dtype=dtype) for n in (5, 70000, 3, 129)]
    assert _native.first_nonfinite(tensors) == -1
    tensors[2][1] = float("inf")
    tensors[3][128] = float("nan")
    assert _native.first_nonfinite(tensors) == 2
    tensors[2][1] = 0.0
    assert _native.first_nonfinite(tensors) == 3


# ------------------------------------------------------------------------------------------- the row passes
def _reference_sgd(x, g, b, keep, *, momentum, dampening, wd, fresh):
    """Spec §5.1 in float64: the direction d (and the new buffer) per element, keep applied per row."""
    k = keep[:, None]
    if b is None or fresh:  # no buffer, or a fresh one: torch.optim.SGD starts it at ∇f + wd·x, no dampening
        return g * k + wd * x
    return (momentum * b + (1 - dampening) * g) * k + wd * (1 - dampening) * x


@needs_kernels
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 9), width=st.integers(1, 700), dtype=st.sampled_from([torch.float32, torch.float64]),
       momentum=st.sampled_from([0.0, 0.9]), dampening=st.sampled_from([0.0, 0.3]), wd=st.sampled_from([0.0, 1e-2]),
       mode=st.sampled_from(["hold", "plain", "factors"]), fresh=st.booleans(), seed=st.integers(0, 2**16))
def test_sgd_kernel_matches_spec_5_1_with_row_reductions(rows, width, dtype, momentum, dampening, wd, mode, fresh,
                                                         seed):
    gen = torch.Generator().manual_seed(seed)
    x, g, b = (torch.randn(rows, width, generator=gen, dtype=dtype) for _ in range(3))
    keep = (torch.rand(rows, generator=gen) > 0.3).to(dtype)
    x[keep == 0] = 0
    b[keep == 0] = 0
    fa, fm = torch.rand(rows, generator=gen, dtype=dtype), torch.rand(rows, generator=gen, dtype=dtype)
    x64, g64, b64 = (t.to(torch.float64, copy=True) for t in (x, g, b))  # the kernel writes x (and b) in place
    d = _reference_sgd(x64, g64, None if momentum == 0 else b64, keep.double(), momentum=momentum,
                       dampening=dampening, wd=wd, fresh=fresh)
    flags = _native.SUMS | {"hold": _native.HOLD, "plain": _native.PLAIN, "factors": _native.FACTORS}[mode]
    flags |= _native.FRESH if fresh else 0
    sums = torch.zeros(rows, 3, dtype=torch.float64)
    _native.sgd([x], [g], None if momentum == 0 else [b], [rows, width, 0, flags], keep=keep, sums=sums, fa=fa,
                fm=fm, held=None, momentum=momentum, dampening=dampening, weight_decay=wd, lr=0.1)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    expected = {"hold": x64, "plain": x64 - 0.1 * d,
                "factors": fa.double()[:, None] * x64 - 0.1 * fm.double()[:, None] * d}[mode]
    assert torch.allclose(x.double(), expected, **tol)
    if momentum:
        assert torch.allclose(b.double(), d, **tol)
    reduced = torch.stack(((x64 * x64).sum(1), (x64 * d).sum(1), (d * d).sum(1)), dim=1)
    scale = (reduced[:, 0] + reduced[:, 2])[:, None] + 1e-30  # ⟨x,d⟩ may cancel: its error scales with ‖x‖‖d‖
    assert bool(((sums - reduced).abs() <= (1e-5 if dtype == torch.float32 else 1e-12) * scale).all())


@needs_kernels
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_kernel_holds_u_or_steps_like_torch_adam(decoupled, dtype):
    gen = torch.Generator().manual_seed(1)
    rows, width = 6, 333
    x, g = torch.randn(rows, width, generator=gen, dtype=dtype), torch.randn(rows, width, generator=gen, dtype=dtype)
    m, v = 0.1 * torch.randn(rows, width, generator=gen, dtype=dtype), torch.rand(rows, width, generator=gen,
                                                                                  dtype=dtype)
    lr, wd, t = 1e-2, 1e-2, 3
    b1, b2, eps = 0.9, 0.999, 1e-8
    bias1, bias2_sqrt = 1 - b1 ** t, (1 - b2 ** t) ** 0.5
    sigma = bias2_sqrt / bias1
    x64 = x.to(torch.float64, copy=True)
    g64 = g.double() + (0 if decoupled else wd * x64)
    m64, v64 = m.to(torch.float64, copy=True), v.to(torch.float64, copy=True)
    m_ref = m64 + (1 - b1) * (g64 - m64)
    v_ref = b2 * v64 + (1 - b2) * g64 * g64
    u_ref = m_ref / (v_ref.sqrt() + eps * bias2_sqrt)
    x_before, held, u = x.clone(), x.clone(), torch.empty_like(x)
    for target, mode, us in ((held, _native.HOLD, [u]), (x, _native.PLAIN, [None])):
        mm, vv = m.clone(), v.clone()
        _native.adam([target], [g], [mm], [vv], us, [rows, width, 0, mode], [eps * bias2_sqrt, 0.0, -lr * sigma],
                     keep=None, sums=None, fa=None, fm=None, held=None, betas=(b1, b2), weight_decay=wd,
                     decoupled=decoupled, lr=lr)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert torch.equal(held, x_before) and torch.allclose(u.double(), u_ref, **tol)  # held: x waits, u kept
    decay = 1 - lr * wd if decoupled else 1.0
    assert torch.allclose(x.double(), decay * x64 - lr * sigma * u_ref, **tol)


@needs_kernels
def test_held_rows_wait_and_the_others_take_the_plain_step_and_finish_moves_only_the_held():
    gen = torch.Generator().manual_seed(2)
    rows, width = 8, 50
    x, g, b = (torch.randn(rows, width, generator=gen) for _ in range(3))
    x0 = x.clone()
    held = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1], dtype=torch.uint8)
    _native.sgd([x], [g], [b], [rows, width, 0, _native.HOLD], keep=None, sums=None, fa=None, fm=None, held=held,
                momentum=0.9, dampening=0.0, weight_decay=0.0, lr=0.1)
    waiting = held.bool()
    assert torch.equal(x[waiting], x0[waiting])
    assert torch.allclose(x[~waiting], x0[~waiting] - 0.1 * b[~waiting], atol=1e-7)
    fa, fm = torch.full((rows,), 0.5), torch.full((rows,), 2.0)
    moved = x.clone()
    _native.finish([x], [b], [rows, width, 0, 0], [-0.1, 0.0], fa=fa, fm=fm, held=held)
    assert torch.equal(x[~waiting], moved[~waiting])
    assert torch.allclose(x[waiting], 0.5 * x0[waiting] - 0.1 * 2.0 * b[waiting], atol=1e-7)


@needs_kernels
def test_results_do_not_depend_on_the_number_of_threads():
    gen = torch.Generator().manual_seed(3)
    rows, width = 16, 1 << 16  # 1 Mi scalars: split over threads by whole rows
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            gen.manual_seed(3)
            x, g, b = (torch.randn(rows, width, generator=gen) for _ in range(3))
            sums = torch.zeros(rows, 3, dtype=torch.float64)
            _native.sgd([x], [g], [b], [rows, width, 0, _native.SUMS | _native.PLAIN], keep=None, sums=sums,
                        fa=None, fm=None, held=None, momentum=0.9, dampening=0.0, weight_decay=1e-4, lr=0.1)
            runs.append((x, b, sums))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(runs[0], other, strict=True))


# ------------------------------------------------------------------- the engine on random layouts, both ways
def _random_model(draw_seed: int):
    """Random parameters (conv-like, linear-like, vectors) and groups: whole parameters, dim-0 channel groups tied
    across parameters of the same width, and unowned parameters."""
    gen = torch.Generator().manual_seed(draw_seed)
    params, groups = [], []
    n_params = int(torch.randint(2, 7, (1,), generator=gen))
    for _ in range(n_params):
        shape = [int(torch.randint(1, 9, (1,), generator=gen))]
        shape += [int(torch.randint(1, 6, (1,), generator=gen)) for _ in range(int(torch.randint(0, 3, (1,),
                                                                                                generator=gen)))]
        params.append(torch.nn.Parameter(torch.randn(*shape, generator=gen)))
    kind = torch.randint(0, 3, (n_params,), generator=gen).tolist()
    channel = [i for i in range(n_params) if kind[i] == 1]
    for i in range(n_params):
        if kind[i] == 0:
            groups.append(Group(f"whole{i}", GroupKind.GEZIG, (ParamSlice(f"p{i}", params[i]),), (f"p{i}",), 0))
    by_rows: dict[int, list[int]] = {}
    for i in channel:
        by_rows.setdefault(params[i].shape[0], []).append(i)
    for n, members in by_rows.items():
        for j in range(n):
            slices = tuple(ParamSlice(f"p{i}", params[i], slice(j, j + 1)) for i in members)
            groups.append(Group(f"ch{members[0]}[{j}]", GroupKind.CHANNEL, slices, (f"p{members[0]}",), 0))
    return params, groups


@needs_kernels
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), cls=st.sampled_from([H2SPG, DHSPG, HESSO]),
       variant=st.sampled_from(["sgd", "adam", "adamw"]), momentum=st.sampled_from([0.0, 0.9]))
def test_the_engine_gives_the_same_run_with_and_without_the_kernels(seed, cls, variant, momentum):
    runs = []
    for use in (True, False):
        params, groups = _random_model(seed)
        if not groups:
            return
        extra = {"momentum": momentum, "weight_decay": 1e-3} if variant == "sgd" else {}
        valid = (lambda removed: True) if cls is H2SPG else None
        args = (valid,) if cls is not HESSO else ()
        opt = cls(params, groups, *args, target_group_sparsity=max(1, len(groups) // 2), warmup_steps=2,
                  hybrid_steps=4, variant=variant, lr=0.05, **extra)
        gen = torch.Generator().manual_seed(seed + 1)
        original = _native.available
        try:
            if not use:
                _native.available = lambda: False
            for _ in range(8):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
        finally:
            _native.available = original
        runs.append((params, [g.name for g in opt.zero_groups]))
    (a, zero_a), (b, zero_b) = runs
    assert zero_a == zero_b
    for pa, pb in zip(a, b, strict=True):
        assert torch.allclose(pa, pb, atol=1e-5, rtol=1e-5)
        assert torch.equal(pa == 0, pb == 0)


@needs_kernels
@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_a_state_dict_loaded_into_the_running_optimizer_replaces_the_buffers_the_kernels_use(variant):
    def make():
        params, groups = _random_model(7)
        kw = {"momentum": 0.9} if variant == "sgd" else {}
        return params, DHSPG(params, groups, target_group_sparsity=max(1, len(groups) // 2), warmup_steps=2,
                             hybrid_steps=6, variant=variant, lr=0.05, **kw)

    def steps(params, opt, seed, n):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()

    params, opt = make()
    steps(params, opt, 0, 3)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())  # each load below takes its own copy: torch.optim loads without one
    steps(params, opt, 1, 2)
    with torch.no_grad():
        for p, v in zip(params, saved_params, strict=True):
            p.copy_(v)
    opt.load_state_dict(copy.deepcopy(saved))  # new buffer tensors for the same optimizer
    steps(params, opt, 2, 3)
    twin_params, twin = make()
    with torch.no_grad():
        for p, v in zip(twin_params, saved_params, strict=True):
            p.copy_(v)
    twin.load_state_dict(copy.deepcopy(saved))
    steps(twin_params, twin, 2, 3)
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params, strict=True))


# ------------------------------------------------------------------------------------------------ fallback
_SCRIPT = textwrap.dedent("""
    import warnings
    warnings.simplefilter("always")
    import torch
    from otov3.optim import DHSPG, _native
    from otov3.space import Group, GroupKind, ParamSlice
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 40))
    groups = [Group(f"c{j}", GroupKind.CHANNEL, (ParamSlice("w", w, slice(j, j + 1)),), ("w",), 0) for j in range(6)]
    opt = DHSPG([w], groups, target_group_sparsity=0.5, warmup_steps=2, hybrid_steps=3, lr=0.1, momentum=0.9)
    with warnings.catch_warnings(record=True) as seen:
        for _ in range(6):
            w.grad = torch.randn(6, 40)
            opt.step()
    said = sum("fused optimizer kernels" in str(m.message) for m in seen)
    print(_native.available(), len(opt.zero_groups), said, _native.status())
""")


def _run_script(env: dict[str, str], cache: Path) -> tuple[str, str, str, str]:
    full = {**os.environ, "PYTHONPATH": str(SRC), "OTOV3_CACHE_DIR": str(cache), **env}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=full, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    available, zero, said, status = done.stdout.strip().split(" ", 3)
    return available, zero, said, status


@pytest.mark.parametrize(("env", "reason", "warned"), [({"OTOV3_NATIVE": "0"}, "disabled by OTOV3_NATIVE=0", "0"),
                                                       ({"CC": "/bin/false"}, "could not build the kernels", "1")])
def test_without_the_kernels_the_engine_runs_eagerly_and_says_why(env, reason, warned, tmp_path):
    available, zero, said, status = _run_script(env, tmp_path)
    assert available == "False" and zero == "3" and reason in status
    assert said == warned  # a build that fails warns once; turning the kernels off is a choice, not warned


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_a_fresh_machine_builds_the_kernels_into_an_empty_cache(tmp_path):
    available, zero, said, status = _run_script({}, tmp_path)
    assert available == "True" and zero == "3" and said == "0"
    assert status == f"loaded {next(tmp_path.glob('otov3_fused_*.so'))}"  # built there, atomically renamed
