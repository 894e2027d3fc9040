"""Tests for core.solvers.sinkhorn: POT reference, Hungarian limit, invariants, masks, batching,
extremes,
and the scaling form against the log-domain loop."""

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import core.solvers.sinkhorn as sk
import core.solvers.sinkhorn_scaling as sks
from core.solvers.sinkhorn import sinkhorn

ATOL_PLAN = 1e-7  # float64 plans of size ~1/(n*m)
ATOL_MARGINAL = 1e-6
ATOL_PATHS64 = 1e-12  # scaling form vs log loop, float64 plans (measured <= 2e-15)
RTOL_POT64 = 1e-9  # same, log potentials (measured 1e-14 relative after 5000 iterations)
ATOL_PATHS32 = 1e-7  # same in float32, LaZSL-sized plans of mass ~1/720 (measured 2e-9)


def _random_problem(n, m, *, seed, batch=()):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(*batch, n, m, generator=g, dtype=torch.float64)
    a = torch.rand(*batch, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(*batch, m, generator=g, dtype=torch.float64) + 0.1
    return cost, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def test_matches_pot_log_sinkhorn_on_odd_non_square_problem():
    cost, a, b = _random_problem(17, 29, seed=0)
    eps = 0.05
    ours = sinkhorn(cost, a, b, eps=eps, max_iter=5000, tol=1e-12)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg=eps, method="sinkhorn_log",
                      numItermax=5000, stopThr=1e-13)
    assert ours.converged
    np.testing.assert_allclose(ours.plan.numpy(), ref, atol=ATOL_PLAN, rtol=1e-5)


def test_marginals_hold_rows_exactly_and_columns_within_tol():
    cost, a, b = _random_problem(23, 11, seed=1)
    res = sinkhorn(cost, a, b, eps=0.1, tol=1e-9, max_iter=10_000)
    torch.testing.assert_close(res.plan.sum(-1), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.plan.sum(-2), b, atol=1e-8, rtol=0)
    assert res.marginal_error <= 1e-8
    assert (res.plan >= 0).all()


def test_fixed_iteration_mode_runs_exactly_max_iter_and_rows_are_exact():
    cost, _, _ = _random_problem(50, 7, seed=2)
    res = sinkhorn(cost, eps=0.01, max_iter=3, tol=0)
    assert res.n_iter == 3
    assert not res.converged
    # Rows exact: n * plan is a per-sample distribution (what OTFusion reports).
    torch.testing.assert_close((50 * res.plan).sum(-1), torch.ones(50, dtype=torch.float64))


def test_small_eps_recovers_a_planted_permutation_like_hungarian():
    n = 12
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(n, generator=g)
    cost = torch.rand(n, n, generator=g, dtype=torch.float64)
    cost[torch.arange(n), perm] -= 1.0  # the planted permutation is the unique optimum
    res = sinkhorn(cost, eps=1e-3, max_iter=20_000, tol=1e-10)
    rows, cols = linear_sum_assignment(cost.numpy())
    assert torch.equal(res.plan.argmax(-1), torch.as_tensor(cols))
    assert torch.equal(torch.as_tensor(cols), perm[torch.as_tensor(rows)])
    # Nearly all mass sits on the permutation as eps -> 0.
    assert float(res.plan[torch.arange(n), perm].sum()) > 0.999


def test_batched_equals_looped():
    cost, a, b = _random_problem(9, 13, seed=4, batch=(3, 4))
    batched = sinkhorn(cost, a, b, eps=0.05, max_iter=2000, tol=1e-11)
    for i in range(3):
        for j in range(4):
            single = sinkhorn(cost[i, j], a[i, j], b[i, j], eps=0.05, max_iter=2000, tol=1e-11)
            torch.testing.assert_close(batched.plan[i, j], single.plan, atol=1e-9, rtol=1e-6)


