"""LaZSL: interpretable zero-shot classification by OT between image crops and class attributes.

LaZSL (Chen et al., ICCV 2025, arXiv:2506.23822) scores image ``n`` against class ``k`` with an
entropic transport plan between the image's random crops and the class's attribute sentences:

    s_crop[n,k,m,a] = <crop_nm, attr_ka>,   s_glob[n,k,a] = <global_n, attr_ka>       (cosines)
    S = theta * s_crop + (1 - theta) * s_glob           region-global hybrid similarity
    T = Sinkhorn(cost = 1 - S, eps), uniform over kept crops and over the class's valid attributes
    psi[n,k] = <T, S> = sum_{m,a} T[m,a] S[m,a],         pred[n] = argmax_k psi[n,k]

Vision selection drops the crops whose cosine with the global view is below the image's mean over
its crops (they get zero mass). Attributes are padded to a common count ``A`` and masked, so all
N x K problems go to :func:`core.solvers.sinkhorn.sinkhorn` at once, with the mask
``kept[:, None, :, None] & attribute_mask[None, :, None, :]`` of shape (N, K, M, A).

Recipes: ``recipe="paper"`` (default) solves each problem with
:func:`core.solvers.sinkhorn.sinkhorn` (log domain, columns then rows, so crop marginals are
exact) and stops on the attribute-marginal error (``tol`` 1e-6). ``recipe="official"`` runs the
public code's Sinkhorn (``OP_d.Sinkhorn`` in ``OP.py`` of shiming-chen/LaZSL, read at commit
34b79f7): kernel domain ``K = exp(-(1 - S)/eps)``; from ``r = c = 1`` it updates the crop scaling
``r = u / (K c)`` first and the attribute scaling ``c = v / (K^T r)`` second (so attribute
marginals are exact), and stops when the mean absolute change of ``r`` over one iteration is below
1e-2 (strictly), at most 100 iterations. The public code solves one class at a time for a batch
of one image, so that mean is over one problem's crops (dropped crops included, where r stays 0);
here every (image, class) problem stops on its own. The threshold is absolute, on scalings of
size about ``exp((1 - S)/eps) / (M A)``, so how soon it triggers depends on the cosine scale.
Both recipes share eps 0.1, max_iter 100, theta 0.8, the uniform marginals and the vision
selection (the public code drops the crops whose cosine with the global view is below the mean).

Memory: every (N, K, M, A) tensor is big (100 images x 1000 classes x 90 crops x 8 attributes is
72M entries, 288 MB in float32) and Sinkhorn holds several at once, so the problems are solved in
blocks of images (and of classes, when one image alone exceeds the budget). ``max_memory_mb``
bounds the working set of one block (about ``_TEMPORARIES`` full-size tensors); each block is still
one batched Sinkhorn call. ``return_plans=True`` additionally keeps the full (N, K, M, A) plans.
Measured on a 2-core CPU in float32 (N=100, M=90, A=8, d=512): K=1000 runs in 3 blocks of 33M
entries with a peak of ~0.95 GB over the inputs; at eps=0.1 and CLIP-scale cosines Sinkhorn meets
tol=1e-6 in ~4 iterations, and the batched Sinkhorn and the crop x attribute products dominate the
time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import (
    as_float_tensor,
    check_classes,
    check_finite,
    check_int,
    check_positive,
    check_range,
    l2_normalize,
)
from core.config import LAZSL_CROP_SCALE, LAZSL_CROPS_PAPER, LaZSLSettings
from core.solvers.sinkhorn import sinkhorn

__all__ = ["LazslResult", "crop_boxes", "explain", "lazsl_scores", "seed_from_hash"]

# Full-size (block) tensors alive at the peak of one block: S, cost, Sinkhorn's log-kernel, its
# per-iteration temporaries or final logits/softmax/plan, and the bool mask; measured 7-8 (float32).
_TEMPORARIES = 8
# Sinkhorn tolerance per recipe: L1 attribute-marginal error (paper), mean |change of the crop
# scaling| per iteration (official, OP_d.Sinkhorn's thresh).
_DEFAULT_TOL = {"paper": 1e-6, "official": 1e-2}


@dataclass(frozen=True)
class LazslResult:
    """Result of :func:`lazsl_scores`.

    Attributes
    ----------
    scores : Tensor, shape (N, K)
        psi[n, k] = <T, S>, the transport-weighted hybrid similarity (higher is better).
    pred : Tensor of int64, shape (N,)
        ``scores.argmax(1)``.
    kept : Tensor of bool, shape (N, M)
        Crops kept by vision selection (all True when it is off).
    plans : Tensor, shape (N, K, M, A), or None
        Transport plans (only with ``return_plans=True``); each sums to 1, zero on dropped crops and
        padded attributes.
    n_iter : int
        Sinkhorn iterations, the most over the blocks.
    marginal_error : float
        Worst L1 attribute-marginal violation over all problems (crop marginals are exact);
        with ``recipe="official"``, the crop-marginal one (attribute marginals are exact).
    converged : bool
        ``marginal_error <= tol``; with ``recipe="official"``, every problem met the public
        code's stopping rule. False in fixed-iteration mode (``tol=0``).
    """

    scores: Tensor
    pred: Tensor
    kept: Tensor
    plans: Tensor | None
    n_iter: int
    marginal_error: float
    converged: bool


def seed_from_hash(sha256_hex: str) -> int:
    """A 63-bit seed for :func:`crop_boxes` from an image's SHA-256 hex digest (first 16 digits)."""
    if not isinstance(sha256_hex, str) or len(sha256_hex) < 16:
        raise ValueError(
            f"sha256_hex: expected a hex digest string (64 characters), got {sha256_hex!r}; "
            "pass hashlib.sha256(image_bytes).hexdigest()."
        )
    try:
        value = int(sha256_hex[:16], 16)
    except ValueError as exc:
        raise ValueError(
            f"sha256_hex: expected hexadecimal digits, got {sha256_hex[:16]!r}."
        ) from exc
    return value & (2**63 - 1)


