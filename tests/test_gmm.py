"""Tests for core.solvers.gmm: scipy, naive-loop and sklearn references, invariants, known
answers."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from core.solvers.gmm import (
    GMMResult,
    e_step,
    estimate_log_prob,
    fit_shared_diag_gmm,
    m_step,
)

RTOL_LOGPDF = 1e-10  # float64 against scipy
ATOL_NAIVE = 1e-12  # float64 against a Python loop
RTOL_F32_VAR = 1e-4  # float32 against float64 on data with a large shared offset (measured 4e-6)


def _mixture(n=1500, k=4, d=6, *, seed=0, spread=4.0, offset=0.0, dtype=torch.float64):
    """Samples of a shared-diagonal mixture with known means / variance / labels."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    std = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)  # per-dimension, shared
    labels = torch.arange(n) % k
    x = means[labels] + std * torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    return x.to(dtype), means + offset, std.square(), labels


def _match(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Reorder estimated components to the true ones (Hungarian on squared distances)."""
    cost = torch.cdist(true.double(), est.double()).numpy()
    _, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols)


def test_log_prob_matches_scipy_diagonal_gaussian():
    x, _, _, _ = _mixture(n=50, k=3, d=5, seed=1)
    g = torch.Generator().manual_seed(2)
    means = torch.randn(3, 5, generator=g, dtype=torch.float64)
    var = 0.3 + torch.rand(5, generator=g, dtype=torch.float64)
    ours = estimate_log_prob(x, means, 1.0 / var)
    cov, xn = np.diag(var.numpy()), x.numpy()
    ref = np.stack([multivariate_normal(mean=m, cov=cov).logpdf(xn) for m in means.numpy()], 1)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=RTOL_LOGPDF, atol=0)


def test_m_step_matches_naive_loop():
    x, _, _, _ = _mixture(n=60, k=3, d=4, seed=3)
    g = torch.Generator().manual_seed(4)
    resp = torch.rand(60, 3, generator=g, dtype=torch.float64)  # rows need not sum to 1
    means, var, weights = m_step(x, resp, reg_covar=1e-6)

    xn, rn = x.numpy(), resp.numpy()
    ref_means = np.zeros((3, 4))
    for k in range(3):
        ref_means[k] = sum(rn[i, k] * xn[i] for i in range(60)) / rn[:, k].sum()
    ref_var = np.zeros(4)
    for i in range(60):
        for k in range(3):
            ref_var += rn[i, k] * (xn[i] - ref_means[k]) ** 2
    ref_var = ref_var / rn.sum() + 1e-6
    np.testing.assert_allclose(means.numpy(), ref_means, atol=ATOL_NAIVE, rtol=0)
    np.testing.assert_allclose(var.numpy(), ref_var, atol=ATOL_NAIVE, rtol=0)
    np.testing.assert_allclose(weights.numpy(), rn.sum(0) / rn.sum(), atol=ATOL_NAIVE, rtol=0)


def test_float32_variance_agrees_with_float64_despite_a_large_shared_offset():
    # A large common component (offset 100 >> within-class std ~1), as in embeddings, where the
    # uncentred E[x^2] - mu^2 loses most digits in float32 (3.5% error here, 26% at offset 300).
    x64, _, _, labels = _mixture(n=4000, k=5, d=8, seed=5, spread=2.0, offset=100.0)
    resp64 = torch.nn.functional.one_hot(labels, 5).double() * 0.9 + 0.02
    means64, var64, _ = m_step(x64, resp64, reg_covar=0.0)
    means32, var32, _ = m_step(x64.float(), resp64.float(), reg_covar=0.0)
    assert var32.dtype == torch.float32
    torch.testing.assert_close(var32.double(), var64, rtol=RTOL_F32_VAR, atol=0)
    torch.testing.assert_close(means32.double(), means64, rtol=1e-5, atol=1e-5)

    # The check is meaningful: the naive float32 formula is far off on the same data.
    x32, r32 = x64.float(), resp64.float()
    n_k = r32.sum(0)
    mu = (r32.T @ x32) / n_k[:, None]
    naive = (r32.sum(1) @ x32.square() - (n_k[:, None] * mu.square()).sum(0)) / r32.sum()
    naive_err = float(((naive.double() - var64) / var64).abs().max())
    assert naive_err > 10 * RTOL_F32_VAR


def test_e_step_rows_sum_to_one_and_weights_shift_posteriors():
    x, means, var, _ = _mixture(n=30, k=3, d=4, seed=6, spread=0.5)
    uniform = e_step(x, means, var)
    torch.testing.assert_close(uniform.sum(1), torch.ones(30, dtype=torch.float64))
    skewed = e_step(x, means, var, torch.tensor([0.98, 0.01, 0.01], dtype=torch.float64))
    assert float(skewed[:, 0].mean()) > float(uniform[:, 0].mean())
    # Equal weights are the same as no weights.
    torch.testing.assert_close(e_step(x, means, var, torch.ones(3, dtype=torch.float64)), uniform)


def test_em_log_likelihood_is_monotone_non_decreasing():
    x, _, _, _ = _mixture(n=400, k=5, d=6, seed=7, spread=1.5)  # overlapping: many iterations
    res = fit_shared_diag_gmm(x, n_components=5, max_iter=40, tol=0.0, reg_covar=0.0)
    ll = np.asarray(res.log_likelihood)
    assert len(ll) == res.n_iter + 1 == 41
    assert np.all(np.diff(ll) >= -1e-10 * np.abs(ll[:-1]))
    assert ll[-1] > ll[0]


def test_em_recovers_a_well_separated_mixture():
    x, true_means, true_var, labels = _mixture(n=2000, k=4, d=6, seed=8, spread=4.0)
    res = fit_shared_diag_gmm(x, n_components=4, random_state=0)
    assert isinstance(res, GMMResult) and res.converged
    order = _match(res.means, true_means)
    # Separated clusters: the MLE is the per-class sample mean; the true mean is within ~4 standard
    # errors (std <= 1.5, 500 samples per class: 4 * 1.5 / sqrt(500) = 0.27).
    sample_means = torch.stack([x[labels == c].mean(0) for c in range(4)])
    torch.testing.assert_close(res.means[order], sample_means, atol=1e-3, rtol=0)
    torch.testing.assert_close(res.means[order], true_means, atol=0.27, rtol=0)
    torch.testing.assert_close(res.var, true_var, rtol=0.1, atol=0)
    torch.testing.assert_close(res.weights[order], torch.full((4,), 0.25, dtype=torch.float64),
                               atol=0.02, rtol=0)
    # Posteriors of the training set are consistent with the returned parameters.
    torch.testing.assert_close(res.predict_proba(x), res.resp)
    assert float((res.resp.argmax(1) == order[labels]).double().mean()) > 0.99


def test_agrees_with_sklearn_tied_covariance_on_shared_diagonal_data():
    x, true_means, _, labels = _mixture(n=3000, k=3, d=4, seed=9, spread=3.0)
    sk = GaussianMixture(3, covariance_type="tied", random_state=0, tol=1e-8, max_iter=500)
    sk.fit(x.numpy())
    init = torch.as_tensor(sk.predict_proba(x.numpy()))
    ours = fit_shared_diag_gmm(x, n_components=3, init_resp=init, tol=1e-10, max_iter=500)
    # The tied covariance of data generated with a diagonal one is near diagonal, so both models
    # agree on means, variance and weights up to the sampled off-diagonal correlations.
    sk_cov = torch.as_tensor(sk.covariances_)
    std = torch.diagonal(sk_cov).sqrt()
    corr = sk_cov / (std[:, None] * std[None, :]) - torch.eye(4, dtype=torch.float64)
    assert float(corr.abs().max()) < 0.1
    torch.testing.assert_close(ours.means, torch.as_tensor(sk.means_), atol=0.02, rtol=0)
    torch.testing.assert_close(ours.var, torch.diagonal(sk_cov), rtol=0.02, atol=0)
    torch.testing.assert_close(ours.weights, torch.as_tensor(sk.weights_), atol=0.01, rtol=0)


def test_init_resp_is_used_and_result_predicts_with_its_own_parameters():
    x, true_means, _, labels = _mixture(n=600, k=3, d=4, seed=10)
    init = torch.nn.functional.one_hot(labels, 3).double() * 5.0  # rows renormalised
    res = fit_shared_diag_gmm(x, n_components=3, init_resp=init)
    # Started from the true labelling, components keep their indices.
    torch.testing.assert_close(res.means, true_means, atol=0.2, rtol=0)
    # The returned resp are the posteriors under the returned parameters, so predicting on the
    # training data (uncentred, through the public e_step) gives them back.
    torch.testing.assert_close(res.predict_proba(x), res.resp, atol=ATOL_NAIVE, rtol=0)
    torch.testing.assert_close(res.predict_proba(x), e_step(x, res.means, res.var, res.weights))
    assert torch.equal(res.predict(x), res.resp.argmax(1))
    assert float((res.predict(x) == labels).double().mean()) > 0.95


def test_float32_fit_runs_and_matches_float64():
    x, _, _, labels = _mixture(n=1000, k=3, d=5, seed=11)
    init = torch.nn.functional.one_hot(labels, 3).double()
    r64 = fit_shared_diag_gmm(x, n_components=3, init_resp=init)
    r32 = fit_shared_diag_gmm(x.float(), n_components=3, init_resp=init.float())
    assert r32.means.dtype == torch.float32
    torch.testing.assert_close(r32.means.double(), r64.means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r32.var.double(), r64.var, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_components=50), "at most one component per sample"),
        (dict(n_components=0), "n_components"),
        (dict(n_components=2, init_resp=torch.ones(5, 3)), r"expected shape \(10, 2\)"),
        (dict(n_components=2, init_resp=-torch.ones(10, 2)), "non-negative"),
        (dict(n_components=2, init_resp=torch.zeros(10, 2)), "positive mass"),
        (dict(n_components=2, reg_covar=-1.0), "reg_covar"),
        (dict(n_components=2, tol=-1.0), "tol"),
    ],
)
def test_fit_validation_errors(kwargs, match):
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=match):
        fit_shared_diag_gmm(x, **kwargs)


def test_validation_of_non_finite_and_mismatched_inputs():
    x = torch.randn(10, 3)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        fit_shared_diag_gmm(bad, n_components=2)
    with pytest.raises(ValueError, match="dimension"):
        estimate_log_prob(x, torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        e_step(x, torch.zeros(2, 3), torch.zeros(3))


# ----------------------------------------------------------------------------- variance about
def _variance_about(x, resp, centres, dtype=None):
    """shared_variance_about on x centred by its own mean, as the official OTFusion calls it."""
    from core.solvers.gmm import centre_columns, shared_variance_about

    xc, mean = centre_columns(x)
    total = float(resp.sum())
    sq_sum = resp.sum(1) @ xc.square()
    return shared_variance_about(sq_sum, resp.T @ xc, resp.sum(0), centres - mean, total, 0.0,
                                 dtype or x.dtype)


def test_variance_about_given_centres_matches_naive_loop():
    x, _, _, _ = _mixture(n=60, k=3, d=5, seed=7, offset=2.0)
    g = torch.Generator().manual_seed(7)
    resp = torch.rand(60, 3, generator=g, dtype=torch.float64)
    centres = torch.randn(3, 5, generator=g, dtype=torch.float64)
    naive = sum(resp[i, k] * (x[i] - centres[k]) ** 2 for i in range(60) for k in range(3))
    torch.testing.assert_close(_variance_about(x, resp, centres), naive / resp.sum(),
                               atol=ATOL_NAIVE, rtol=0)


def test_variance_about_the_weighted_means_is_the_m_step_variance():
    x, _, _, _ = _mixture(n=200, k=4, d=6, seed=8)
    resp = torch.softmax(torch.randn(200, 4, generator=torch.Generator().manual_seed(8),
                                     dtype=torch.float64), 1)
    means, var, _ = m_step(x, resp, reg_covar=0.0)
    torch.testing.assert_close(_variance_about(x, resp, means), var, atol=ATOL_NAIVE, rtol=0)


def test_variance_about_unit_norm_centres_in_float32_agrees_with_float64():
    """The official recipe's case: unit-norm data sharing a direction, centres normalised."""
    x, _, _, labels = _mixture(n=2000, k=5, d=32, seed=9, spread=0.3, offset=3.0)
    x = x / x.norm(dim=1, keepdim=True)
    resp = torch.nn.functional.one_hot(labels, 5).double()
    centres = (resp.T @ x) / resp.sum(0)[:, None]
    centres = centres / centres.norm(dim=1, keepdim=True)
    wide = _variance_about(x, resp, centres)
    narrow = _variance_about(x.float(), resp.float(), centres.float())
    torch.testing.assert_close(narrow.double(), wide, atol=0, rtol=RTOL_F32_VAR)
    assert bool((wide > 0).all())