def test_mask_equals_solving_the_smaller_problem_and_gives_zero_mass():
    cost, _, _ = _random_problem(10, 8, seed=5)
    rows = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    cols = torch.tensor([1, 0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    mask = rows[:, None] & cols[None, :]
    masked = sinkhorn(cost, eps=0.05, mask=mask, max_iter=5000, tol=1e-12)
    small = sinkhorn(cost[rows][:, cols], eps=0.05, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(masked.plan[rows][:, cols], small.plan, atol=1e-10, rtol=1e-7)
    assert float(masked.plan[~rows].abs().sum()) == 0.0
    assert float(masked.plan[:, ~cols].abs().sum()) == 0.0
    assert torch.isfinite(masked.plan).all()


def test_zero_weights_behave_like_masked_rows():
    cost, _, _ = _random_problem(6, 5, seed=6)
    a = torch.tensor([0.0, 1, 1, 0, 1, 1], dtype=torch.float64)
    res = sinkhorn(cost, a, eps=0.1, tol=1e-12, max_iter=5000)
    assert float(res.plan[a == 0].sum()) == 0.0
    torch.testing.assert_close(res.plan.sum(-1), a / a.sum())


def test_float32_agrees_with_float64():
    cost, a, b = _random_problem(40, 25, seed=7)
    r64 = sinkhorn(cost, a, b, eps=0.02, max_iter=500, tol=0)
    r32 = sinkhorn(cost.float(), a.float(), b.float(), eps=0.02, max_iter=500, tol=0)
    assert r32.plan.dtype == torch.float32
    torch.testing.assert_close(r32.plan.double(), r64.plan, atol=2e-6, rtol=1e-3)


def test_maximising_a_score_by_negating_it():
    score = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    res = sinkhorn(-score, eps=0.01, max_iter=100, tol=1e-12)
    assert float(res.plan[0, 0]) > 0.49 and float(res.plan[1, 1]) > 0.49


@pytest.mark.parametrize("eps, scale", [(1e-4, 1.0), (0.01, 1e3), (1e-4, 1e3)])
def test_extreme_scores_give_finite_plans_with_marginals(eps, scale):
    g = torch.Generator().manual_seed(8)
    scores = (torch.rand(30, 20, generator=g) * 2 - 1) * scale
    res = sinkhorn(-scores, eps=eps, max_iter=50, tol=0)
    assert torch.isfinite(res.plan).all()
    torch.testing.assert_close(res.plan.sum(-1), torch.full((30,), 1 / 30), atol=1e-6, rtol=1e-4)
    assert res.marginal_error < 2.0  # finite and bounded (L1 of two distributions is <= 2)


def test_tolerance_mode_stops_early_when_converged():
    cost, _, _ = _random_problem(20, 20, seed=9)
    res = sinkhorn(cost, eps=1.0, max_iter=1000, tol=1e-6)
    assert res.converged and res.n_iter < 1000
    assert res.marginal_error <= 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cost=torch.rand(3), eps=0.1), "shape"),
        (dict(cost=torch.rand(0, 3), eps=0.1), "shape"),
        (dict(cost=torch.rand(3, 3), eps=0.0), "eps"),
        (dict(cost=torch.rand(3, 3), eps=-1.0), "eps"),
        (dict(cost=torch.full((3, 3), float("nan")), eps=0.1), "NaN"),
        (dict(cost=torch.rand(3, 3), a=torch.rand(4), eps=0.1), "weights"),
        (dict(cost=torch.rand(3, 3), a=-torch.ones(3), eps=0.1), "non-negative"),
        (dict(cost=torch.rand(3, 3), a=torch.zeros(3), eps=0.1), "positive total mass"),
        (dict(cost=torch.rand(3, 3), mask=torch.ones(2, 2, dtype=torch.bool), eps=0.1),
         "broadcastable"),
        (dict(cost=torch.rand(3, 3), mask=torch.ones(3, 3), eps=0.1), "bool"),
        (dict(cost=torch.rand(3, 3), eps=0.1, max_iter=0), "max_iter"),
        (dict(cost=torch.rand(3, 3), eps=0.1, method="fast"), "method"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(**kwargs)


# ----------------------------------------------------------------------------- scaling vs log


def _assert_same_solution(fast, ref, *, atol=ATOL_PATHS64, same_n_iter=True):
    """The scaling form ran and reproduced the log loop: plan, potentials, counts, errors."""
    assert fast.method == "scaling" and ref.method == "log"
    torch.testing.assert_close(fast.plan, ref.plan, atol=atol, rtol=0)
    for ours, theirs in ((fast.log_u, ref.log_u), (fast.log_v, ref.log_v)):
        finite = torch.isfinite(theirs)  # -inf exactly on rows / columns without mass
        assert torch.equal(torch.isfinite(ours), finite)
        torch.testing.assert_close(ours[finite], theirs[finite], atol=RTOL_POT64, rtol=RTOL_POT64)
    if same_n_iter:
        assert fast.n_iter == ref.n_iter
        assert fast.converged == ref.converged
    assert fast.marginal_error == pytest.approx(ref.marginal_error, rel=1e-6, abs=1e-13)


def _lazsl_like(n_img, n_cls, m, a, *, seed, dtype):
    """Cost 1 - S with CLIP-scale cosines, kept crops x valid attributes mask (as
    core.methods.lazsl)."""
    g = torch.Generator().manual_seed(seed)
    s = 0.25 + 0.05 * torch.randn(n_img, n_cls, m, a, generator=g, dtype=dtype)
    kept = torch.rand(n_img, m, generator=g) > 0.5
    kept[:, 0] = True
    attrs = torch.rand(n_cls, a, generator=g) > 0.4
    attrs[:, 0] = True
    return 1.0 - s, kept[:, None, :, None] & attrs[None, :, None, :]


@pytest.mark.parametrize("eps", [0.05, 0.005])
@pytest.mark.parametrize("max_iter, tol", [(3, 0.0), (300, 0.0), (20_000, 1e-10)])
def test_scaling_form_equals_log_domain_on_random_problems(eps, max_iter, tol):
    cost, a, b = _random_problem(17, 29, seed=10)
    fast = sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol)
    ref = sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, method="log")
    _assert_same_solution(fast, ref)
    torch.testing.assert_close(fast.plan.sum(-1), a, atol=1e-15, rtol=0)  # rows exact