def crop_boxes(
    width: int, height: int, *, n_crops: int = LAZSL_CROPS_PAPER, scale=LAZSL_CROP_SCALE,
    seed: int
) -> Tensor:
    """Random square crops, LaZSL's visual set: side ~ U(alpha, beta) x short edge.

    Parameters
    ----------
    width, height : int
        Image size in pixels.
    n_crops : int
        Number of crops M (default ``LAZSL_CROPS_PAPER``, 90 as in the paper; the app, CLI and
        eval extract ``core.config.LAZSL_CROPS`` by default: fewer is cheaper on CPU).
    scale : (float, float)
        (alpha, beta) with 0 < alpha <= beta <= 1. Sides are integers drawn uniformly in
        [ceil(alpha * short), floor(beta * short)] (at least 1 pixel on tiny images).
    seed : int
        Seeds a private ``torch.Generator``; use ``seed_from_hash`` of the image bytes so the same
        image always gets the same crops.

    Returns
    -------
    Tensor of int64, shape (n_crops, 4)
        (left, top, right, bottom) with right/bottom exclusive (PIL's ``Image.crop`` convention),
        all inside the image.
    """
    width, height = check_int(width, "width", low=1), check_int(height, "height", low=1)
    n_crops = check_int(n_crops, "n_crops", low=1)
    try:
        alpha, beta = (float(s) for s in scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scale: expected a pair (alpha, beta), got {scale!r}.") from exc
    if not 0 < alpha <= beta <= 1:
        raise ValueError(
            f"scale: expected 0 < alpha <= beta <= 1, got ({alpha}, {beta}); "
            "the paper uses (0.6, 0.9)."
        )
    seed = check_int(seed, "seed", low=0)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n_crops, 3, generator=gen, dtype=torch.float64)  # side, x, y draws
    short = min(width, height)
    lo = max(1, math.ceil(alpha * short - 1e-9))
    hi = max(lo, math.floor(beta * short + 1e-9))
    side = lo + (u[:, 0] * (hi - lo + 1)).long().clamp(max=hi - lo)  # (M,)
    left = (u[:, 1] * (width - side + 1)).long().clamp(max=width - side)
    top = (u[:, 2] * (height - side + 1)).long().clamp(max=height - side)
    return torch.stack([left, top, left + side, top + side], dim=1)


