"""Gaussian mixture with ONE diagonal covariance shared by all components (OTFusion Eq. 2-3, 11-12).

scikit-learn's ``GaussianMixture`` offers full, tied (one full matrix), diag (one per component)
and spherical covariances, but not one *shared diagonal* matrix, which is what OTFusion (after
TransCLIP) uses. The model is

    p(x) = sum_k pi_k N(x; mu_k, diag(var)),        p(k | x) = pi_k N(x; mu_k, var) / p(x)

Small private functions on arrays do the work; the public layer validates and names things the
scikit-learn way (``n_components``, ``max_iter``, ``tol``, ``reg_covar``, ``random_state``).

Numerics
--------
- Log-densities are one matrix product: with w = 1 / var,
  ``-0.5 * [(X^2) w - 2 X (mu w)^T + (mu^2 w)^T] - 0.5 * (d log 2 pi + sum log var)``.
- The shared variance is ``sum_k sum_i r_ik (x_i - mu_k)^2 / sum r`` (Eq. 12), computed without an
  (N, K, d) tensor from the expansion ``sum_i s_i x_i^2 - sum_k n_k mu_k^2`` (s = row sums of r,
  n = column sums). That expansion is E[x^2] - mu^2 in disguise, so it cancels: for L2-normalised
  embeddings the raw second moment of a dimension is dominated by the direction all images share
  (mean cosine between DINO / CLIP images is 0.3-0.6), and in float32 the difference can lose
  every digit or go negative. We therefore centre X on its global mean first (a translation:
  densities and posteriors are unchanged, means are shifted back on return). The two terms then
  hold total and between-class variance, whose difference is the within-class variance; float32
  loses about log10(total / within) digits (1-2 for well-clustered data) instead of all of them.
  The subtraction itself is done in float64 on the two (d,) terms, clamped at 0, and
  ``reg_covar`` is added. tests/test_gmm.py checks float32 against float64 on offset data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import check_int, check_matrix

__all__ = [
    "GMMResult",
    "e_step",
    "estimate_log_prob",
    "fit_shared_diag_gmm",
    "m_step",
]


# ----------------------------------------------------------------------------- private array math


def centre_columns(x: Tensor) -> tuple[Tensor, Tensor]:
    """Subtract the column mean (see module docstring). Returns (x - mean, mean (d,))."""
    mean = x.mean(0)
    return x - mean, mean


def shared_variance(sq_sum: Tensor, wsum: Tensor, counts: Tensor, total: float, reg_covar: float,
                dtype: torch.dtype) -> Tensor:
    """Shared diagonal variance from centred sufficient statistics (Eq. 12, diagonal).

    Parameters
    ----------
    sq_sum : Tensor, shape (d,)
        ``sum_i s_i xc_i^2`` with s_i the row sums of the weights.
    wsum : Tensor, shape (K, d)
        ``sum_i r_ik xc_i`` (the M-step product ``r^T Xc``).
    counts : Tensor, shape (K,)
        ``n_k = sum_i r_ik``.
    total : float
        ``sum_ik r_ik``.
    """
    # sum_k n_k mu_k^2 = sum_k wsum_k^2 / n_k as one (K,) x (K, d) product; both terms carry
    # relative rounding ~1e-7 in float32, so the difference is taken in float64 (on (d,) only).
    between = (1.0 / counts.clamp_min(torch.finfo(counts.dtype).tiny)) @ wsum.square()  # (d,)
    var = (sq_sum.to(torch.float64) - between.to(torch.float64)).clamp_min_(0.0)
    var = var.div_(total).add_(reg_covar)
    if reg_covar <= 0:  # degenerate data without regularisation: keep 1/var finite
        info = torch.finfo(dtype)
        var = var.clamp_min(max(float(var.max()) * info.eps, info.tiny**0.5))
    return var.to(dtype)


def shared_variance_about(sq_sum: Tensor, wsum: Tensor, counts: Tensor, centres: Tensor,
                          total: float, reg_covar: float, dtype: torch.dtype) -> Tensor:
    """Shared diagonal variance about given ``centres`` instead of the weighted means.

    ``sum_k sum_i r_ik (x_i - c_k)^2 / total + reg_covar``, where the c_k are not the weighted
    means m_k (OTFusion's official recipe measures the spread about L2-normalised means). By the
    parallel-axis identity it is the within-class variance about the m_k (:func:`shared_variance`,
    centred) plus ``sum_k n_k (m_k - c_k)^2 / total``, a sum of non-negative (K, d) terms that
    cancels nothing.

    Parameters
    ----------
    sq_sum, wsum, counts, total
        As :func:`shared_variance` (computed on data centred by some vector o).
    centres : Tensor, shape (K, d)
        The centres c_k, centred by the same o.
    """
    within = shared_variance(sq_sum, wsum, counts, total, reg_covar, dtype)  # (d,)
    offset = weighted_means(wsum, counts) - centres  # (K, d): m_k - c_k
    return within + (counts @ offset.square()).div_(total).to(dtype)


def weighted_means(wsum: Tensor, counts: Tensor) -> Tensor:
    """``mu_k = sum_i r_ik x_i / n_k`` (Eq. 11); an empty component sits at the origin."""
    return wsum / counts.clamp_min(torch.finfo(wsum.dtype).tiny)[:, None]


def _m_step(xc: Tensor, xc_sq: Tensor, resp: Tensor, reg_covar: float):
    """M-step on centred data with precomputed ``xc ** 2``; returns centred means, var, weights."""
    counts = resp.sum(0)  # (K,)
    total = float(counts.sum())
    wsum = resp.T @ xc  # (K, d)
    sq_sum = resp.sum(1) @ xc_sq  # (d,)
    var = shared_variance(sq_sum, wsum, counts, total, reg_covar, xc.dtype)
    return weighted_means(wsum, counts), var, counts / total


def _log_prob(x: Tensor, x_sq: Tensor, means: Tensor, inv_var: Tensor) -> Tensor:
    """Log N(x | mu_k, diag(1/inv_var)) for all pairs; one (N, d) x (d, K) product."""
    d = x.shape[1]
    quad = (
        (x_sq @ inv_var)[:, None]
        - 2.0 * (x @ (means * inv_var).T)  # (N, K)
        + (means.square() @ inv_var)[None, :]
    )
    log_det = -torch.log(inv_var).sum()
    return -0.5 * (quad + d * math.log(2 * math.pi) + log_det)


def _e_step(x, x_sq, means, var, log_weights) -> tuple[Tensor, float]:
    """Posteriors and the mean per-sample log-likelihood."""
    log_joint = _log_prob(x, x_sq, means, 1.0 / var)
    if log_weights is not None:
        log_joint = log_joint + log_weights
    log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)  # (N, 1)
    return torch.exp(log_joint - log_norm), float(log_norm.mean())


def _kmeans_pp_resp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """One-hot responsibilities of the nearest k-means++ seed (Arthur & Vassilvitskii 2007)."""
    n = x.shape[0]
    sq = x.square().sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [first]
    d2 = (sq - 2 * x @ x[first] + sq[first]).clamp_min(0)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            probs = (d2 / total).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        else:  # all remaining points coincide with a centre
            nxt = int(torch.randint(n, (1,), generator=generator))
        centres.append(nxt)
        d2 = torch.minimum(d2, (sq - 2 * x @ x[nxt] + sq[nxt]).clamp_min(0))
    c = x[centres]
    dist = sq[:, None] - 2 * x @ c.T + c.square().sum(1)[None, :]  # (N, K)
    return torch.nn.functional.one_hot(dist.argmin(1), k).to(x.dtype)


# ----------------------------------------------------------------------------- public layer


def _check_reg(reg_covar) -> float:
    reg_covar = float(reg_covar)
    if not (reg_covar >= 0.0) or math.isinf(reg_covar):
        raise ValueError(
            f"reg_covar: expected a finite number >= 0 added to the variance, got {reg_covar}; "
            "use the default 1e-6."
        )
    return reg_covar


def _check_resp(resp, n: int, k: int | None, name: str, like: Tensor) -> Tensor:
    resp = check_matrix(resp, name).to(device=like.device, dtype=like.dtype)
    if resp.shape[0] != n or (k is not None and resp.shape[1] != k):
        want = f"({n}, {k})" if k is not None else f"({n}, n_components)"
        raise ValueError(
            f"{name}: expected shape {want}, one row per sample, got {tuple(resp.shape)}."
        )
    if bool((resp < 0).any()):
        raise ValueError(
            f"{name}: expected non-negative responsibilities, got a minimum of {float(resp.min())}."
        )
    return resp


def estimate_log_prob(X, means, inv_var) -> Tensor:
    """Log-density of every sample under every component, ``log N(x_i | mu_k, diag(1/inv_var))``.

    Parameters
    ----------
    X : Tensor, shape (N, d)
    means : Tensor, shape (K, d)
    inv_var : Tensor, shape (d,)
        Inverse of the shared diagonal variance (all > 0).

    Returns
    -------
    Tensor, shape (N, K)
    """
    x = check_matrix(X, "X")
    means = check_matrix(means, "means").to(device=x.device, dtype=x.dtype)
    inv_var = check_matrix(inv_var, "inv_var", ndim=1).to(device=x.device, dtype=x.dtype)
    if means.shape[1] != x.shape[1] or inv_var.shape[0] != x.shape[1]:
        raise ValueError(
            f"means and inv_var must have X's dimension {x.shape[1]}, got means "
            f"{tuple(means.shape)} and inv_var {tuple(inv_var.shape)}."
        )
    if bool((inv_var <= 0).any()):
        raise ValueError("inv_var: expected positive inverse variances; add reg_covar to var.")
    return _log_prob(x, x.square(), means, inv_var)


def m_step(X, resp, *, reg_covar: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted means, one shared diagonal variance and mixing weights (Eq. 11-12 of OTFusion).

    Parameters
    ----------
    X : Tensor, shape (N, d)
    resp : Tensor, shape (N, K)
        Non-negative weights (responsibilities, or OTFusion's ``N * Q``); rows need not sum to 1.
    reg_covar : float, default 1e-6
        Added to every variance.

    Returns
    -------
    means : Tensor, shape (K, d)
    var : Tensor, shape (d,)
        ``sum_k sum_i r_ik (x_i - mu_k)^2 / sum r + reg_covar`` (centred, see module docstring).
    weights : Tensor, shape (K,)
        Mixing weights ``pi_k = n_k / sum n``.
    """
    x = check_matrix(X, "X")
    resp = _check_resp(resp, x.shape[0], None, "resp", x)
    if float(resp.sum()) <= 0:
        raise ValueError("resp: expected positive total weight, got all zeros.")
    reg_covar = _check_reg(reg_covar)
    xc, mean = centre_columns(x)
    means, var, weights = _m_step(xc, xc.square(), resp, reg_covar)
    return means + mean, var, weights


def e_step(X, means, var, weights=None) -> Tensor:
    """Posteriors ``p(k | x_i)`` (Eq. 3): softmax over k of ``log N(x_i | mu_k, var) + log pi_k``.

    Parameters
    ----------
    X : Tensor, shape (N, d)
    means : Tensor, shape (K, d)
    var : Tensor, shape (d,)
        Shared diagonal variance (> 0).
    weights : Tensor, shape (K,), optional
        Mixing weights pi (Eq. 2); uniform when omitted.

    Returns
    -------
    Tensor, shape (N, K)
        Rows sum to 1.
    """
    x = check_matrix(X, "X")
    var = check_matrix(var, "var", ndim=1).to(device=x.device, dtype=x.dtype)
    if bool((var <= 0).any()):
        raise ValueError("var: expected positive variances; add reg_covar.")
    log_prob = estimate_log_prob(x, means, 1.0 / var)
    if weights is not None:
        w = check_matrix(weights, "weights", ndim=1).to(device=x.device, dtype=x.dtype)
        if w.shape[0] != log_prob.shape[1] or bool((w < 0).any()):
            raise ValueError(
                f"weights: expected {log_prob.shape[1]} non-negative mixing weights, got "
                f"shape {tuple(w.shape)} with minimum {float(w.min())}."
            )
        log_prob = log_prob + torch.log(w / w.sum())
    return torch.softmax(log_prob, dim=1)


@dataclass(frozen=True)
class GMMResult:
    """A fitted shared-diagonal Gaussian mixture (:func:`fit_shared_diag_gmm`).

    Attributes
    ----------
    means : Tensor, shape (K, d)
    var : Tensor, shape (d,)
        Shared diagonal variance (``reg_covar`` included).
    weights : Tensor, shape (K,)
        Mixing weights pi, summing to 1.
    resp : Tensor, shape (N, K)
        Posteriors of the training samples under the returned parameters.
    log_likelihood : tuple of float
        Mean per-sample log-likelihood after the initial M-step and after each EM iteration
        (``n_iter + 1`` values, non-decreasing up to rounding and ``reg_covar``).
    n_iter : int
        EM iterations run.
    converged : bool
        The last change of the mean log-likelihood was below ``tol``.
    """

    means: Tensor
    var: Tensor
    weights: Tensor
    resp: Tensor
    log_likelihood: tuple[float, ...]
    n_iter: int
    converged: bool

    def predict_proba(self, X) -> Tensor:
        """Posteriors of new samples, shape (M, K)."""
        return e_step(X, self.means, self.var, self.weights)

    def predict(self, X) -> Tensor:
        """Most probable component of new samples, shape (M,)."""
        return self.predict_proba(X).argmax(1)


def fit_shared_diag_gmm(
    X,
    *,
    n_components: int,
    init_resp=None,
    max_iter: int = 100,
    tol: float = 1e-4,
    reg_covar: float = 1e-6,
    random_state: int = 0,
) -> GMMResult:
    """Fit a shared-diagonal GMM by EM (plain EM: the ``no_joint`` variant of OTFusion).

    Parameters
    ----------
    X : Tensor, shape (N, d)
    n_components : int
        K, with 1 <= K <= N.
    init_resp : Tensor, shape (N, K), optional
        Initial responsibilities (OTFusion starts from the VLM probabilities); rows are
        renormalised to sum to 1. Default: one-hot assignment to k-means++ seeds.
    max_iter : int, default 100
    tol : float, default 1e-4
        Stop when the mean per-sample log-likelihood changes by less than ``tol`` (as sklearn).
    reg_covar : float, default 1e-6
    random_state : int, default 0
        Seeds the k-means++ initialisation (unused with ``init_resp``).

    Returns
    -------
    GMMResult
    """
    x = check_matrix(X, "X")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    n = x.shape[0]
    k = check_int(n_components, "n_components", low=1)
    if k > n:
        raise ValueError(
            f"n_components: expected at most one component per sample, got {k} components for "
            f"{n} samples; lower n_components or add samples."
        )
    max_iter = check_int(max_iter, "max_iter", low=1)
    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0, got {tol}.")
    reg_covar = _check_reg(reg_covar)

    xc, mean = centre_columns(x)
    xc_sq = xc.square()  # (N, d), reused by every E- and M-step
    if init_resp is None:
        gen = torch.Generator().manual_seed(int(random_state))
        resp = _kmeans_pp_resp(xc.cpu(), k, gen).to(x.device)
    else:
        resp = _check_resp(init_resp, n, k, "init_resp", x)
        rows = resp.sum(1, keepdim=True)
        if bool((rows <= 0).any()):
            raise ValueError(
                "init_resp: every row needs positive mass, got a row of zeros; pass "
                "probabilities (e.g. the VLM's zero-shot probabilities)."
            )
        resp = resp / rows

    means, var, weights = _m_step(xc, xc_sq, resp, reg_covar)
    resp, ll = _e_step(xc, xc_sq, means, var, torch.log(weights))
    history = [ll]
    converged = False
    while len(history) <= max_iter:
        means, var, weights = _m_step(xc, xc_sq, resp, reg_covar)
        resp, ll = _e_step(xc, xc_sq, means, var, torch.log(weights))
        history.append(ll)
        if abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    return GMMResult(
        means=means + mean,
        var=var,
        weights=weights,
        resp=resp,
        log_likelihood=tuple(history),
        n_iter=len(history) - 1,
        converged=converged,
    )

