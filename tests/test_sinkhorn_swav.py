"""Tests for core.solvers.sinkhorn_swav: the SwAV loop written plainly (iterates and early stop),
POT at convergence, invariants, a planted permutation, underflowed columns, validation."""

import numpy as np
import ot
import pytest
import torch
from otfusion_reference import plain_swav_sinkhorn
from scipy.optimize import linear_sum_assignment

from core.solvers.sinkhorn_swav import sinkhorn_swav

ATOL_LOOP64 = 1e-13  # n * plan against the plain loop, float64 (measured ~1e-15)
ATOL_LOOP32 = 1e-5  # same in float32 (measured ~1e-6)
ATOL_POT = 1e-9  # plans of mass 1 at convergence against POT's log-domain solver


def _scores(n, m, *, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.rand(n, m, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, ATOL_LOOP64), (torch.float32, ATOL_LOOP32)])
@pytest.mark.parametrize("n,m,eps,tol", [(17, 29, 0.05, 1e-5), (200, 7, 0.01, 1e-5),
                                         (64, 64, 0.1, 0.0), (300, 12, 0.02, 1e-4)])
def test_iterates_and_early_stop_match_the_plain_loop(n, m, eps, tol, dtype, atol):
    for seed in range(3):
        s = _scores(n, m, seed=seed, dtype=dtype)
        res = sinkhorn_swav(s, eps=eps, max_iter=15, tol=tol)
        ref, ref_iter = plain_swav_sinkhorn(s, eps, 15, tol)
        assert res.n_iter == ref_iter
        if res.n_iter < 15:
            assert res.converged
        assert not (tol == 0 and res.converged)
        torch.testing.assert_close(n * res.plan, ref, atol=atol, rtol=0)


def test_blockwise_stopping_test_gives_the_same_stops(monkeypatch):
    """Blocks of a few rows (as at N = 50k) decide the stop exactly like one pass."""
    import core.solvers.sinkhorn_swav as swav

    monkeypatch.setattr(swav, "_CHUNK", 64)
    for seed in range(4):
        s = _scores(300, 12, seed=seed)
        res = sinkhorn_swav(s, eps=0.02, max_iter=15, tol=1e-4)
        ref, ref_iter = plain_swav_sinkhorn(s, 0.02, 15, 1e-4)
        assert res.n_iter == ref_iter
        torch.testing.assert_close(300 * res.plan, ref, atol=ATOL_LOOP64, rtol=0)


def test_the_early_stop_fires_at_several_different_iterations():
    """The test data must exercise the stopping rule, not only max_iter."""
    counts = {sinkhorn_swav(_scores(300, 12, seed=s), eps=0.02, max_iter=15, tol=1e-4).n_iter
              for s in range(6)}
    counts |= {sinkhorn_swav(_scores(17, 29, seed=s), eps=0.05, max_iter=15, tol=1e-5).n_iter
               for s in range(6)}
    assert len(counts) >= 2 and min(counts) < 15


def test_converges_to_pot_entropic_plan():
    s = _scores(23, 11, seed=4)
    eps = 0.05
    res = sinkhorn_swav(s, eps=eps, max_iter=5000, tol=1e-16)
    a, b = np.full(23, 1 / 23), np.full(11, 1 / 11)
    ref = ot.sinkhorn(a, b, -s.numpy(), reg=eps, method="sinkhorn_log", numItermax=10_000,
                      stopThr=1e-14)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=ATOL_POT, rtol=0)
    assert res.marginal_error < 1e-10


def test_rows_are_exact_and_potentials_reproduce_the_plan():
    s = _scores(40, 9, seed=5)
    eps = 0.03
    res = sinkhorn_swav(s, eps=eps, max_iter=4, tol=0)
    assert res.n_iter == 4 and not res.converged and res.method == "swav"
    torch.testing.assert_close(res.plan.sum(1), torch.full((40,), 1 / 40, dtype=torch.float64))
    rebuilt = torch.exp(s / eps + res.log_u[:, None] + res.log_v[None, :])
    torch.testing.assert_close(rebuilt, res.plan, atol=0, rtol=1e-10)
    assert res.marginal_error == pytest.approx(float((res.plan.sum(0) - 1 / 9).abs().sum()))


def test_small_eps_recovers_a_planted_permutation():
    n = 12
    g = torch.Generator().manual_seed(6)
    perm = torch.randperm(n, generator=g)
    s = 0.3 * torch.rand(n, n, generator=g, dtype=torch.float64)
    s[torch.arange(n), perm] += 1.0
    res = sinkhorn_swav(s, eps=0.005, max_iter=200, tol=1e-12)
    rows, cols = linear_sum_assignment(-s.numpy())
    assert torch.equal(res.plan.argmax(1), torch.as_tensor(cols)[torch.as_tensor(rows).argsort()])
    assert torch.equal(res.plan.argmax(1), perm)
    assert float((n * res.plan.max(1).values).min()) > 0.99


def test_a_column_that_underflows_keeps_zero_mass_instead_of_nan():
    s = _scores(30, 5, seed=7, dtype=torch.float32)
    s[:, 2] = -5.0  # 5 / 0.01 = 500 below every row's best: exp underflows to exactly 0
    res = sinkhorn_swav(s, eps=0.01, max_iter=15, tol=1e-5)
    assert torch.isfinite(res.plan).all()
    assert float(res.plan[:, 2].abs().max()) == 0.0
    assert res.log_v[2] == float("-inf")
    assert res.marginal_error == pytest.approx(1 / 5 + 1 / 5, rel=1e-5)  # 1/5 missing + excess
    torch.testing.assert_close(res.plan.sum(1), torch.full((30,), 1 / 30))


def test_float16_input_is_computed_in_float32():
    s = _scores(20, 4, seed=8, dtype=torch.float16)
    res = sinkhorn_swav(s, eps=0.05)
    assert res.plan.dtype == torch.float32
    ref, _ = plain_swav_sinkhorn(s.float(), 0.05, 15, 1e-5)
    torch.testing.assert_close(20 * res.plan, ref, atol=ATOL_LOOP32, rtol=0)


@pytest.mark.parametrize("scores,kwargs,match", [
    (torch.zeros(3), {}, "2-D"),
    (torch.zeros(0, 3), {}, "2-D"),
    (torch.tensor([[0.0, float("nan")]]), {}, "finite"),
    (torch.zeros(2, 2), {"eps": 0.0}, "eps"),
    (torch.zeros(2, 2), {"max_iter": 0}, "max_iter"),
    (torch.zeros(2, 2), {"tol": -1.0}, "tol"),
])
def test_validation_errors(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn_swav(scores, **{"eps": 0.1, **kwargs})
