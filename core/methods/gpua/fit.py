"""GPUA: Geometry-Preserving Unsupervised Alignment of a VFM into a VLM's text space.

Yu et al., "Geometry-Preserving Unsupervised Alignment for Heterogeneous Foundation Models"
(ICML 2026), Sec. 3 and Algorithm 1. Inputs: VFM features Z (n, d_v), VLM image features
X (n, d_t), text prototypes Y (K, d_t); no labels.

Stage 1, UCM (Eq. 10-12), in ``core.methods.gpua.ucm``: soft correspondences P (n, K) between
images and classes from entropic OT on ``(1 - lam) Z C^T + lam X Y^T`` alternating with VFM
barycentres C; pseudo-labels are ``argmax P``.

Stage 2, GPA (Eq. 13-16), in ``core.methods.gpua.ths``: ``W0 = U V^T`` from the thin SVD of
``Z^T P Y`` (soft targets, the paper) or ``Z^T Y[argmax P]`` (hard targets, the public code), then
THS refinement with AdamW, optionally re-projected onto (semi-)orthogonal matrices.

Inference: ``argmax normalise(Z W) Y^T``; fit on a pool (GPUA*: 16 images per class) and apply
elsewhere, or fit on the test set itself (transductive). The fitted map is an
:class:`~core.methods.gpua.alignment.Alignment`; segmentation helpers are in
``core.methods.gpua.segment``.

Recipes
-------
``recipe="paper"`` (default) is our reading of the paper, with the deviations below.
``recipe="official"`` reproduces the public code (github.com/Yuteam14/GPUA at commit 388fe56),
quirks included; its defaults and where each comes from are in ``core.methods.gpua.recipes``:

- UCM scores are negative Euclidean distances divided by 0.1, weighted 0.1 (VFM centres) and 0.9
  (VLM prototypes); ``Z`` is used as given: the code feeds ``[VFM, VLM]`` with each block
  normalised and the concatenation *not* renormalised (``concat_features(vfm, vlm,
  renormalize=False)``), and we refuse rows whose squared norm is not near a whole number of
  unit blocks;
- centres start from the 8 most confident samples per class under ``softmax(100 X Y^T)``;
- SwAV's probability-domain Sinkhorn at eps 0.05, at most 50 iterations, stopping when the largest
  change of the mass-1 plan is below 1e-5; 3 UCM rounds by default (the code reads them per
  dataset from a table, ``MAX_ITER_MAP``, that the public repository does not include). The
  solver is ``core.solvers.sinkhorn_swav``, shared with OTFusion's official recipe; where a class
  underflows for every sample (the code's plan turns NaN) we raise a clear error instead;
- hard Procrustes targets, then ``W0 <- W0 - 0.9 (W0 - I)`` with the (d_v, d_t) identity, i.e. W0
  shrunk 90% toward the identity on its top-left block. With ``Z = [VFM, VLM]`` that block maps
  the first d_t VFM coordinates onto the text space, which looks like a bug (the VLM block sits
  below it). The function doing it (``w_alignment/w_thin.py``) is missing from the public
  repository; the form is the one of the function it descends from;
- THS with the pseudo-label's prototype allowed in the top-3, hub weight 2, AdamW weight decay
  5e-4, cosine decay to 1e-7, 400 steps, each on a random 75% subset with Gaussian noise
  (sigma 0.035) and dropout (0.05), each applied with probability 1/2, and no re-projection.
  The random streams are ours (``generator``), not the code's global seeds, so THS matches the
  code in distribution, not draw for draw.

Deviations of the paper recipe, and why
---------------------------------------
- Barycentres are L2-normalised (DESIGN.md): features live on the sphere, so ``Z C^T`` stays a
  cosine in [-1, 1] on the same scale as ``X Y^T``; Eq. 12's raw means shrink with spread.
- THS distances use L2-normalised ``W^T z`` (DESIGN.md); Eq. 15 writes the raw map. With an
  orthogonal W and d_v <= d_t the two coincide; for d_v > d_t, W^T z is a projection whose norm
  varies and inference is by cosine anyway.
- ``P0`` uses temperature ``tau`` (100, CLIP's); Algorithm 1 writes ``Softmax(X Y^T)``.
- AdamW weight decay defaults to 0: the loss only sees normalised features, so decay would only
  shrink W and add drift from orthogonality (the paper does not give a value).
- ``reorthogonalize`` (not in the paper, which only states W^T W = I for W0) re-projects every
  ``ths_reproject_every`` (3) steps with one Newton-Schulz polar iteration, and exactly (SVD) at
  the end. Not after every step: the projection (2 d_v d_t^2 multiply-adds) costs about twice a
  256-sample THS step; every 3 steps gives the same accuracy on the synthetic benchmark, and
  ``||W^T W - I||_F`` stays well inside the Newton-Schulz basin (1.5; beyond it the exact SVD
  takes over) between projections. Timings: benchmarks/README.md.
- THS steps run on minibatches of ``ths_batch_size`` samples (default 256; the paper gives no
  batch size, only "a few gradient steps"). Full batches cost 2 n d_v d_t multiply-adds per step;
  minibatches of 256 keep the same accuracy on our synthetic checks at a fraction of the cost
  (benchmarks/README.md). ``ths_batch_size=1.0`` (the whole pool) restores full batches.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from core.checks import (
    check_classes,
    check_finite,
    check_int,
    check_matrix,
    check_positive,
    check_range,
    check_same_rows,
    l2_normalize,
)
from core.config import GPUA_LOSSES, GPUA_MININGS
from core.methods.gpua.alignment import Alignment, _check_features, _common_dtype
from core.methods.gpua.recipes import resolve_recipe
from core.methods.gpua.ths import refine_ths
from core.methods.gpua.ucm import mine_correspondences, mine_correspondences_official
from core.solvers.procrustes import procrustes

__all__ = ["Alignment", "concat_features", "fit_gpua"]

# The official recipe's Z rows have squared norm = number of unit blocks; float16 features
# normalised upstream are off by ~1e-3, raw DINO features by hundreds.
_BLOCK_NORM_ATOL = 0.02
_MAX_BLOCKS = 16


def concat_features(*features, renormalize: bool = True) -> Tensor:
    """Concatenate per-sample features of several models, each normalised, then renormalise.

    The paper's best setting feeds GPUA ``Z = [VFM, VLM]``; normalising each block first gives
    every model the same weight.

    Parameters
    ----------
    *features : Tensor, shape (..., d_i)
        Same leading shape for all.
    renormalize : bool, default True
        L2-normalise the concatenation. False keeps each block at unit norm and the rows at norm
        sqrt(number of blocks): the public GPUA code's Z (``fit_gpua(..., recipe="official")``).

    Returns
    -------
    Tensor, shape (..., sum d_i)
        L2-normalised rows (or sqrt(len(features)) with ``renormalize=False``).
    """
    if not features:
        raise ValueError("concat_features: expected at least one feature tensor, got none.")
    blocks = [_check_features(f, f"features[{i}]") for i, f in enumerate(features)]
    for i, f in enumerate(blocks):
        if f.shape[:-1] != blocks[0].shape[:-1]:
            raise ValueError(
                f"features[{i}]: expected leading shape {tuple(blocks[0].shape[:-1])} (one row "
                f"per sample, as features[0]), got {tuple(f.shape)}; pass features of the same "
                "images in the same order."
            )
    dtype = _common_dtype(*blocks)
    z = torch.cat([l2_normalize(b.to(dtype)) for b in blocks], dim=-1)
    return l2_normalize(z) if renormalize else z


def _check_unit_blocks(z: Tensor) -> None:
    """The official recipe uses Z as given: its rows must be unit blocks side by side."""
    sq = z.pow(2).sum(dim=1)  # (n,)
    blocks = torch.round(sq.mean())
    if not 1 <= float(blocks) <= _MAX_BLOCKS or float((sq - blocks).abs().max()) > _BLOCK_NORM_ATOL:
        raise ValueError(
            "vfm_features: recipe='official' uses Z as given (the public code's Z = [VFM, VLM], "
            "each block L2-normalised, rows of squared norm 2), so every row's squared norm must "
            f"be a whole number of unit blocks; got squared norms in [{float(sq.min()):.4g}, "
            f"{float(sq.max()):.4g}]. Pass concat_features(vfm, vlm, renormalize=False), or "
            "L2-normalised features."
        )


def _batch_size(value, n: int) -> int:
    """THS samples per step from an int (samples) or a float in (0, 1] (fraction of n)."""
    if isinstance(value, float):
        value = check_range(value, "ths_batch_size", 0.0, 1.0)
        if value == 0.0:
            raise ValueError("ths_batch_size: expected a fraction in (0, 1] or an int >= 1, got 0.")
        return max(1, int(value * n))  # int(): the public code's int(n * 0.75)
    return check_int(value, "ths_batch_size", 1)


def fit_gpua(
    vfm_features,
    vlm_features,
    text_features,
    *,
    recipe: str = "paper",
    lam: float = 0.9,
    eps: float | None = None,
    n_ucm_iter: int | None = None,
    targets: str | None = None,
    identity_shrink: float | None = None,
    ths_steps: int | None = None,
    ths_k: int = 3,
    ths_margin_scale: float = 2.0,
    ths_lr: float = 5e-4,
    ths_lr_min: float | None = None,
    ths_weight_decay: float | None = None,
    ths_batch_size: int | float | None = None,
    ths_include_positive: bool | None = None,
    ths_hub_weight: float | None = None,
    ths_noise_std: float | None = None,
    ths_dropout: float | None = None,
    reorthogonalize: bool | None = None,
    ths_reproject_every: int = 3,
    hubness_penalty: bool = True,
    temperature: float = 100.0,
    sinkhorn_max_iter: int | None = None,
    sinkhorn_tol: float | None = None,
    generator: torch.Generator | None = None,
    loss: str = "ths",
    mining: str = "joint",
) -> Alignment:
    """Fit GPUA (UCM, Procrustes, THS) without labels.

    A knob left at None takes its recipe's value (``core.methods.gpua.recipes.RECIPES``; listed
    below as paper / official); any value passed overrides it.

    Parameters
    ----------
    vfm_features : Tensor, shape (n, d_v)
        Z: VFM features of the pool, or ``concat_features(vfm, vlm)`` (the paper's best
        setting). L2-normalised on entry by the paper recipe; used as given by the official one
        (pass ``concat_features(vfm, vlm, renormalize=False)``, see the module doc).
    vlm_features : Tensor, shape (n, d_t)
        X: VLM image features of the same images.
    text_features : Tensor, shape (K, d_t)
        Y: one text prototype per class, 2 <= K <= n.
    recipe : {"paper", "official"}, default "paper"
        Our reading of the paper, or the public code with its quirks (module doc).
    lam : float in [0, 1], default 0.9
        Weight of the VLM score against the VFM cluster score in UCM (Eq. 10; the code's 0.9).
    eps : float > 0, default 0.01 / 0.05
        UCM Sinkhorn regularisation (cosine scores / distance scores divided by 0.1).
    n_ucm_iter : int >= 0, default 5 / 3
        UCM rounds (Sinkhorn + centres); 0 uses the zero-shot softmax as P.
    targets : {"soft", "hard"}, default "soft" / "hard"
        Procrustes targets: ``P Y`` (paper, Eq. 13) or ``Y[argmax P]`` (public code).
    identity_shrink : float in [0, 1], default 0 / 0.9
        ``W0 <- W0 - identity_shrink * (W0 - I)``, I the (d_v, d_t) identity; 0 is off.
    ths_steps : int >= 0, default 200 / 400
        AdamW steps of the THS refinement; 0 returns W0.
    ths_k : int >= 1, default 3
        Prototypes per sample in the hinge (capped at K - 1, or K when the positive may be one).
    ths_margin_scale : float > 0, default 2.0
        ``s`` in the semantic margin ``(1 - y_l . y_c) / s``.
    ths_lr : float > 0, default 5e-4
        Initial AdamW learning rate, cosine-decayed to ``ths_lr_min`` over ``ths_steps``.
    ths_lr_min : float >= 0, default 0 / 1e-7
    ths_weight_decay : float >= 0, default 0 / 5e-4
    ths_batch_size : int >= 1 or float in (0, 1], default 256 / 0.75
        Samples per THS step (int), or a fraction of the pool (float; 1.0 = full batches), drawn
        without replacement with ``generator``.
    ths_include_positive : bool, default False / True
        Take the top-k over all prototypes, the pseudo-label's included (public code), instead of
        the k nearest competing ones (Eq. 15).
    ths_hub_weight : float >= 0, default 1 / 2
        Weight of the hubness term h_c (Eq. 16) in the hinge.
    ths_noise_std, ths_dropout : float >= 0, default 0 / 0.035 and 0 / 0.05
        THS feature augmentations, each applied to a step with probability 1/2 (0 = off).
    reorthogonalize : bool, default True / False
        Project W back onto (semi-)orthogonal matrices during THS (one Newton-Schulz step every
        ``ths_reproject_every`` steps) and exactly at the end.
    ths_reproject_every : int >= 1, default 3
        THS steps between those projections (1 = after every step).
    hubness_penalty : bool, default True
        Add the hubness term inside the THS hinge.
    temperature : float > 0, default 100.0
        Softmax temperature of the initial zero-shot correspondences P0.
    sinkhorn_max_iter : int >= 1, default 1000 / 50
    sinkhorn_tol : float >= 0, default 1e-3 / 1e-5
        Stopping rule of each UCM Sinkhorn: the L1 column-marginal error of the mass-1 plan
        (paper; 0 = run ``sinkhorn_max_iter``), or the largest change of the mass-1 plan over
        one iteration (official).
    loss : str, default "ths"
        The refinement objective, one of ``core.config.GPUA_LOSSES`` (Tables 4 and 6): "ths"
        (Eq. 15-16) or a baseline of ``core.methods.gpua.losses``.
    mining : {"joint", "semantic"}, default "joint"
        UCM's scores: VFM clusters and VLM semantics (Eq. 10) or the VLM's semantics alone
        (Table 3's "Only-S": ``lam`` is taken as 1 and recorded so in ``config``).
    generator : torch.Generator, optional
        Draws THS minibatches and augmentations. Default: a CPU generator seeded with 0, so
        that a fit is reproducible and independent of the global RNG; the rest is deterministic.

    Returns
    -------
    Alignment
        ``config`` holds the recipe and every resolved knob.
    """
    z = check_matrix(vfm_features, "vfm_features")
    x = check_matrix(vlm_features, "vlm_features")
    y = check_matrix(text_features, "text_features")
    n = check_same_rows({"vfm_features": z, "vlm_features": x})
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"text_features: expected the VLM image dimension d_t = {x.shape[1]}, got shape "
            f"{tuple(y.shape)}; encode images and prompts with the same VLM."
        )
    check_classes(y.shape[0], n, "text_features")
    r = resolve_recipe(recipe, dict(
        eps=eps, n_ucm_iter=n_ucm_iter, sinkhorn_max_iter=sinkhorn_max_iter,
        sinkhorn_tol=sinkhorn_tol, targets=targets, identity_shrink=identity_shrink,
        ths_steps=ths_steps, ths_weight_decay=ths_weight_decay, ths_lr_min=ths_lr_min,
        ths_batch_size=ths_batch_size, ths_include_positive=ths_include_positive,
        ths_hub_weight=ths_hub_weight, ths_noise_std=ths_noise_std, ths_dropout=ths_dropout,
        reorthogonalize=reorthogonalize,
    ))
    if loss not in GPUA_LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(GPUA_LOSSES)}, got {loss!r}.")
    if mining not in GPUA_MININGS:
        raise ValueError(f"mining: expected one of {', '.join(GPUA_MININGS)} (semantic: Table "
                         f"3's Only-S), got {mining!r}.")
    lam = 1.0 if mining == "semantic" else check_range(lam, "lam", 0.0, 1.0)
    eps = check_positive(r.eps, "eps")
    n_ucm_iter = check_int(r.n_ucm_iter, "n_ucm_iter", 0)
    if r.targets not in ("soft", "hard"):
        raise ValueError(
            f"targets: expected 'soft' (the paper, P Y) or 'hard' (the public code, "
            f"Y[argmax P]), got {r.targets!r}."
        )
    identity_shrink = check_range(r.identity_shrink, "identity_shrink", 0.0, 1.0)
    ths_steps = check_int(r.ths_steps, "ths_steps", 0)
    ths_k = check_int(ths_k, "ths_k", 1)
    ths_margin_scale = check_positive(ths_margin_scale, "ths_margin_scale")
    ths_lr = check_positive(ths_lr, "ths_lr")
    ths_lr_min = check_range(r.ths_lr_min, "ths_lr_min", 0.0, ths_lr)
    ths_weight_decay = check_range(r.ths_weight_decay, "ths_weight_decay", 0.0, float("inf"))
    batch_size = _batch_size(r.ths_batch_size, n)
    ths_hub_weight = check_range(r.ths_hub_weight, "ths_hub_weight", 0.0, float("inf"))
    ths_noise_std = check_range(r.ths_noise_std, "ths_noise_std", 0.0, float("inf"))
    ths_dropout = check_range(r.ths_dropout, "ths_dropout", 0.0, 0.99)
    ths_reproject_every = check_int(ths_reproject_every, "ths_reproject_every", 1)
    temperature = check_positive(temperature, "temperature")
    sinkhorn_max_iter = check_int(r.sinkhorn_max_iter, "sinkhorn_max_iter", 1)
    sinkhorn_tol = check_range(r.sinkhorn_tol, "sinkhorn_tol", 0.0, float("inf"))
    config = dict(
        recipe=recipe, lam=lam, eps=eps, n_ucm_iter=n_ucm_iter, targets=r.targets,
        identity_shrink=identity_shrink, ths_steps=ths_steps, ths_k=ths_k,
        ths_margin_scale=ths_margin_scale, ths_lr=ths_lr, ths_lr_min=ths_lr_min,
        ths_weight_decay=ths_weight_decay, ths_batch_size=r.ths_batch_size,
        ths_include_positive=bool(r.ths_include_positive), ths_hub_weight=ths_hub_weight,
        ths_noise_std=ths_noise_std, ths_dropout=ths_dropout,
        reorthogonalize=bool(r.reorthogonalize), ths_reproject_every=ths_reproject_every,
        hubness_penalty=bool(hubness_penalty), temperature=temperature,
        sinkhorn_max_iter=sinkhorn_max_iter, sinkhorn_tol=sinkhorn_tol, loss=loss, mining=mining,
    )

    official = recipe == "official"
    dtype = _common_dtype(z, x, y)
    if official:
        z = z.to(dtype)
        _check_unit_blocks(z)
    else:
        z = l2_normalize(z.to(dtype))
    x = l2_normalize(x.to(device=z.device, dtype=dtype))
    y = l2_normalize(y.to(device=z.device, dtype=dtype))

    mine = mine_correspondences_official if official else mine_correspondences
    probs, n_iters, err = mine(
        z, x, y, lam=lam, eps=eps, n_iter=n_ucm_iter, temperature=temperature,
        sinkhorn_max_iter=sinkhorn_max_iter, sinkhorn_tol=sinkhorn_tol,
    )
    check_finite(probs, "UCM correspondences")
    if not official and sinkhorn_tol > 0 and n_ucm_iter > 0 and err > sinkhorn_tol:
        warnings.warn(
            f"GPUA: the last UCM Sinkhorn did not reach tol={sinkhorn_tol} in {n_iters[-1]} "
            f"iterations (column error {err:.2e}); raise sinkhorn_max_iter or eps.",
            RuntimeWarning,
            stacklevel=2,
        )
    labels = probs.argmax(dim=1)
    target = probs @ y if r.targets == "soft" else y[labels]  # (n, d_t)
    w0 = procrustes(z, target)  # (d_v, d_t), Eq. 14
    if identity_shrink > 0:
        eye = torch.eye(*w0.shape, dtype=w0.dtype, device=w0.device)  # top-left block
        w0 = w0 - identity_shrink * (w0 - eye)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    ths = refine_ths(
        z, y, labels, w0, n_steps=ths_steps, k=ths_k, margin_scale=ths_margin_scale, lr=ths_lr,
        weight_decay=ths_weight_decay, hubness_penalty=hubness_penalty,
        include_positive=bool(r.ths_include_positive), hub_weight=ths_hub_weight,
        lr_min=ths_lr_min, noise_std=ths_noise_std, dropout=ths_dropout,
        reorthogonalize=bool(r.reorthogonalize), reproject_every=ths_reproject_every,
        batch_size=batch_size, generator=generator, loss=loss,
    )
    return Alignment(
        W=ths.W,
        pseudo_labels=labels,
        probs=probs,
        loss_history=ths.loss_history,
        orthogonality_error=ths.orthogonality_error,
        config=config,
        ucm_n_iter=n_iters,
        ucm_marginal_error=err,
        W0=w0,
    )
