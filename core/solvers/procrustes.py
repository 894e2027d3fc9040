"""Orthogonal Procrustes and projections onto the (semi-)orthogonal matrices.

GPUA's Geometry-Preserving Alignment (Eq. 13-14 of GPUA) solves ``min_W ||Z W - P Y||_F`` over
(semi-)orthogonal ``W`` by the polar factor of the cross-covariance; its THS refinement keeps ``W``
near that set with one Newton-Schulz polar iteration per few steps (`newton_schulz_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_orthogonal", "newton_schulz_step", "orthogonality_error", "procrustes"]


def nearest_orthogonal(m: Tensor) -> Tensor:
    """Polar factor ``U V^T`` of ``m`` (thin SVD): the nearest (semi-)orthogonal matrix.

    Parameters
    ----------
    m : Tensor, shape (p, q)

    Returns
    -------
    Tensor, shape (p, q), same dtype as ``m``
        Orthonormal rows if p < q, orthonormal columns otherwise. Computed in float64.
    """
    u, _, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    return (u @ vh).to(m.dtype)


def procrustes(source: Tensor, target: Tensor) -> Tensor:
    """Orthogonal Procrustes: ``argmin_W ||source W - target||_F`` over (semi-)orthogonal W.

    Parameters
    ----------
    source : Tensor, shape (n, d_v)
    target : Tensor, shape (n, d_t)

    Returns
    -------
    Tensor, shape (d_v, d_t)
        ``U V^T`` with ``U S V^T = SVD(source^T target)`` (Eq. 14 of GPUA); equals
        ``scipy.linalg.orthogonal_procrustes(source, target)[0]`` when d_v == d_t.
    """
    return nearest_orthogonal(source.T @ target)  # (d_v, d_t)


def orthogonality_error(w: Tensor) -> float:
    """``||W^T W - I||_F`` (tall or square W) or ``||W W^T - I||_F`` (wide W), in float64."""
    w = w.detach().to(torch.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return float(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype)))


def newton_schulz_step(w: Tensor) -> Tensor:
    """Pull ``w`` toward the (semi-)orthogonal matrices: one Newton-Schulz polar iteration.

    ``W (3I - W^T W) / 2`` converges quadratically to the polar factor when every singular value
    is below sqrt(3). ``||W^T W - I||_F <= 1.5`` guarantees that (every sigma^2 <= 2.5); an AdamW
    step at lr 5e-4 from an orthogonal W stays near 0.5. Beyond it, e.g. with a large learning
    rate, fall back to the exact SVD.
    """
    tall = w.shape[0] >= w.shape[1]
    gram = w.T @ w if tall else w @ w.T  # (d_t, d_t) or (d_v, d_v)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if float(torch.linalg.matrix_norm(gram - eye)) > 1.5:
        return nearest_orthogonal(w)
    return 1.5 * w - 0.5 * (w @ gram if tall else gram @ w)