@pytest.mark.parametrize("eps", [0.1, 0.002])  # one offset per problem / row and column offsets
@pytest.mark.parametrize("max_iter, tol", [(5, 0.0), (5000, 1e-11)])
def test_scaling_form_equals_log_domain_masked_batched_with_zero_weights(eps, max_iter, tol):
    g = torch.Generator().manual_seed(11)
    cost = torch.rand(3, 4, 11, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 11, 7, generator=g) > 0.2
    mask[0, 0, 2] = False  # an empty row
    mask[1, 2, :, 3] = False  # an empty column
    mask[2, 3, :, :2] = False  # two empty columns
    a = torch.rand(11, generator=g, dtype=torch.float64)  # one a for the whole batch
    a[5] = 0.0  # zero weight on a row that has allowed entries
    b = torch.rand(3, 4, 7, generator=g, dtype=torch.float64)
    b[0, 1, 6] = 0.0
    fast = sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, mask=mask)
    ref = sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, mask=mask, method="log")
    _assert_same_solution(fast, ref)
    assert float(fast.plan.masked_select(~mask).abs().sum()) == 0.0  # masked entries exactly 0
    assert float(fast.plan[..., 5, :].abs().sum()) == 0.0


def test_lazsl_shaped_batches_agree_between_paths():
    cost, mask = _lazsl_like(50, 20, 90, 8, seed=12, dtype=torch.float64)
    kw = dict(eps=0.1, max_iter=100, tol=1e-6, mask=mask)
    _assert_same_solution(sinkhorn(cost, **kw), sinkhorn(cost, method="log", **kw))
    # float32, as LaZSL runs it: the stopping iteration may move by rounding, the plans may not.
    fast, ref = sinkhorn(cost.float(), **kw), sinkhorn(cost.float(), method="log", **kw)
    assert fast.converged and ref.converged and abs(fast.n_iter - ref.n_iter) <= 1
    torch.testing.assert_close(fast.plan, ref.plan, atol=ATOL_PATHS32, rtol=0)
    torch.testing.assert_close(fast.plan.sum((-2, -1)), torch.ones(50, 20), atol=1e-6, rtol=0)


def test_large_span_batches_use_row_and_column_offsets_and_agree():
    # eps = 1e-3 puts ~1500 bits between the kernel's extremes: no single offset per problem fits.
    cost, mask = _lazsl_like(6, 5, 30, 8, seed=13, dtype=torch.float64)
    kw = dict(eps=1e-3, max_iter=40, tol=0, mask=mask)
    _assert_same_solution(sinkhorn(cost, **kw), sinkhorn(cost, method="log", **kw))


def test_extreme_inputs_absorb_and_stay_finite_with_exact_rows():
    # Scaling factors would reach 2^(1e7) here: the solver absorbs them into the kernel again
    # and again and still tracks the float64 reference (closer than the float32 log loop).
    g = torch.Generator().manual_seed(8)
    scores = (torch.rand(30, 20, generator=g) * 2 - 1) * 1e3
    res = sinkhorn(-scores, eps=1e-4, max_iter=500, tol=0)
    ref = sinkhorn(-scores.double(), eps=1e-4, max_iter=500, tol=0, method="log")
    assert res.method == "scaling" and res.n_absorptions > 0
    assert torch.isfinite(res.plan).all()
    assert torch.isfinite(res.log_u).all() and torch.isfinite(res.log_v).all()
    torch.testing.assert_close(res.plan.sum(-1), torch.full((30,), 1 / 30), atol=1e-7, rtol=0)
    torch.testing.assert_close(res.plan.double(), ref.plan, atol=1e-4, rtol=0)  # measured 9e-6


