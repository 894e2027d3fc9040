"""GPUA: Geometry-Preserving Unsupervised Alignment of a VFM into a VLM's text space.

Yu et al., "Geometry-Preserving Unsupervised Alignment for Heterogeneous Foundation Models"
(ICML 2026), Sec. 3 and Algorithm 1. Inputs: VFM features Z (n, d_v), VLM image features
X (n, d_t), text prototypes Y (K, d_t); no labels.

Stage 1, UCM (Eq. 10-12), in ``core/ucm.py``: soft correspondences P (n, K) between images and
classes from entropic OT on ``(1 - lam) Z C^T + lam X Y^T`` alternating with VFM barycentres C;
pseudo-labels are ``argmax P``.

Stage 2, GPA (Eq. 13-16), in ``core/ths.py``: ``W0 = U V^T`` from the thin SVD of ``Z^T P Y``
(soft targets, the paper) or ``Z^T Y[argmax P]`` (hard targets, the public code), then THS
refinement with AdamW, optionally re-projected onto (semi-)orthogonal matrices after each step.

Inference: ``argmax normalise(Z W) Y^T``; fit on a pool (GPUA*: 16 images per class) and apply
elsewhere, or fit on the test set itself (transductive). Segmentation helpers: ``core/gpua_seg.py``.

Deviations from the paper, and why
----------------------------------
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
  256-sample THS step. On the synthetic benchmark (1k, 100) every 3 steps fits in 1.1 s instead
  of 1.9 s (Z = [VFM, VLM]: 1.8 s instead of 2.9 s) with the same accuracy over 3 seeds, and
  ``||W^T W - I||_F`` reaches at most 0.93 between projections, well inside the Newton-Schulz
  basin (1.5; beyond it the exact SVD takes over).
- THS steps run on minibatches of ``ths_batch_size`` samples (default 256; the paper gives no
  batch size, only "a few gradient steps"). Full batches cost 2 n d_v d_t multiply-adds per step,
  about 4 s for 200 steps at n = 1000, d_v = 768 on a 2-core CPU; minibatches of 256 keep a fit at
  that size under 2 s with the same accuracy on our synthetic checks. ``ths_batch_size=None``
  restores full batches.

The public code differs from the paper (eps 0.05 on distances / 0.1, hard targets, top-3 including
the positive, no orthogonality after refinement, W shrunk toward identity); ``eps``, ``targets``
and ``ths_k`` let a user emulate the first parts, the bugs are not reproduced.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, replace

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
from core.methods.gpua.ths import refine_ths
from core.methods.gpua.ucm import mine_correspondences
from core.solvers.procrustes import orthogonality_error, procrustes

__all__ = ["Alignment", "concat_features", "fit_gpua"]

FORMAT_VERSION = 1
_META_KEY = "gpua"


def _common_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_features(x, name: str) -> Tensor:
    """Validate a non-empty, finite float tensor of shape (..., d) with at least one dimension."""
    x = torch.as_tensor(x) if not isinstance(x, Tensor) else x
    return check_matrix(x, name, ndim=max(x.ndim, 1))


def concat_features(*features) -> Tensor:
    """Concatenate per-sample features of several models, each normalised, then renormalise.

    The paper's best setting feeds GPUA ``Z = [VFM, VLM]``; normalising each block first gives
    every model the same weight.

    Parameters
    ----------
    *features : Tensor, shape (..., d_i)
        Same leading shape for all.

    Returns
    -------
    Tensor, shape (..., sum d_i), L2-normalised
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
    return l2_normalize(torch.cat([l2_normalize(b.to(dtype)) for b in blocks], dim=-1))


