"""OTFusion (Xu et al., arXiv 2506.13723): fuse VFM clusters and VLM probabilities by entropic OT.

:func:`otfusion` is the public face of both recipes: ``recipe="paper"`` (below, our reading of the
v1 text, solved here) and ``recipe="official"`` (the authors' released solver, solved in
``core.methods.otfusion_official``). ``weights="adaptive"`` (the official default, usable with
both) lets the visual sources, and the VLMs, share their group's weight by their agreement with Q.
Fit on one set and predict another: ``core.methods.otfusion_inductive.fit_otfusion``.

The paper recipe. For VFM features V_i (N, d_i) and VLM probabilities Y_j (N, K), alternate
(Algorithm 1):

1. initial M-step of one shared-diagonal GMM per VFM, weighted by mean_j Y_j;
2. E-step: posteriors P_i (N, K) of each GMM (Eq. 2-3; one matrix product per VFM);
3. Q = argmax_{Q in Pi} sum_i eta_i <Q, P_i> + sum_j lam_j <Q, Y_j> + eps H(Q)   (Eq. 6-10),
   Pi = plans with rows 1/N and columns 1/K (the SwAV reading of Eq. 5), by ``sinkhorn_iter``
   Sinkhorn iterations (3, as the paper and SwAV), columns first and rows last so N*Q is a
   per-image class distribution with rows summing to 1 exactly;
4. M-step with N*Q as weights: means (Eq. 11) and one diagonal variance (Eq. 12, centred, see
   ``core.solvers.gmm``), plus ``reg_covar``; repeat from 2.

The objective recorded per outer iteration is Eq. 6 at (Q^(t), P^(t)), with Q of total mass 1 and
H(Q) = -sum Q log Q; the loop stops early when its relative change is <= ``tol``. Prediction is
argmax_k Q[i, k].

Mixing weights: Eq. 2-3 include pi_k. In the joint variants the GMM is re-estimated from Q, whose
class marginals the transport polytope fixes at 1/K, so pi = 1/K (a constant that cancels in the
softmax). Only ``no_joint``, plain EM, estimates pi (core.solvers.gmm.fit_shared_diag_gmm).

Speed (DESIGN.md "Performance"): per iteration the unavoidable work is two GEMMs per VFM; the
rest is kept to a few passes over (N, K) buffers allocated once (a fresh 40 MB tensor costs a
page-faulting pass of its own). Exponentials use ``exp2`` with log2(e) folded into the operands
(cheaper than ``exp`` on CPU: benchmarks/README.md, `--cases kernels`). The Sinkhorn
(``_sinkhorn_into``) is
the shared scaling-form solver of ``core.solvers.sinkhorn_scaling`` run on the log2-kernel S
log2(e)/eps
with the (N, K) buffer as its kernel: two matrix-vector products per iteration instead of two
logsumexp passes, the same iterations as ``core.solvers.sinkhorn.sinkhorn(-S, eps=eps,
max_iter=sinkhorn_iter, tol=0)`` (tested), absorption and a log-domain fallback when a scaling
leaves the float range. Measured on 2 cores (benchmarks/solvers.py): one outer iteration is
1.1-1.25x its own GEMMs at (N, K, d) = (1k, 100, 768), (10k, 1000, 768) and (50k, 1000, 1024).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from core.checks import check_int, check_positive, l2_normalize
from core.methods.otfusion_common import (
    LOG2E,
    RECIPES,
    VARIANTS,
    WEIGHTS,
    OTFusionResult,
    OTFusionStep,
    _e_step_into,
    _prepare,
    agreement_weights,
)
from core.methods.otfusion_official import solve_official
from core.solvers.gmm import centre_columns, fit_shared_diag_gmm, shared_variance, weighted_means
from core.solvers.sinkhorn_scaling import solve_scaling

__all__ = ["RECIPES", "VARIANTS", "WEIGHTS", "OTFusionResult", "OTFusionStep", "otfusion"]


# ----------------------------------------------------------------------------- fused solver pieces


def _sinkhorn_into(m2: Tensor, out: Tensor, *, n_iter: int):
    """Sinkhorn maximising <Q, S> + eps H(Q), uniform marginals, ``n_iter`` iterations.

    ``m2`` (N, K) holds S * log2(e) / eps, the log2-kernel, and is left intact; the plan (mass 1,
    rows exactly 1/N) is written into ``out`` (N, K). The shared scaling-form solver of
    ``core.solvers.sinkhorn_scaling`` runs on it with ``out`` as its kernel buffer: the same
    iterates as
    ``sinkhorn(-S, eps=eps, max_iter=n_iter, tol=0)`` (tested), two matrix-vector products per
    iteration, and its own log-domain fallback. Returns (log_u, log_v, fell_back) with
    Q = exp(S/eps + log_u_i + log_v_j), the potentials of ``core.solvers.sinkhorn``.
    """
    n, k = m2.shape
    res = solve_scaling(
        m2.unsqueeze(0), 1.0, m2.new_full((1, n), 1.0 / n), m2.new_full((1, k), 1.0 / k),
        mask=None, max_iter=n_iter, tol=0.0, out=out.unsqueeze(0),
    )
    return res.log_u[0], res.log_v[0], res.method != "scaling"


def _m_step(xc: Tensor, sq_mean: Tensor, q: Tensor, reg_covar: float):
    """Eq. 11-12 with N*Q as weights; Q has mass 1 and rows 1/N. Returns (means, var, col sums)."""
    wsum = q.T @ xc  # (K, d)
    counts = q.sum(0)  # (K,)
    var = shared_variance(sq_mean, wsum, counts, 1.0, reg_covar, xc.dtype)
    return weighted_means(wsum, counts), var, counts


# ----------------------------------------------------------------------------- public


def _check_nonneg(value, name: str, meaning: str) -> float:
    value = float(value)
    if not (value >= 0.0) or math.isinf(value):
        raise ValueError(f"{name}: expected a finite number >= 0 ({meaning}), got {value}.")
    return value


def otfusion(
    vfm_features,
    vlm_probs,
    *,
    recipe: str = "paper",
    weights: str | None = None,
    lam: float | Sequence[float] | None = None,
    eta: Sequence[float] | None = None,
    eps: float = 0.01,
    n_iter: int = 10,
    sinkhorn_iter: int | None = None,
    sinkhorn_tol: float | None = None,
    temperature: float | None = None,
    variant: str = "joint",
    labels=None,
    tol: float | None = None,
    reg_covar: float | None = None,
) -> OTFusionResult:
    """Transductive zero-shot classification by OTFusion (Algorithm 1, Eq. 6 of the paper).

    Options left at None take the recipe's default (``RECIPES``; the table below).

    ================  ==========================  ===========================================
    option            ``recipe="paper"``          ``recipe="official"``
    ================  ==========================  ===========================================
    start             M-step weighted by mean Y   means of the 8 most confident images per
                                                  class under mean Y (normalised), var 1/d
    means             weighted means (Eq. 11)     weighted means, L2-normalised
    var               about the weighted means    about the normalised means
    temperature       1                           50 (posteriors softmax(log-lik / 50))
    lam               0.8 per VLM                 1/J each (uniform within the VLM group)
    weights           "fixed"                     "adaptive"
    Sinkhorn          3 scaling-form iterations   SwAV, probability domain, <= 15 iterations,
                                                  stop when max |dQ| < 1e-5 (``sinkhorn_tol``)
    tol (objective)   1e-6                        0 (always ``n_iter`` iterations)
    reg_covar         1e-6                        0
    ================  ==========================  ===========================================

    The official recipe is the authors' released solver (CVPR 2026 revision, "SOTA: Self-adaptive
    Optimal Transport", ``core.methods.otfusion_official`` lists the facts and where they come
    from), in GEMM form. Its main setting passes the VLM's own image features as the first
    visual source and each VFM after it; ``vfm_features=[V]`` alone is the "VFM-only" ablation.

    Parameters
    ----------
    vfm_features : list of Tensor, shapes (N, d_i)
        Features of the same N images from each visual source (L2-normalised here): VFMs and,
        in the main setting, the VLM's own image features (the paper's "CLIP-only" row when
        alone). May be empty for ``semantic_only`` (which validates but ignores them); a single
        (N, d) tensor is accepted as a list of one.
    vlm_probs : list of Tensor, shapes (N, K)
        Zero-shot probabilities of each VLM (rows sum to 1, e.g.
        ``core.methods.zeroshot.zeroshot_probs``).
    recipe : {"paper", "official"}, default "paper"
    weights : {"fixed", "adaptive"}, optional
        ``"adaptive"``: after each Sinkhorn, a group (visual sources; VLMs) with several members
        shares its total weight in proportion to how many images each member's argmax agrees
        with argmax Q on. ``history`` records the weights of every iteration.
    lam : float or sequence of float, optional
        Weight of each VLM term (one number for all, or one per VLM), >= 0.
    eta : sequence of float, optional
        Weight of each visual source, >= 0 and summing to 1 (not renormalised: lam is measured
        against them). Default uniform.
    eps : float, default 0.01
        Entropic regularisation; smaller is sharper.
    n_iter : int, default 10
        Maximum outer iterations (E-step, Sinkhorn, M-step).
    sinkhorn_iter : int, optional
        Sinkhorn iterations per outer iteration (paper: exactly this many; official: at most).
    sinkhorn_tol : float, optional
        Official recipe only: stop a Sinkhorn when the largest entry change of the mass-1 plan is
        below it (0 runs ``sinkhorn_iter``).
    temperature : float, optional
        GMM posteriors are softmax(log-likelihood / temperature).
    variant : {"joint", "semantic_only", "concat", "no_joint"}
        Table 2 of the paper: full OTFusion; one Sinkhorn on lam*Y alone; one GMM on the
        concatenated (renormalised) visual features; plain EM per source started from Y then one
        fusion (paper recipe only: the official code has no such mode).
    labels : Tensor, shape (N,), optional
        True classes, only to record accuracy in ``history``.
    tol : float, optional
        Stop when |F_t - F_{t-1}| <= tol * |F_{t-1}| (F: objective of Eq. 6); 0 runs ``n_iter``.
    reg_covar : float, optional
        Added to the shared variance.

    Returns
    -------
    OTFusionResult
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe: expected one of {list(RECIPES)}, got {recipe!r}.")
    defaults = RECIPES[recipe]
    weights = defaults.weights if weights is None else weights
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {list(WEIGHTS)}, got {weights!r}.")
    if recipe == "official" and variant == "no_joint":
        raise ValueError(
            "variant: 'no_joint' (plain EM, then one fusion) is an ablation of the paper recipe; "
            "the official code has no such mode. Use recipe='paper' or another variant."
        )
    lam = defaults.lam if lam is None else lam
    vs, ys, lams, etas, labels = _prepare(vfm_features, vlm_probs, variant, lam, eta, labels)
    eps = check_positive(eps, "eps")
    n_iter = check_int(n_iter, "n_iter", low=1)
    sinkhorn_iter = check_int(defaults.sinkhorn_iter if sinkhorn_iter is None else sinkhorn_iter,
                              "sinkhorn_iter", low=1)
    sinkhorn_tol = _check_nonneg(defaults.sinkhorn_tol if sinkhorn_tol is None else sinkhorn_tol,
                                 "sinkhorn_tol", "0 = run sinkhorn_iter iterations")
    if recipe == "paper" and sinkhorn_tol > 0:
        raise ValueError(
            f"sinkhorn_tol: the paper recipe runs exactly sinkhorn_iter Sinkhorn iterations, got "
            f"sinkhorn_tol={sinkhorn_tol}; leave it unset or use recipe='official'."
        )
    temperature = check_positive(defaults.temperature if temperature is None else temperature,
                                 "temperature")
    tol = _check_nonneg(defaults.tol if tol is None else tol, "tol", "0 = run n_iter iterations")
    reg_covar = _check_nonneg(defaults.reg_covar if reg_covar is None else reg_covar,
                              "reg_covar", "added to the variance")
    if (sum(lams) + sum(etas)) * LOG2E / eps > torch.finfo(ys[0].dtype).max / 4:
        raise ValueError(
            f"eps: {eps:g} is too small for {ys[0].dtype}: the scores divided by eps overflow; "
            "use eps >= 1e-30 or float64 inputs."
        )
    if variant == "concat":
        vs, etas = [l2_normalize(torch.cat(vs, dim=1))], [1.0]
    elif variant == "semantic_only":
        vs, etas = [], []
    options = dict(eps=eps, n_iter=n_iter, sinkhorn_iter=sinkhorn_iter, variant=variant,
                   tol=tol, reg_covar=reg_covar, adaptive=weights == "adaptive",
                   temperature=temperature)
    if recipe == "official":
        return solve_official(vs, ys, lams, etas, labels, sinkhorn_tol=sinkhorn_tol,
                              n_confident=defaults.n_confident, **options)
    return _solve_paper(vs, ys, lams, etas, labels, **options)


