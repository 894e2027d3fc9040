"""Stage 1 of GPUA: Unsupervised Correspondence Mining (UCM, Eq. 10-12 and Algorithm 1).

With VFM features Z (n, d_v), VLM image features X (n, d_t) and text prototypes Y (K, d_t), all
L2-normalised: ``P0 = softmax(tau X Y^T)``; ``C = normalise(P^T Z)`` (barycentres, Eq. 12);
then ``n_iter`` rounds of

    R = (1 - lam) Z C^T + lam X Y^T                       (n, K), Eq. 10
    P = n * Sinkhorn(cost = -R, eps, uniform marginals)  rows sum to 1, columns to about n/K
    C = normalise(P^T Z)

The Sinkhorn (``core.solvers.sinkhorn``, log domain) runs in tolerance mode: ``sinkhorn_tol``
(1e-3) on
the L1 column error of a plan of total mass 1 -- about one sample's worth of mass misplaced at
n = 1000, irrelevant to argmax pseudo-labels -- and at most ``sinkhorn_max_iter`` (1000)
iterations. Rounds after the first are warm-started from the previous potentials. With
eps = 0.01 the first round takes 40-400 iterations on our synthetic data, later rounds a few
dozen (a tighter 1e-4 often needs the full 1000 when the clusters are sharp).

Barycentres are L2-normalised (DESIGN.md), unlike Eq. 12's raw means: features live on the
sphere, so ``Z C^T`` stays a cosine on the same scale as ``X Y^T`` whatever the spread of a
cluster. ``P0`` uses CLIP's temperature tau (Algorithm 1 writes ``Softmax(X Y^T)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.checks import l2_normalize
from core.solvers.sinkhorn import sinkhorn

__all__ = ["mine_correspondences"]


def _barycentres(z: Tensor, probs: Tensor) -> Tensor:
    """Normalised weighted means of Eq. 12: ``normalise(P^T Z)``, shape (K, d_v)."""
    # Dividing by the column mass (Eq. 12) does not change the direction, so it is skipped.
    return l2_normalize(probs.T @ z)  # (K, d_v)


def mine_correspondences(
    z: Tensor,
    x: Tensor,
    text: Tensor,
    *,
    lam: float = 0.9,
    eps: float = 0.01,
    n_iter: int = 5,
    temperature: float = 100.0,
    sinkhorn_max_iter: int = 1000,
    sinkhorn_tol: float = 1e-3,
) -> tuple[Tensor, tuple[int, ...], float]:
    """UCM (Eq. 10-12 of GPUA) on already validated, L2-normalised inputs (see module doc).

    Parameters
    ----------
    z : Tensor, shape (n, d_v)
    x : Tensor, shape (n, d_t)
    text : Tensor, shape (K, d_t)

    Returns
    -------
    probs : Tensor, shape (n, K)
        ``n * plan``: rows sum to 1 (exactly), columns to about n/K. With ``n_iter = 0`` it is
        the zero-shot softmax ``P0``.
    n_iters : tuple of int
        Sinkhorn iterations per round.
    marginal_error : float
        L1 column-marginal error of the last plan (0 when ``n_iter = 0``).
    """
    semantic = x @ text.T  # (n, K)
    probs = torch.softmax(temperature * semantic, dim=1)
    n_iters, err = [], 0.0
    # Warm start: the plan is unchanged when row/column constants are added to the cost, so
    # subtracting the previous round's potentials starts Sinkhorn from its solution (the
    # centres move little between rounds) without touching the solver.
    pot_u = semantic.new_zeros(semantic.shape[0])
    pot_v = semantic.new_zeros(semantic.shape[1])
    for _ in range(n_iter):
        centres = _barycentres(z, probs)  # (K, d_v)
        score = (1.0 - lam) * (z @ centres.T) + lam * semantic  # (n, K), Eq. 10
        cost = -score - eps * (pot_u[:, None] + pot_v[None, :])
        res = sinkhorn(cost, eps=eps, max_iter=sinkhorn_max_iter, tol=sinkhorn_tol)
        pot_u, pot_v = pot_u + res.log_u, pot_v + res.log_v
        probs = res.plan * z.shape[0]
        n_iters.append(res.n_iter)
        err = res.marginal_error
    return probs, tuple(n_iters), err