@dataclass(frozen=True, eq=False)
class Alignment:
    """A fitted GPUA map from VFM space (d_v) into the VLM text space (d_t).

    Attributes
    ----------
    W : Tensor, shape (d_v, d_t)
        The map; (semi-)orthogonal when ``reorthogonalize`` (see ``orthogonality_error``).
    pseudo_labels : Tensor, shape (n,), long
        ``argmax`` of the UCM correspondences of the fitting pool.
    probs : Tensor, shape (n, K), or None
        UCM correspondences ``n * plan``: rows sum to 1, columns to about n/K. None after
        ``load`` of a file saved with ``include_probs=False``.
    loss_history : tuple of float, length ths_steps + 1
        THS loss at W0, then after each step.
    orthogonality_error : float
        ``||W^T W - I||_F`` (``||W W^T - I||_F`` when d_v < d_t) of the final W.
    config : dict
        The knobs of :func:`fit_gpua`.
    ucm_n_iter : tuple of int
        Sinkhorn iterations of each UCM round.
    ucm_marginal_error : float
        L1 column-marginal error of the last UCM plan.
    W0 : Tensor, shape (d_v, d_t), or None
        The Procrustes map before THS (Eq. 14), kept so that what THS changed can be shown
        (:meth:`procrustes_only`). None in files saved before it was recorded.
    """

    W: Tensor
    pseudo_labels: Tensor
    probs: Tensor | None
    loss_history: tuple[float, ...]
    orthogonality_error: float
    config: dict = field(default_factory=dict)
    ucm_n_iter: tuple[int, ...] = ()
    ucm_marginal_error: float = 0.0
    W0: Tensor | None = field(default=None, repr=False)

    def procrustes_only(self) -> Alignment:
        """This alignment with the Procrustes map ``W0`` in place of the THS-refined ``W``.

        Raises ValueError when ``W0`` was not recorded (a file from an older version).
        """
        if self.W0 is None:
            raise ValueError("this alignment has no W0 (saved by an older version); re-fit it.")
        return replace(self, W=self.W0, loss_history=self.loss_history[:1],
                       orthogonality_error=orthogonality_error(self.W0))

    @property
    def plan(self) -> Tensor | None:
        """UCM transport plan, shape (n, K), total mass 1 (``probs / n``)."""
        return None if self.probs is None else self.probs / self.probs.shape[0]

    def transform(self, vfm_features) -> Tensor:
        """Map VFM features into the text space: ``normalise(Z W)``.

        Parameters
        ----------
        vfm_features : Tensor, shape (..., d_v)
            CLS features (m, d_v) or patch features (n, h, w, d_v); leading dims are kept.

        Returns
        -------
        Tensor, shape (..., d_t), L2-normalised
        """
        z = _check_features(vfm_features, "vfm_features")
        if z.shape[-1] != self.W.shape[0]:
            raise ValueError(
                f"vfm_features: expected last dimension d_v = {self.W.shape[0]} (the VFM this "
                f"alignment was fitted on), got shape {tuple(z.shape)}; use the same VFM (and the "
                "same concatenation) as at fit time."
            )
        dtype = _common_dtype(z, self.W)
        w = self.W.to(device=z.device, dtype=dtype)
        return l2_normalize(z.to(dtype) @ w)  # (..., d_t)

    def predict_proba(self, vfm_features, text_features, *, temperature: float = 100.0) -> Tensor:
        """Class probabilities ``softmax(tau normalise(Z W) Y^T)``, shape (..., K)."""
        temperature = check_positive(temperature, "temperature")
        f = self.transform(vfm_features)
        y = check_matrix(text_features, "text_features")
        if y.shape[1] != self.W.shape[1]:
            raise ValueError(
                f"text_features: expected dimension d_t = {self.W.shape[1]}, got shape "
                f"{tuple(y.shape)}; encode the prompts with the VLM used at fit time."
            )
        y = l2_normalize(y.to(device=f.device, dtype=f.dtype))
        return torch.softmax(temperature * (f @ y.T), dim=-1)  # (..., K)

    def predict(self, vfm_features, text_features) -> Tensor:
        """Predicted class indices, shape (...,), long (argmax of the cosine scores)."""
        return self.predict_proba(vfm_features, text_features).argmax(dim=-1)

    def save(self, path, *, include_probs: bool = True) -> None:
        """Write a safetensors file: W, pseudo-labels, loss history (and probs); JSON metadata.

        The metadata (safetensors header, key ``"gpua"``) holds config, d_v, d_t, diagnostics and
        versions. ``include_probs=False`` skips the (n, K) correspondences, which can be large
        for patch pools.
        """
        import safetensors
        from safetensors.torch import save_file

        tensors = {
            "W": self.W.detach().cpu().contiguous(),
            "pseudo_labels": self.pseudo_labels.detach().cpu().contiguous(),
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
        }
        if include_probs and self.probs is not None:
            tensors["probs"] = self.probs.detach().cpu().contiguous()
        if self.W0 is not None:
            tensors["W0"] = self.W0.detach().cpu().contiguous()
        meta = {
            "format_version": FORMAT_VERSION,
            "d_v": int(self.W.shape[0]),
            "d_t": int(self.W.shape[1]),
            "orthogonality_error": self.orthogonality_error,
            "ucm_n_iter": list(self.ucm_n_iter),
            "ucm_marginal_error": self.ucm_marginal_error,
            "config": self.config,
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__},
        }
        save_file(tensors, os.fspath(path), metadata={_META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path) -> Alignment:
        """Read a file written by :meth:`save`; raises a clear error if missing or corrupt."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"GPUA alignment file not found: {path!r}; save one with Alignment.save(path) "
                "or check the path."
            )
        try:
            with safe_open(path, framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_META_KEY])
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            w, labels = tensors["W"], tensors["pseudo_labels"]
            history = tuple(float(v) for v in tensors["loss_history"].tolist())
        except Exception as exc:
            raise ValueError(
                f"{path!r} is not a readable GPUA alignment file ({type(exc).__name__}: {exc}); "
                "it may be truncated or written by another tool. Re-fit and save it again."
            ) from exc
        if tuple(w.shape) != (meta["d_v"], meta["d_t"]):
            raise ValueError(f"{path!r}: W has shape {tuple(w.shape)}, metadata says otherwise.")
        return cls(
            W=w,
            pseudo_labels=labels,
            probs=tensors.get("probs"),
            loss_history=history,
            orthogonality_error=float(meta["orthogonality_error"]),
            config=meta["config"],
            ucm_n_iter=tuple(meta["ucm_n_iter"]),
            ucm_marginal_error=float(meta["ucm_marginal_error"]),
            W0=tensors.get("W0"),
        )


def fit_gpua(
    vfm_features,
    vlm_features,
    text_features,
    *,
    lam: float = 0.9,
    eps: float = 0.01,
    n_ucm_iter: int = 5,
    targets: str = "soft",
    ths_steps: int = 200,
    ths_k: int = 3,
    ths_margin_scale: float = 2.0,
    ths_lr: float = 5e-4,
    ths_weight_decay: float = 0.0,
    ths_batch_size: int | None = 256,
    reorthogonalize: bool = True,
    ths_reproject_every: int = 3,
    hubness_penalty: bool = True,
    temperature: float = 100.0,
    sinkhorn_max_iter: int = 1000,
    sinkhorn_tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Alignment:
    """Fit GPUA (UCM, Procrustes, THS) without labels.

    Parameters
    ----------
    vfm_features : Tensor, shape (n, d_v)
        Z: VFM features of the pool (or ``concat_features(vfm, vlm)``, the paper's best setting).
    vlm_features : Tensor, shape (n, d_t)
        X: VLM image features of the same images.
    text_features : Tensor, shape (K, d_t)
        Y: one text prototype per class, 2 <= K <= n.
    lam : float in [0, 1], default 0.9
        Weight of the VLM semantic score against the VFM cluster score in UCM (Eq. 10).
    eps : float > 0, default 0.01
        Sinkhorn entropic regularisation (the public code uses 0.05 on another score scale).
    n_ucm_iter : int >= 0, default 5
        UCM rounds (Sinkhorn + barycentres); 0 uses the zero-shot softmax as P.
    targets : {"soft", "hard"}, default "soft"
        Procrustes targets: ``P Y`` (paper, Eq. 13) or ``Y[argmax P]`` (public code).
    ths_steps : int >= 0, default 200
        AdamW steps of the THS refinement; 0 returns the Procrustes W0.
    ths_k : int >= 1, default 3
        Competing prototypes per sample (capped at K - 1; the positive is never one).
    ths_margin_scale : float > 0, default 2.0
        ``s`` in the semantic margin ``(1 - y_l . y_c) / s``.
    ths_lr : float > 0, default 5e-4
        Initial AdamW learning rate, cosine-decayed to 0 over ``ths_steps``.
    ths_weight_decay : float >= 0, default 0.0
    ths_batch_size : int or None, default 256
        Samples per THS step, drawn with ``generator``; None (or >= n) uses full batches.
    reorthogonalize : bool, default True
        Project W back onto (semi-)orthogonal matrices during THS (one Newton-Schulz step every
        ``ths_reproject_every`` steps) and exactly at the end.
    ths_reproject_every : int >= 1, default 3
        THS steps between those projections (1 = after every step).
    hubness_penalty : bool, default True
        Add the hubness term h_c (Eq. 16) inside the THS hinge.
    temperature : float > 0, default 100.0
        Softmax temperature of the initial zero-shot correspondences P0.
    sinkhorn_max_iter : int >= 1, default 1000
    sinkhorn_tol : float >= 0, default 1e-3
        L1 column-marginal tolerance of each UCM Sinkhorn (0 = run ``sinkhorn_max_iter``).
    generator : torch.Generator, optional
        Draws THS minibatches (only used when n > ths_batch_size). Default: a CPU generator
        seeded with 0, so that a fit is reproducible and independent of the global RNG; the
        rest is deterministic.

    Returns
    -------
    Alignment
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
    lam = check_range(lam, "lam", 0.0, 1.0)
    eps = check_positive(eps, "eps")
    n_ucm_iter = check_int(n_ucm_iter, "n_ucm_iter", 0)
    if targets not in ("soft", "hard"):
        raise ValueError(
            f"targets: expected 'soft' (the paper, P Y) or 'hard' (the public code, "
            f"Y[argmax P]), got {targets!r}."
        )
    ths_steps = check_int(ths_steps, "ths_steps", 0)
    ths_k = check_int(ths_k, "ths_k", 1)
    ths_margin_scale = check_positive(ths_margin_scale, "ths_margin_scale")
    ths_lr = check_positive(ths_lr, "ths_lr")
    ths_weight_decay = check_range(ths_weight_decay, "ths_weight_decay", 0.0, float("inf"))
    if ths_batch_size is not None:
        ths_batch_size = check_int(ths_batch_size, "ths_batch_size", 1)
    ths_reproject_every = check_int(ths_reproject_every, "ths_reproject_every", 1)
    temperature = check_positive(temperature, "temperature")
    sinkhorn_max_iter = check_int(sinkhorn_max_iter, "sinkhorn_max_iter", 1)
    sinkhorn_tol = check_range(sinkhorn_tol, "sinkhorn_tol", 0.0, float("inf"))
    config = dict(
        lam=lam, eps=eps, n_ucm_iter=n_ucm_iter, targets=targets, ths_steps=ths_steps,
        ths_k=ths_k, ths_margin_scale=ths_margin_scale, ths_lr=ths_lr,
        ths_weight_decay=ths_weight_decay, ths_batch_size=ths_batch_size,
        reorthogonalize=bool(reorthogonalize), ths_reproject_every=ths_reproject_every,
        hubness_penalty=bool(hubness_penalty), temperature=temperature,
        sinkhorn_max_iter=sinkhorn_max_iter, sinkhorn_tol=sinkhorn_tol,
    )

    dtype = _common_dtype(z, x, y)
    z = l2_normalize(z.to(dtype))
    x = l2_normalize(x.to(device=z.device, dtype=dtype))
    y = l2_normalize(y.to(device=z.device, dtype=dtype))

    probs, n_iters, err = mine_correspondences(
        z, x, y, lam=lam, eps=eps, n_iter=n_ucm_iter, temperature=temperature,
        sinkhorn_max_iter=sinkhorn_max_iter, sinkhorn_tol=sinkhorn_tol,
    )
    check_finite(probs, "UCM correspondences")
    if sinkhorn_tol > 0 and n_ucm_iter > 0 and err > sinkhorn_tol:
        warnings.warn(
            f"GPUA: the last UCM Sinkhorn did not reach tol={sinkhorn_tol} in {n_iters[-1]} "
            f"iterations (column error {err:.2e}); raise sinkhorn_max_iter or eps.",
            RuntimeWarning,
            stacklevel=2,
        )
    labels = probs.argmax(dim=1)
    target = probs @ y if targets == "soft" else y[labels]  # (n, d_t)
    w0 = procrustes(z, target)  # (d_v, d_t), Eq. 14
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    ths = refine_ths(
        z, y, labels, w0, n_steps=ths_steps, k=ths_k, margin_scale=ths_margin_scale, lr=ths_lr,
        weight_decay=ths_weight_decay, hubness_penalty=hubness_penalty,
        reorthogonalize=reorthogonalize, reproject_every=ths_reproject_every,
        batch_size=ths_batch_size, generator=generator,
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