def _check_inputs(global_features, crop_features, attribute_features, attribute_mask):
    g = as_float_tensor(global_features, "global_features")
    c = as_float_tensor(crop_features, "crop_features")
    t = as_float_tensor(attribute_features, "attribute_features")
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(
            f"global_features: expected shape (N, d) with N >= 1, got {tuple(g.shape)}; "
            "pass one global embedding per image."
        )
    if c.ndim != 3:
        raise ValueError(f"crop_features: expected shape (N, M, d), got {tuple(c.shape)}.")
    if c.shape[1] == 0:
        raise ValueError(
            f"crop_features: expected at least 1 crop per image (M >= 1), got shape "
            f"{tuple(c.shape)}; use crop_boxes(..., n_crops>=1)."
        )
    if c.shape[0] != g.shape[0]:
        raise ValueError(
            f"crop_features: expected {g.shape[0]} images (as in global_features), got "
            f"{c.shape[0]}; pass the crops of the same images in the same order."
        )
    if t.ndim != 3 or t.shape[1] == 0:
        raise ValueError(
            f"attribute_features: expected shape (K, A, d) with A >= 1, got {tuple(t.shape)}; "
            "pad each class's attributes to a common A and mark the padding in attribute_mask."
        )
    dims = {
        "global_features": g.shape[1],
        "crop_features": c.shape[2],
        "attribute_features": t.shape[2],
    }
    if len(set(dims.values())) != 1:
        raise ValueError(
            f"expected one feature dimension d, got {dims}; encode images and attribute "
            "sentences with the same VLM."
        )
    check_classes(t.shape[0], name="attribute_features")
    mask = torch.as_tensor(attribute_mask, device=t.device)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                f"attribute_mask: expected a bool tensor (True = real attribute), got dtype "
                f"{mask.dtype}."
            )
        mask = mask.bool()
    if tuple(mask.shape) != tuple(t.shape[:2]):
        raise ValueError(
            f"attribute_mask: expected shape (K, A) = {tuple(t.shape[:2])}, "
            f"got {tuple(mask.shape)}."
        )
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"attribute_mask: every class needs at least one valid attribute, got none for class "
            f"index(es) {empty[:10]}; give those classes a descriptor (e.g. the class name itself)."
        )
    check_finite(g, "global_features")
    check_finite(c, "crop_features")
    check_finite(t[mask], "attribute_features")  # padded slots may hold anything; they are zeroed
    dtype = torch.float64 if torch.float64 in (g.dtype, c.dtype, t.dtype) else torch.float32
    device = g.device
    t = t.to(device, dtype).masked_fill(~mask.to(device)[..., None], 0.0)
    return g.to(dtype), c.to(device, dtype), t, mask.to(device)


def _sinkhorn_official(
    sim: Tensor, row_mask: Tensor, col_mask: Tensor, *, eps: float, max_iter: int, tol: float
) -> tuple[Tensor, int, bool]:
    """The public LaZSL code's Sinkhorn, one stopping decision per problem (see module doc).

    Parameters
    ----------
    sim : Tensor, shape (B, M, A)
        Hybrid similarities S of B independent (image, class) problems; the cost is ``1 - S``.
    row_mask : Tensor of bool, shape (B, M)
        Kept crops (uniform mass over them, 0 elsewhere).
    col_mask : Tensor of bool, shape (B, A)
        Real attributes (uniform mass over them, 0 on padding).
    eps, max_iter, tol : float, int, float
        ``K = exp(-(1 - S) / eps)``; stop a problem when ``mean_m |r_m - r_m_prev| < tol``.

    Returns
    -------
    plan : Tensor, shape (B, M, A)
        ``diag(r) K diag(c)``: attribute marginals exact, crop marginals after the last update.
    n_iter : int
        Iterations of the slowest problem.
    converged : bool
        Every problem met the stopping rule within ``max_iter``.
    """
    u = row_mask.to(sim.dtype)
    u = u / u.sum(-1, keepdim=True)  # (B, M)
    v = col_mask.to(sim.dtype)
    v = v / v.sum(-1, keepdim=True)  # (B, A)
    kernel = torch.exp((sim - 1.0) / eps) * (row_mask[..., :, None] & col_mask[..., None, :])
    r, c = torch.ones_like(u), torch.ones_like(v)
    active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        # Zero-mass rows/columns stay at 0 instead of 0/0 (their kernel rows are zero).
        kc = (kernel @ c[..., None]).squeeze(-1)  # (B, M)
        r_new = torch.where(u > 0, u / kc, 0.0)
        ktr = (kernel.transpose(-1, -2) @ r_new[..., None]).squeeze(-1)  # (B, A)
        c_new = torch.where(v > 0, v / ktr, 0.0)
        err = (r_new - r).abs().mean(-1)  # (B,), over all M crops, as the public code
        r = torch.where(active[:, None], r_new, r)
        c = torch.where(active[:, None], c_new, c)
        active = active & ~(err < tol)
        if not bool(active.any()):
            break
    return r[..., :, None] * kernel * c[..., None, :], n_iter, not bool(active.any())


