"""OTFusion's official recipe: what the authors' released solver computes, in GEMM form.

Source: the public repository ``Afleve/self-adaptive-Optimal-Transport`` (CVPR 2026 revision of
arXiv 2506.13723, "SOTA: Self-adaptive Optimal Transport"), ``main.py`` and
``OptimalTrans_solver/`` (``OptimalTrans_auto.OptimalTrans`` and ``evalute_test`` at commit
4aeb7a4, the helpers of ``OptimalTrans_utils`` at 5eee199). It has no licence: it was read, not
copied. What it computes, for visual sources X_s (N, d_s) and VLM probabilities Y_j (N, K):

- sources: ``[VLM image features..., VFM features...]``, each L2-normalised at extraction; Y_j =
  softmax of the VLM's 100 * cosine logits (``init_z`` applies the softmax);
- start: z0 = mean_j Y_j; per class the 8 images with the largest z0 (``topk`` over images), their
  features weighted by z0, averaged and L2-normalised (``init_mu``); variance 1/d on every
  dimension (``init_sigma``: the ``std`` attribute is a variance, it divides squared distances);
- one GMM per source with one shared diagonal variance and no mixing weights: log-likelihood
  -0.5 sum_d (x - mu_k)^2 / var (no log-determinant; both cancel in the softmax), posteriors
  P_s = softmax(log-likelihood / 50) (``1 / 50 * ...``, inherited from TransCLIP);
- S = sum_s alpha_s P_s + sum_j beta_j Y_j, alpha = 1/#sources, beta = 1/#VLMs at the start;
- Q = SwAV Sinkhorn of S in the probability domain (``sinkhorn(fusion, eps, 15)``, eps 0.01 from
  ``--eps``, tol 1e-5 on max |Q_t - Q_{t-1}| of the mass-1 plan, whose entries are <= 1/N: at
  N = 50k the stop fires after an iteration or two, at N = 1k rarely), returned as N * Q;
- after each Sinkhorn, when a group has several members (``update_alpha_per_source``): each
  member's weight = its count of images whose one-hot argmax agrees with argmax Q, floored at
  1e-8, normalised within the group; used from the next iteration on;
- M-step for every source: means = Q-weighted means, L2-normalised (``update_mu``); variance =
  sum_ik Q_ik (x_i - mu_k)^2 / sum Q about those *normalised* means (``update_sigma``, which
  builds (1000, K, d) chunks), no regularisation;
- 10 outer iterations (``range(0, 10)``), no objective test; prediction argmax of the last Q;
- inductive (``--setting Inductive``): the same solve on the shot images; then on the test set
  sum_s alpha_s P_s + sum_j beta_j Y_j with the last GMMs and weights, argmax, no OT.

Here: the E-step is one GEMM per source (``core.methods.otfusion_common._e_step_into`` with
variance 50 var), the M-step one GEMM plus (K, d) work (the variance about the normalised means
is the within-class variance plus sum_k n_k (m_k - mu_k)^2, ``core.solvers.gmm``), the Sinkhorn
``core.solvers.sinkhorn_swav``. Where the released code would fail we do not: fewer than 8 images
use all of them, a class whose kernel column underflows entirely keeps zero mass instead of a NaN
plan. The older stored revision of the same file (5eee199: temperature 10, 10 Sinkhorn
iterations, no inductive mode) is not what this reproduces. The stored ``utils.py`` predates
``main.py`` (their signatures disagree), so the shapes of the inductive shot features could not
be checked; the inductive mode here follows ``evalute_test``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.checks import l2_normalize
from core.methods.otfusion_common import (
    OTFusionResult,
    OTFusionStep,
    _e_step_into,
    agreement_weights,
)
from core.solvers.gmm import centre_columns, shared_variance_about, weighted_means
from core.solvers.sinkhorn_swav import solve_swav

__all__ = ["confident_means", "solve_official"]


def confident_means(x: Tensor, z: Tensor, n_confident: int) -> Tensor:
    """Start of the official recipe: per class, the L2-normalised z-weighted mean of the
    ``n_confident`` images with the largest z (all images when fewer).

    Parameters
    ----------
    x : Tensor, shape (N, d)
    z : Tensor, shape (N, K)
        Class scores (the mean VLM probabilities).

    Returns
    -------
    Tensor, shape (K, d), rows of unit norm
    """
    return _gathered_means(x, *z.topk(min(n_confident, z.shape[0]), dim=0))


def _gathered_means(x: Tensor, top_z: Tensor, top: Tensor) -> Tensor:
    """normalise(sum_m top_z[m, k] x[top[m, k]]): an (m, K, d) gather, not an (N, K) x (N, d)
    product; ``top_z``, ``top`` (m, K) from one ``topk`` shared by every source."""
    return l2_normalize(torch.einsum("mk,mkd->kd", top_z, x[top]))


def _m_step(xc: Tensor, mean: Tensor, sq_mean: Tensor, q: Tensor, reg_covar: float):
    """Normalised weighted means and the variance about them; Q has mass 1, rows 1/N.

    Returns (means (K, d) of unit norm, uncentred; var (d,); column sums of Q (K,)).
    """
    wsum = q.T @ xc  # (K, d)
    counts = q.sum(0)  # (K,)
    means = l2_normalize(weighted_means(wsum, counts) + mean)
    var = shared_variance_about(sq_mean, wsum, counts, means - mean, 1.0, reg_covar, xc.dtype)
    return means, var, counts


def solve_official(vs, ys, lams, etas, labels, *, eps, n_iter, sinkhorn_iter, sinkhorn_tol,
                   variant, tol, reg_covar, adaptive, temperature, n_confident) -> OTFusionResult:
    """The official recipe on validated inputs (``core.methods.otfusion.otfusion`` prepares them).

    ``vs``: L2-normalised (N, d_s) per GMM (already concatenated for ``concat``, empty for
    ``semantic_only``); ``ys``: (N, K) with rows summing to 1; ``etas``, ``lams``: the starting
    weights of the two groups.
    """
    n, k = ys[0].shape
    y_mean = sum(ys) / len(ys) if len(ys) > 1 else ys[0]
    centred = [centre_columns(v) for v in vs]  # (xc (N, d), mean (d,)) per GMM
    sq_means = [xc.square().mean(0) for xc, _ in centred]  # (d,): sum_i xc_i^2 / N
    top = y_mean.topk(min(n_confident, n), dim=0) if vs else None  # (m, K) values, indices
    params = [(_gathered_means(v, *top),
               torch.full((v.shape[1],), 1.0 / v.shape[1], dtype=v.dtype, device=v.device))
              for v in vs]
    adapt_eta = adaptive and len(vs) > 1
    adapt_lam = adaptive and len(ys) > 1
    y_argmax = [y.argmax(1) for y in ys] if adapt_lam else []
    buf = torch.empty_like(ys[0])  # posteriors of one source at a time
    fused = torch.empty_like(ys[0])  # S, then Q (mass 1) in place
    history: list[OTFusionStep] = []
    converged = False
    for it in range(1, n_iter + 1):
        torch.mul(ys[0], lams[0], out=fused)
        for lam_j, y in zip(lams[1:], ys[1:]):
            fused.add_(y, alpha=lam_j)
        p_argmax = []
        for eta_s, (xc, mean), (mu, var) in zip(etas, centred, params):
            row_sums = _e_step_into(xc, mu - mean, var * temperature, buf)  # unnormalised P_s
            if adapt_eta:
                p_argmax.append(buf.argmax(1))
            fused.addcmul_(buf, eta_s / row_sums)
        res = solve_swav(fused, eps=eps, max_iter=sinkhorn_iter, tol=sinkhorn_tol, out=fused)
        q = res.plan
        updates = [_m_step(xc, mean, sq, q, reg_covar) for (xc, mean), sq in zip(centred, sq_means)]
        params = [(mu, var) for mu, var, _ in updates]
        counts = updates[0][2] if updates else q.sum(0)
        # F = <Q,S> + eps H(Q) = -eps (<rows, log_u> + <cols, log_v>); empty columns add nothing
        col_term = torch.where(counts > 0, counts * res.log_v, 0.0).sum()
        objective = -eps * (float(res.log_u.sum()) / n + float(col_term))
        acc = None if labels is None else float((q.argmax(1) == labels).double().mean())
        history.append(OTFusionStep(it, objective, res.marginal_error, acc, tuple(etas),
                                    tuple(lams), res.n_iter))
        if adapt_eta or adapt_lam:
            q_argmax = q.argmax(1)
            if adapt_eta:
                etas = agreement_weights(p_argmax, q_argmax, sum(etas))
            if adapt_lam:
                lams = agreement_weights(y_argmax, q_argmax, sum(lams))
        if it > 1 and tol > 0:
            prev, cur = history[-2].objective, history[-1].objective
            if abs(cur - prev) <= tol * abs(prev):
                converged = True
                break
        if not vs and not adapt_lam:  # nothing moves between iterations (the code's `break`)
            converged = True
            break
    probs = fused.mul_(n)  # N * Q: rows sum to 1
    return OTFusionResult(
        probs=probs, pred=probs.argmax(1), history=tuple(history), n_iter=len(history),
        converged=converged, means=tuple(mu for mu, _ in params),
        var=tuple(var for _, var in params), marginal_error=history[-1].marginal_error,
        variant=variant, recipe="official", eta=tuple(etas), lam=tuple(lams),
        temperature=temperature,
    )
