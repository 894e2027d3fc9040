"""What OTFusion's recipes share: their defaults, result types, input validation, the GMM E-step
in GEMM form and the self-adaptive source weights.

The solvers are :mod:`core.methods.otfusion` (public face, ``recipe="paper"``),
:mod:`core.methods.otfusion_official` (``recipe="official"``) and
:mod:`core.methods.otfusion_inductive` (fit on a pool, predict elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import check_classes, check_matrix, l2_normalize

VARIANTS = ("joint", "semantic_only", "concat", "no_joint")
WEIGHTS = ("fixed", "adaptive")
LOG2E = 1.0 / math.log(2.0)
_ROW_TOL = 1e-3  # VLM probabilities must have rows summing to 1 within this
AGREEMENT_FLOOR = 1e-8  # the authors' clamp on agreement counts: a group with none stays uniform


@dataclass(frozen=True)
class OTFusionRecipe:
    """Defaults of one recipe: what ``None`` means for the options of ``otfusion``.

    Attributes
    ----------
    lam : float or None
        Weight of each VLM term; None: 1/J for J VLMs (uniform within the VLM group).
    weights : {"fixed", "adaptive"}
        Whether the weights of a group with several members follow their agreement with Q.
    sinkhorn_iter : int
        (Maximum) Sinkhorn iterations per outer iteration.
    sinkhorn_tol : float
        Early stop on the largest change of the mass-1 plan (SwAV); 0: a fixed count.
    temperature : float
        GMM posteriors are softmax(log-likelihood / temperature).
    tol : float
        Relative change of the objective that stops the outer loop; 0 runs every iteration.
    reg_covar : float
        Added to the shared variance.
    n_confident : int or None
        Start the means from the n most confident images per class (official); None: an
        M-step weighted by the mean VLM probabilities (paper).
    """

    lam: float | None
    weights: str
    sinkhorn_iter: int
    sinkhorn_tol: float
    temperature: float
    tol: float
    reg_covar: float
    n_confident: int | None


RECIPES = {
    # Our reading of the v1 text (arXiv 2506.13723v1, Algorithm 1; papers/README.md).
    "paper": OTFusionRecipe(lam=0.8, weights="fixed", sinkhorn_iter=3, sinkhorn_tol=0.0,
                            temperature=1.0, tol=1e-6, reg_covar=1e-6, n_confident=None),
    # What the authors' released solver computes (Afleve/self-adaptive-Optimal-Transport,
    # OptimalTrans_solver/, the CVPR 2026 revision): temperature 50 from TransCLIP, 15 SwAV
    # iterations with tol 1e-5, 10 outer iterations without an objective test, no reg_covar.
    "official": OTFusionRecipe(lam=None, weights="adaptive", sinkhorn_iter=15,
                               sinkhorn_tol=1e-5, temperature=50.0, tol=0.0, reg_covar=0.0,
                               n_confident=8),
}


@dataclass(frozen=True)
class OTFusionStep:
    """One outer iteration.

    ``objective`` is Eq. 6 at (Q, P) with the weights of this iteration; ``marginal_error`` the
    L1 column error of Q; ``accuracy`` only with labels; ``eta`` and ``lam`` the weights that built
    this iteration's S (they move with ``weights="adaptive"``); ``sinkhorn_n_iter`` the Sinkhorn
    iterations run.
    """

    iteration: int
    objective: float
    marginal_error: float
    accuracy: float | None
    eta: tuple[float, ...] = ()
    lam: tuple[float, ...] = ()
    sinkhorn_n_iter: int = 0


@dataclass(frozen=True)
class OTFusionResult:
    """Result of ``otfusion``.

    Attributes
    ----------
    probs : Tensor, shape (N, K)
        N * Q: per-image class distributions, rows sum to 1; columns sum to N/K up to
        ``marginal_error``.
    pred : Tensor, shape (N,), long
        argmax of ``probs``.
    history : tuple of OTFusionStep
        One record per outer iteration (one for ``semantic_only`` and ``no_joint``, unless
        adaptive weights have something to adapt).
    n_iter : int
        Outer iterations run.
    converged : bool
        The objective's relative change fell to ``tol`` (``no_joint``: every EM converged;
        ``semantic_only`` with nothing to adapt: always True).
    means, var : tuple of Tensor
        One (K, d) mean matrix and one (d,) shared variance per GMM (one per visual source; one
        for ``concat``; none for ``semantic_only``), in the L2-normalised feature space, after the
        last M-step (the official recipe's means have unit norm).
    marginal_error : float
        L1 column-marginal error of the final Q (rows are exact).
    variant, recipe : str
    sinkhorn_fallbacks : int
        Paper recipe: Sinkhorn calls whose scalings left the float range, so that the shared
        solver finished them in the log domain. Official recipe: always 0.
    eta, lam : tuple of float
        Weights of the visual sources and of the VLMs after the last update (what an inductive
        model fuses with).
    temperature : float
        The posteriors' temperature (1 for the paper recipe).
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
    recipe: str = "paper"
    eta: tuple[float, ...] = ()
    lam: tuple[float, ...] = ()
    temperature: float = 1.0


# ----------------------------------------------------------------------------- shared numerics


def _e_step_into(xc: Tensor, means: Tensor, var: Tensor, out: Tensor) -> Tensor:
    """Unnormalised GMM posteriors into ``out`` (N, K); returns the row sums (N, 1).

    Row constants (x^2 w, log det) and the uniform log pi cancel in the softmax, so the logits are
    x (mu w)^T - 0.5 (mu^2 w)^T: one GEMM with the bias fused, scaled by log2(e) for exp2. A
    temperature T is a variance T * var.
    """
    w = LOG2E / var  # (d,)
    torch.addmm((means.square() @ w).mul_(-0.5), xc, (means * w).T, out=out)  # (N, K)
    out.sub_(out.amax(1, keepdim=True)).exp2_()
    return out.sum(1, keepdim=True)


def agreement_weights(member_argmax: Sequence[Tensor], q_argmax: Tensor,
                      total: float) -> list[float]:
    """Self-adaptive weights of one group (SOTA, the CVPR 2026 revision of OTFusion).

    Each member's share of ``total`` is proportional to the number of images whose argmax agrees
    with argmax Q; counts are floored at ``AGREEMENT_FLOOR`` as in the authors' code, so a group
    in which no member agrees keeps uniform weights.

    Parameters
    ----------
    member_argmax : sequence of Tensor, shape (N,)
        Each member's argmax over classes (of its posteriors P_s or probabilities Y_j).
    q_argmax : Tensor, shape (N,)
    total : float
        The group's total weight (1 for each group in the official recipe).
    """
    counts = torch.stack([(a == q_argmax).sum() for a in member_argmax]).to(torch.float64)
    counts = counts.clamp_min(AGREEMENT_FLOOR)
    return (counts * (total / float(counts.sum()))).tolist()


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


def _prepare(vfm_features, vlm_probs, variant, lam, eta, labels, *, transductive=True):
    """Validated inputs: (vs L2-normalised, ys with rows summing to 1, lams, etas, labels)."""
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
    check_classes(k, n if transductive else None, name="vlm_probs")
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