def _block_sizes(n: int, k: int, m: int, a: int, itemsize: int, max_memory_mb: float):
    """(images, classes) per block so that one block's working set stays within the budget."""
    budget = int(max_memory_mb * 2**20 / (_TEMPORARIES * itemsize))  # entries per block
    per_image = k * m * a
    if per_image <= budget:
        return max(1, min(n, budget // per_image)), k
    return 1, max(1, min(k, budget // (m * a)))


def lazsl_scores(
    global_features,
    crop_features,
    attribute_features,
    attribute_mask,
    *,
    theta: float = LaZSLSettings.theta,
    eps: float = LaZSLSettings.eps,
    max_iter: int = 100,
    tol: float | None = None,
    recipe: str = "paper",
    vision_selection: bool = True,
    return_plans: bool = False,
    max_memory_mb: float = 1024.0,
) -> LazslResult:
    """LaZSL class scores for N images and K classes (LaZSL Sec. 3), batched over (N, K).

    Parameters
    ----------
    global_features : Tensor, shape (N, d)
        One embedding of each whole image.
    crop_features : Tensor, shape (N, M, d)
        Embeddings of M crops per image (see :func:`crop_boxes`).
    attribute_features : Tensor, shape (K, A, d)
        Text embeddings of each class's attribute sentences, padded to A per class.
    attribute_mask : Tensor of bool, shape (K, A)
        True for real attributes, False for padding; every class needs at least one True.
    theta : float
        Weight of the crop similarity in the hybrid S, in [0, 1] (0.8 in the paper).
    eps : float
        Sinkhorn regularisation (0.1 in the paper).
    max_iter, tol : int, float
        Sinkhorn stopping rule; ``tol=0`` runs ``max_iter``. ``tol`` bounds the worst L1
        attribute-marginal error (``recipe="paper"``, default 1e-6, see
        :func:`core.solvers.sinkhorn.sinkhorn`) or the mean absolute change of the crop scaling
        over one iteration (``recipe="official"``, default 1e-2, the public code's).
    recipe : {"paper", "official"}, default "paper"
        The Sinkhorn loop and its stopping rule (module doc); everything else is shared.
    vision_selection : bool
        Drop crops whose cosine with the global view is below the image's mean crop cosine.
    return_plans : bool
        Keep the (N, K, M, A) plans in the result (for :func:`explain`).
    max_memory_mb : float
        Working-set budget of one batched Sinkhorn call; the (N, K) problems are split into blocks
        of images (and classes) to fit. Results do not depend on it when ``tol=0``.

    Returns
    -------
    LazslResult
        All features are L2-normalised on entry; computed in float64 if any input is float64,
        float32 otherwise.
    """
    g, c, t, mask = _check_inputs(
        global_features, crop_features, attribute_features, attribute_mask
    )
    theta = check_range(theta, "theta", 0.0, 1.0)
    eps = check_positive(eps, "eps")
    max_iter = check_int(max_iter, "max_iter", low=1)
    if recipe not in _DEFAULT_TOL:
        raise ValueError(
            f"recipe: expected one of {sorted(_DEFAULT_TOL)} ('paper': log-domain Sinkhorn to a "
            f"marginal tolerance, 'official': the public code's loop), got {recipe!r}."
        )
    tol = float(_DEFAULT_TOL[recipe] if tol is None else tol)
    if not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0 (0 = fixed iterations), got {tol}.")
    max_memory_mb = check_positive(max_memory_mb, "max_memory_mb")

    g, c, t = l2_normalize(g), l2_normalize(c), l2_normalize(t)
    n, m, d = c.shape
    k, a = mask.shape
    if vision_selection:
        sim = torch.einsum("nmd,nd->nm", c, g)  # (N, M) crop-global cosines
        # The max crop is always kept, so rounding in the mean can never drop every crop.
        kept = (sim >= sim.mean(1, keepdim=True)) | (sim == sim.amax(1, keepdim=True))
    else:
        kept = torch.ones(n, m, dtype=torch.bool, device=g.device)

    s_glob = g @ t.reshape(k * a, d).T  # (N, K*A)
    n_blk, k_blk = _block_sizes(n, k, m, a, g.element_size(), max_memory_mb)
    scores = g.new_empty(n, k)
    plans = g.new_zeros(n, k, m, a) if return_plans else None
    n_iter, err, converged = 0, 0.0, True
    for i0 in range(0, n, n_blk):
        i1 = min(n, i0 + n_blk)
        crops = c[i0:i1].reshape(-1, d)
        for k0 in range(0, k, k_blk):
            k1 = min(k, k0 + k_blk)
            tk = t[k0:k1].reshape(-1, d)
            s = (crops @ tk.T).view(i1 - i0, m, k1 - k0, a).permute(0, 2, 1, 3).contiguous()
            sg = s_glob[i0:i1].view(i1 - i0, k, a)[:, k0:k1, None, :]  # (n, k, 1, A)
            s.mul_(theta).add_(sg, alpha=1.0 - theta)  # hybrid S, (n, k, M, A), in place
            if recipe == "official":
                nb, kb = i1 - i0, k1 - k0
                rows = kept[i0:i1, None, :].expand(nb, kb, m).reshape(-1, m)
                cols = mask[None, k0:k1, :].expand(nb, kb, a).reshape(-1, a)
                plan, used, done = _sinkhorn_official(
                    s.view(-1, m, a), rows, cols, eps=eps, max_iter=max_iter, tol=tol
                )
                if not bool(torch.isfinite(plan).all()):
                    raise ValueError(
                        f"LaZSL (recipe='official'): the kernel exp(-(1 - S)/eps) underflowed at "
                        f"eps={eps} in {s.dtype} (the public code returns None there); raise eps "
                        "or use recipe='paper' (log domain)."
                    )
                # Attribute marginals are exact here: report the crop-marginal violation.
                crop_mass = rows.to(s.dtype) / rows.sum(-1, keepdim=True)  # (nb * kb, M)
                blk_err = float((plan.sum(-1) - crop_mass).abs().sum(-1).max())
                plan = plan.view(nb, kb, m, a)
                converged = converged and done
            else:
                block_mask = kept[i0:i1, None, :, None] & mask[None, k0:k1, None, :]
                res = sinkhorn(1.0 - s, eps=eps, max_iter=max_iter, tol=tol, mask=block_mask)
                plan, used, blk_err = res.plan, res.n_iter, res.marginal_error
                del res
            scores[i0:i1, k0:k1] = (plan * s).sum((-2, -1))  # psi = <T, S>
            if plans is not None:
                plans[i0:i1, k0:k1] = plan
            n_iter, err = max(n_iter, used), max(err, blk_err)
            del s, plan
    return LazslResult(
        scores=scores,
        pred=scores.argmax(1),
        kept=kept,
        plans=plans,
        n_iter=n_iter,
        marginal_error=err,
        converged=bool(tol > 0 and (converged if recipe == "official" else err <= tol)),
    )


def explain(
    result: LazslResult,
    image_index: int,
    class_index: int,
    crop_boxes: Tensor | Sequence,
    sentences: Sequence[str],
    *,
    top_k: int | None = None,
) -> list[tuple[tuple[int, ...], str, float]]:
    """Which crop explains which attribute: for each kept crop, its box, best attribute and mass.

    Parameters
    ----------
    result : LazslResult
        From ``lazsl_scores(..., return_plans=True)``.
    image_index, class_index : int
        The (image, class) pair to explain, e.g. ``(n, result.pred[n])``.
    crop_boxes : Tensor or sequence, shape (M, 4)
        The boxes the crops of this image were cut from.
    sentences : sequence of str
        The class's attribute sentences, one per attribute slot (trailing padding may be omitted).
    top_k : int, optional
        Keep the ``top_k`` heaviest crops only.

    Returns
    -------
    list of (box, sentence, mass)
        One entry per kept crop, heaviest first; ``mass`` is the plan mass that crop sends to its
        best-matched attribute (masses of all pairs sum to 1).
    """
    if result.plans is None:
        raise ValueError("result.plans is None; call lazsl_scores(..., return_plans=True) first.")
    n, k, m, _ = result.plans.shape
    if not (0 <= int(image_index) < n and 0 <= int(class_index) < k):
        raise ValueError(
            f"expected image_index in [0, {n}) and class_index in [0, {k}), got "
            f"({image_index}, {class_index})."
        )
    boxes = torch.as_tensor(crop_boxes)
    if tuple(boxes.shape) != (m, 4):
        raise ValueError(
            f"crop_boxes: expected shape ({m}, 4) (one box per crop), got {tuple(boxes.shape)}."
        )
    plan = result.plans[int(image_index), int(class_index)]  # (M, A)
    mass, best = plan.max(1)  # (M,)
    rows = [i for i in mass.argsort(descending=True).tolist() if float(plan[i].sum()) > 0]
    if top_k is not None:
        rows = rows[: check_int(top_k, "top_k", low=1)]
    out = []
    for i in rows:
        j = int(best[i])
        if j >= len(sentences):
            raise ValueError(
                f"sentences: attribute slot {j} carries mass but only {len(sentences)} sentences "
                "were given; pass one sentence per attribute slot of the class."
            )
        out.append((tuple(int(v) for v in boxes[i].tolist()), sentences[j], float(mass[i])))
    return out