def test_tight_limits_force_absorptions_and_the_log_fallback(monkeypatch):
    # With scalings limited to [.., 2] the solver must absorb constantly and, when an iterate
    # right after a re-formation is out of range, finish in the log domain: same answer.
    monkeypatch.setitem(sks._LIMITS, torch.float64, (1.05, 2.0))
    cost, mask = _lazsl_like(4, 3, 12, 5, seed=14, dtype=torch.float64)
    kw = dict(eps=0.003, max_iter=60, tol=0, mask=mask)
    res, ref = sinkhorn(cost, **kw), sinkhorn(cost, method="log", **kw)
    assert res.method == "scaling+log" and res.n_absorptions > 0
    torch.testing.assert_close(res.plan, ref.plan, atol=ATOL_PATHS64, rtol=0)
    assert res.n_iter == ref.n_iter == 60


def test_infeasible_problem_falls_back_to_the_log_domain():
    # Row 0 may only use column 0, which has zero weight: K v = 0 on a row that needs mass.
    cost, _, _ = _random_problem(4, 3, seed=15)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 1:] = False
    b = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    res = sinkhorn(cost, b=b, eps=0.1, max_iter=50, tol=0, mask=mask)
    ref = sinkhorn(cost, b=b, eps=0.1, max_iter=50, tol=0, mask=mask, method="log")
    assert res.method == "log"
    torch.testing.assert_close(res.plan, ref.plan, atol=ATOL_PATHS64, rtol=0)
    assert float(res.plan[0].sum()) == 0.0  # the row stays empty, as in the log loop,
    assert res.marginal_error == pytest.approx(ref.marginal_error)  # and that is reported
    assert res.marginal_error > 0.2


@pytest.mark.parametrize("limits", [None, (1.5, 1e3)])
def test_lazy_host_checks_give_the_same_iterates(monkeypatch, limits):
    # Off the CPU the stopping and range checks are read back every few iterations; the solver
    # rewinds to the first iteration that should have stopped or absorbed, so nothing changes.
    if limits is not None:
        monkeypatch.setitem(sks._LIMITS, torch.float64, limits)
    cost, mask = _lazsl_like(5, 4, 20, 6, seed=16, dtype=torch.float64)
    cost, mask = cost.reshape(20, 20, 6), mask.reshape(20, 20, 6)
    a = mask.any(-1).double()
    b = mask.any(-2).double()
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    runs = [
        sks.solve_scaling(cost, -sk.LOG2E / 0.05, a, b, mask=mask, max_iter=400,
                           tol=1e-9, check_every=every)
        for every in (1, 7)
    ]
    assert runs[0].n_iter == runs[1].n_iter < 400
    assert runs[0].n_absorptions == runs[1].n_absorptions
    assert (runs[0].n_absorptions > 0) == (limits is not None)
    torch.testing.assert_close(runs[1].plan, runs[0].plan, atol=0, rtol=0)


def test_batched_without_the_transposed_kernel(monkeypatch):
    # The layout used off the CPU: K v as bmm(K, v) instead of a transposed copy of K.
    cost, mask = _lazsl_like(3, 4, 10, 6, seed=17, dtype=torch.float64)
    kw = dict(eps=0.05, max_iter=2000, tol=1e-10, mask=mask)
    ref = sinkhorn(cost, **kw)
    monkeypatch.setattr(sks, "_use_transposed", lambda batch, device: False)
    plain = sinkhorn(cost, **kw)
    assert plain.n_iter == ref.n_iter
    torch.testing.assert_close(plain.plan, ref.plan, atol=ATOL_PATHS64, rtol=0)


def test_autograd_goes_through_the_log_domain_loop():
    # The scaling form works in place; a cost that needs gradients takes the log loop instead.
    cost, _, _ = _random_problem(5, 4, seed=19)
    cost.requires_grad_(True)
    res = sinkhorn(cost, eps=0.1, max_iter=20, tol=0)
    assert res.method == "log"
    (res.plan * cost).sum().backward()
    assert cost.grad is not None and torch.isfinite(cost.grad).all()
    with torch.no_grad():
        assert sinkhorn(cost, eps=0.1, max_iter=20, tol=0).method == "scaling"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    cost, mask = _lazsl_like(6, 5, 30, 8, seed=18, dtype=torch.float64)
    kw = dict(eps=0.1, max_iter=100, tol=1e-9)
    cpu = sinkhorn(cost, mask=mask, **kw)
    gpu = sinkhorn(cost.cuda(), mask=mask.cuda(), **kw)
    assert gpu.plan.is_cuda and gpu.n_iter == cpu.n_iter
    torch.testing.assert_close(gpu.plan.cpu(), cpu.plan, atol=1e-12, rtol=0)