def _solve_paper(vs, ys, lams, etas, labels, *, eps, n_iter, sinkhorn_iter, variant, tol,
                 reg_covar, adaptive, temperature) -> OTFusionResult:
    """The paper recipe on validated inputs (``vs`` already concatenated / dropped by variant)."""
    n, k = ys[0].shape
    m2 = torch.zeros_like(ys[0])  # S * log2(e) / eps, (N, K)
    for lam_j, y in zip(lams, ys):
        m2.add_(y, alpha=lam_j * LOG2E / eps)
    y_mean = sum(ys) / len(ys) if len(ys) > 1 else ys[0]
    centred = [centre_columns(v) for v in vs]  # (xc (N, d), mean (d,)) per GMM
    adapt_eta = adaptive and len(vs) > 1
    adapt_lam = adaptive and len(ys) > 1
    y_argmax = [y.argmax(1) for y in ys] if adapt_lam else []

    fallbacks = 0
    buf = torch.empty_like(m2)  # logits, then the kernel, then Q

    def record(it: int, log_u: Tensor, log_v: Tensor, counts: Tensor) -> OTFusionStep:
        # F = <Q,S> + eps H(Q) = -eps (<rows, log_u> + <cols, log_v>) since log Q = S/eps + u + v.
        objective = -eps * (float(log_u.sum()) / n + float(counts @ log_v))
        acc = None if labels is None else float((buf.argmax(1) == labels).double().mean())
        return OTFusionStep(it, objective, float((counts - 1.0 / k).abs().sum()), acc,
                            tuple(etas), tuple(lams), sinkhorn_iter)

    def result(history, converged, means, var) -> OTFusionResult:
        probs = buf.mul_(n)  # N * Q: rows sum to 1
        return OTFusionResult(
            probs=probs, pred=probs.argmax(1), history=tuple(history), n_iter=len(history),
            converged=converged, means=means, var=var,
            marginal_error=history[-1].marginal_error, variant=variant,
            sinkhorn_fallbacks=fallbacks, recipe="paper", eta=tuple(etas), lam=tuple(lams),
            temperature=temperature,
        )

    if variant in ("semantic_only", "no_joint"):
        means, var, converged = (), (), True
        if variant == "no_joint":
            fits = [fit_shared_diag_gmm(xc, n_components=k, init_resp=y_mean, reg_covar=reg_covar)
                    for xc, _ in centred]
            for eta_i, fit in zip(etas, fits):
                m2.add_(fit.resp, alpha=eta_i * LOG2E / eps)
            means = tuple(f.means + mu for f, (_, mu) in zip(fits, centred))
            var = tuple(f.var for f in fits)
            converged = all(f.converged for f in fits)
        log_u, log_v, fell = _sinkhorn_into(m2, buf, n_iter=sinkhorn_iter)
        fallbacks += int(fell)
        return result([record(1, log_u, log_v, buf.sum(0))], converged, means, var)

    sq_means = [xc.square().mean(0) for xc, _ in centred]  # (d,): sum_i xc_i^2 / N, reused
    params = [_m_step(xc, sq, y_mean / n, reg_covar)[:2] for (xc, _), sq in zip(centred, sq_means)]
    fused = torch.empty_like(m2)  # S/eps of the current iteration (log2 units)
    history: list[OTFusionStep] = []
    converged = False
    for it in range(1, n_iter + 1):
        p_argmax = []
        for i, ((xc, _), (mu, var)) in enumerate(zip(centred, params)):
            # unnormalised P_i in buf; a temperature T is a variance T * var
            row_sums = _e_step_into(xc, mu, var if temperature == 1.0 else var * temperature, buf)
            if adapt_eta:
                p_argmax.append(buf.argmax(1))
            coef = (etas[i] * LOG2E / eps) / row_sums  # (N, 1)
            if i == 0:
                torch.addcmul(m2, buf, coef, out=fused)
            else:
                fused.addcmul_(buf, coef)
        log_u, log_v, fell = _sinkhorn_into(fused, buf, n_iter=sinkhorn_iter)
        fallbacks += int(fell)
        updates = [_m_step(xc, sq, buf, reg_covar) for (xc, _), sq in zip(centred, sq_means)]
        params = [(mu, var) for mu, var, _ in updates]
        history.append(record(it, log_u, log_v, updates[0][2]))
        if adapt_eta or adapt_lam:
            q_argmax = buf.argmax(1)
            if adapt_eta:
                etas = agreement_weights(p_argmax, q_argmax, sum(etas))
            if adapt_lam:
                lams = agreement_weights(y_argmax, q_argmax, sum(lams))
                m2.zero_()
                for lam_j, y in zip(lams, ys):
                    m2.add_(y, alpha=lam_j * LOG2E / eps)
        if it > 1 and tol > 0:
            prev, cur = history[-2].objective, history[-1].objective
            if abs(cur - prev) <= tol * abs(prev):
                converged = True
                break
    means = tuple(mu + mean for (mu, _), (_, mean) in zip(params, centred))
    var = tuple(v for _, v in params)
    return result(history, converged, means, var)
