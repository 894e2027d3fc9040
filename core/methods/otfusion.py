"""OTFusion (Xu et al., arXiv 2506.13723): fuse VFM clusters and VLM probabilities by entropic OT.

For VFM features V_i (N, d_i) and VLM probabilities Y_j (N, K), alternate (Algorithm 1):

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
(torch's CPU ``exp`` is ~4x slower than ``exp2`` here). The Sinkhorn (``_sinkhorn_into``) is
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
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import (
    check_classes,
    check_int,
    check_matrix,
    check_positive,
    l2_normalize,
)
from core.solvers.gmm import centre_columns, fit_shared_diag_gmm, shared_variance, weighted_means
from core.solvers.sinkhorn_scaling import solve_scaling

__all__ = ["VARIANTS", "OTFusionResult", "OTFusionStep", "otfusion"]

VARIANTS = ("joint", "semantic_only", "concat", "no_joint")
LOG2E = 1.0 / math.log(2.0)
_ROW_TOL = 1e-3  # VLM probabilities must have rows summing to 1 within this


@dataclass(frozen=True)
class OTFusionStep:
    """One outer iteration: objective of Eq. 6, column error of Q, accuracy (labels given)."""

    iteration: int
    objective: float
    marginal_error: float
    accuracy: float | None


@dataclass(frozen=True)
class OTFusionResult:
    """Result of :func:`otfusion`.

    Attributes
    ----------
    probs : Tensor, shape (N, K)
        N * Q: per-image class distributions, rows sum to 1; columns sum to N/K up to
        ``marginal_error``.
    pred : Tensor, shape (N,), long
        argmax of ``probs``.
    history : tuple of OTFusionStep
        One record per outer iteration (one for ``semantic_only`` and ``no_joint``).
    n_iter : int
        Outer iterations run.
    converged : bool
        The objective's relative change fell to ``tol`` (``no_joint``: every EM converged;
        ``semantic_only``: always True, there is nothing to iterate).
    means, var : tuple of Tensor
        One (K, d) mean matrix and one (d,) shared variance per GMM (one per VFM; one for
        ``concat``; none for ``semantic_only``), in the L2-normalised feature space.
    marginal_error : float
        L1 column-marginal error of the final Q (rows are exact).
    sinkhorn_fallbacks : int
        Sinkhorn calls whose scalings left the float range, so that the shared solver finished
        them in the log domain (``SinkhornResult.method != "scaling"``).
    """

    probs: Tensor
    pred: Tensor
    history: tuple[OTFusionStep, ...]
    n_iter: int
    converged: bool
    means: tuple[Tensor, ...]
    var: tuple[Tensor, ...]
    marginal_error: float
    variant: str
    sinkhorn_fallbacks: int = 0


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


def _e_step_into(xc: Tensor, means: Tensor, var: Tensor, out: Tensor) -> Tensor:
    """Unnormalised GMM posteriors into ``out`` (N, K); returns the row sums (N, 1).

    Row constants (x^2 w, log det) and the uniform log pi cancel in the softmax, so the logits are
    x (mu w)^T - 0.5 (mu^2 w)^T: one GEMM with the bias fused, scaled by log2(e) for exp2.
    """
    w = LOG2E / var  # (d,)
    torch.addmm((means.square() @ w).mul_(-0.5), xc, (means * w).T, out=out)  # (N, K)
    out.sub_(out.amax(1, keepdim=True)).exp2_()
    return out.sum(1, keepdim=True)


def _m_step(xc: Tensor, sq_mean: Tensor, q: Tensor, reg_covar: float):
    """Eq. 11-12 with N*Q as weights; Q has mass 1 and rows 1/N. Returns (means, var, col sums)."""
    wsum = q.T @ xc  # (K, d)
    counts = q.sum(0)  # (K,)
    var = shared_variance(sq_mean, wsum, counts, 1.0, reg_covar, xc.dtype)
    return weighted_means(wsum, counts), var, counts


# ----------------------------------------------------------------------------- validation


def _as_list(x, name: str) -> list:
    if getattr(x, "ndim", None) == 2:  # one (N, d) tensor or array
        return [x]
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise ValueError(f"{name}: expected a list of (N, d) tensors, got {type(x).__name__}.")
    return list(x)


def _weights(value, count: int, name: str, *, sum_to_one: bool) -> list[float]:
    if value is None:
        return [1.0 / count] * count
    try:  # float64: a float32 round trip would turn lam=0.8 into 0.800000011920929
        vals = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected a number or a list of numbers, got {value!r}.") from exc
    if len(vals) == 1 and not sum_to_one:  # one lam for every VLM
        vals = vals * count
    if len(vals) != count:
        raise ValueError(
            f"{name}: expected one weight per model ({count}), got {len(vals)}; pass a list of "
            f"length {count}."
        )
    if any(not (v >= 0.0) or math.isinf(v) for v in vals):
        raise ValueError(f"{name}: expected finite non-negative weights, got {vals}.")
    if sum_to_one and abs(sum(vals) - 1.0) > 1e-6:
        raise ValueError(
            f"{name}: expected weights summing to 1 (Eq. 6; lam is measured against them), got "
            f"sum {sum(vals):.6g}; divide them by their sum or leave {name}=None for uniform."
        )
    return vals


def _prepare(vfm_features, vlm_probs, variant, lam, eta, labels):
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}.")
    vs = _as_list(vfm_features, "vfm_features")
    vs = [check_matrix(v, f"vfm_features[{i}]") for i, v in enumerate(vs)]
    ys = _as_list(vlm_probs, "vlm_probs")
    ys = [check_matrix(y, f"vlm_probs[{j}]") for j, y in enumerate(ys)]
    if not ys:
        raise ValueError("vlm_probs: expected at least one (N, K) probability matrix, got none.")
    if not vs and variant != "semantic_only":
        raise ValueError(
            f"vfm_features: variant {variant!r} needs at least one VFM feature matrix, got none; "
            "pass [V] or use variant='semantic_only'."
        )
    named = {f"vfm_features[{i}]": v for i, v in enumerate(vs)}
    named.update({f"vlm_probs[{j}]": y for j, y in enumerate(ys)})
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        raise ValueError(f"expected all inputs on one device, got {sorted(map(str, devices))}; "
                         "move them with .to(device).")
    rows = {name: t.shape[0] for name, t in named.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{name} has {r}" for name, r in rows.items())
        raise ValueError(f"expected the same number of samples (rows) in every input, got "
                         f"{listing}; pass features of the same images in the same order.")
    n, k = ys[0].shape
    wide = any(t.dtype == torch.float64 for t in named.values())
    dtype = torch.float64 if wide else torch.float32  # float16 / bfloat16 are computed in float32
    for j, y in enumerate(ys):
        if y.shape[1] != k:
            raise ValueError(f"vlm_probs[{j}]: expected {k} classes like vlm_probs[0], got "
                             f"{y.shape[1]}; score every VLM against the same class list.")
        if bool((y < 0).any()):
            raise ValueError(f"vlm_probs[{j}]: expected probabilities >= 0, got a minimum of "
                             f"{float(y.min()):.3g}; pass softmax outputs, not logits.")
        err = float((y.sum(1, dtype=torch.float64) - 1).abs().max())
        if err > _ROW_TOL:
            raise ValueError(f"vlm_probs[{j}]: expected rows summing to 1 (within {_ROW_TOL}), "
                             f"got an error of {err:.3g}; pass softmax(logits, dim=1).")
    check_classes(k, n, name="vlm_probs")
    vs = [l2_normalize(v.to(dtype)) for v in vs]
    ys = [(y.to(dtype) / y.to(dtype).sum(1, keepdim=True)) for y in ys]
    lams = _weights(lam, len(ys), "lam", sum_to_one=False)
    etas = _weights(eta, len(vs), "eta", sum_to_one=True) if vs else []
    if labels is not None:
        labels = torch.as_tensor(labels, device=ys[0].device)
        if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels: expected an integer tensor of shape ({n},), got "
                             f"{labels.dtype} {tuple(labels.shape)}.")
        if bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"labels: expected class indices in [0, {k}), got "
                             f"[{int(labels.min())}, {int(labels.max())}].")
    return vs, ys, lams, etas, labels


# ----------------------------------------------------------------------------- public


def otfusion(
    vfm_features,
    vlm_probs,
    *,
    lam: float | Sequence[float] = 0.8,
    eta: Sequence[float] | None = None,
    eps: float = 0.01,
    n_iter: int = 10,
    sinkhorn_iter: int = 3,
    variant: str = "joint",
    labels=None,
    tol: float = 1e-6,
    reg_covar: float = 1e-6,
) -> OTFusionResult:
    """Transductive zero-shot classification by OTFusion (Algorithm 1, Eq. 6 of the paper).

    Parameters
    ----------
    vfm_features : list of Tensor, shapes (N, d_i)
        Features of the same N images from each VFM (L2-normalised here). The VLM's own image
        features may be passed as a VFM (the paper's "CLIP-only" row). May be empty for
        ``semantic_only`` (which validates but ignores them); a single (N, d) tensor is accepted
        as a list of one.
    vlm_probs : list of Tensor, shapes (N, K)
        Zero-shot probabilities of each VLM (rows sum to 1, e.g.
        ``core.methods.zeroshot.zeroshot_probs``).
    lam : float or sequence of float, default 0.8
        Weight of each VLM term (one number for all, or one per VLM), >= 0.
    eta : sequence of float, optional
        Weight of each VFM term, >= 0 and summing to 1 (not renormalised: lam is measured
        against them). Default uniform.
    eps : float, default 0.01
        Entropic regularisation; smaller is sharper.
    n_iter : int, default 10
        Maximum outer iterations (E-step, Sinkhorn, M-step).
    sinkhorn_iter : int, default 3
        Sinkhorn iterations per outer iteration.
    variant : {"joint", "semantic_only", "concat", "no_joint"}
        Table 2 of the paper: full OTFusion; one Sinkhorn on lam*Y alone; one GMM on the
        concatenated (renormalised) VFM features; plain EM per VFM started from Y then one fusion.
    labels : Tensor, shape (N,), optional
        True classes, only to record accuracy in ``history``.
    tol : float, default 1e-6
        Stop when |F_t - F_{t-1}| <= tol * |F_{t-1}| (F: objective of Eq. 6); 0 runs ``n_iter``.
    reg_covar : float, default 1e-6
        Added to the shared variance.

    Returns
    -------
    OTFusionResult
    """
    vs, ys, lams, etas, labels = _prepare(vfm_features, vlm_probs, variant, lam, eta, labels)
    eps = check_positive(eps, "eps")
    n_iter = check_int(n_iter, "n_iter", low=1)
    sinkhorn_iter = check_int(sinkhorn_iter, "sinkhorn_iter", low=1)
    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0 (0 = run n_iter iterations), got {tol}.")
    reg_covar = float(reg_covar)
    if not (reg_covar >= 0.0) or math.isinf(reg_covar):
        raise ValueError(f"reg_covar: expected a finite number >= 0, got {reg_covar}.")

    n, k = ys[0].shape
    if (sum(lams) + sum(etas)) * LOG2E / eps > torch.finfo(ys[0].dtype).max / 4:
        raise ValueError(
            f"eps: {eps:g} is too small for {ys[0].dtype}: the scores divided by eps overflow; "
            "use eps >= 1e-30 or float64 inputs."
        )
    m2 = torch.zeros_like(ys[0])  # S * log2(e) / eps, (N, K)
    for lam_j, y in zip(lams, ys):
        m2.add_(y, alpha=lam_j * LOG2E / eps)
    y_mean = sum(ys) / len(ys) if len(ys) > 1 else ys[0]
    if variant == "concat":
        vs, etas = [l2_normalize(torch.cat(vs, dim=1))], [1.0]
    elif variant == "semantic_only":
        vs, etas = [], []
    centred = [centre_columns(v) for v in vs]  # (xc (N, d), mean (d,)) per GMM

    fallbacks = 0
    buf = torch.empty_like(m2)  # logits, then the kernel, then Q

    def record(it: int, log_u: Tensor, log_v: Tensor, counts: Tensor) -> OTFusionStep:
        # F = <Q,S> + eps H(Q) = -eps (<rows, log_u> + <cols, log_v>) since log Q = S/eps + u + v.
        objective = -eps * (float(log_u.sum()) / n + float(counts @ log_v))
        acc = None if labels is None else float((buf.argmax(1) == labels).double().mean())
        return OTFusionStep(it, objective, float((counts - 1.0 / k).abs().sum()), acc)

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
        history = (record(1, log_u, log_v, buf.sum(0)),)
        return _result(buf, n, history, 1, converged, means, var, variant, int(fell))

    sq_means = [xc.square().mean(0) for xc, _ in centred]  # (d,): sum_i xc_i^2 / N, reused
    params = [_m_step(xc, sq, y_mean / n, reg_covar)[:2] for (xc, _), sq in zip(centred, sq_means)]
    fused = torch.empty_like(m2)  # S/eps of the current iteration (log2 units)
    history: list[OTFusionStep] = []
    converged = False
    for it in range(1, n_iter + 1):
        for i, ((xc, _), (mu, var)) in enumerate(zip(centred, params)):
            row_sums = _e_step_into(xc, mu, var, buf)  # unnormalised P_i in buf
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
        if it > 1 and tol > 0:
            prev, cur = history[-2].objective, history[-1].objective
            if abs(cur - prev) <= tol * abs(prev):
                converged = True
                break
    means = tuple(mu + mean for (mu, _), (_, mean) in zip(params, centred))
    var = tuple(v for _, v in params)
    return _result(buf, n, tuple(history), len(history), converged, means, var, variant, fallbacks)


def _result(q, n, history, n_iter, converged, means, var, variant, fallbacks) -> OTFusionResult:
    probs = q.mul_(n)  # N * Q: rows sum to 1
    return OTFusionResult(
        probs=probs,
        pred=probs.argmax(1),
        history=history,
        n_iter=n_iter,
        converged=converged,
        means=means,
        var=var,
        marginal_error=history[-1].marginal_error,
        variant=variant,
        sinkhorn_fallbacks=fallbacks,
    )
