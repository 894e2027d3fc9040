"""Tests for core.sinkhorn: POT reference, Hungarian limit, invariants, masks, batching, extremes."""

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from core.sinkhorn import sinkhorn

ATOL_PLAN = 1e-7  # float64 plans of size ~1/(n*m)
ATOL_MARGINAL = 1e-6


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
        (dict(cost=torch.rand(3, 3), mask=torch.ones(2, 2, dtype=torch.bool), eps=0.1), "broadcastable"),
        (dict(cost=torch.rand(3, 3), mask=torch.ones(3, 3), eps=0.1), "bool"),
        (dict(cost=torch.rand(3, 3), eps=0.1, max_iter=0), "max_iter"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(**kwargs)
