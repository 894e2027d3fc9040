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

:func:`mine_correspondences_official` is the public code's UCM (``main.py`` of Yuteam14/GPUA,
read at commit 388fe56; see its docstring for the differences, each one a quirk reproduced on
purpose). Its SwAV Sinkhorn (probability domain, early stop) is
:func:`core.solvers.sinkhorn_swav.solve_swav`, the solver OTFusion's official recipe uses too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.checks import l2_normalize
from core.solvers.sinkhorn import sinkhorn
from core.solvers.sinkhorn_swav import solve_swav

__all__ = ["mine_correspondences", "mine_correspondences_official"]

# Constants of the public code's UCM (main.py): cdist scores are divided by this "tau", and the
# centres start from this many most confident samples per class.
OFFICIAL_DISTANCE_SCALE = 0.1
OFFICIAL_N_CONFIDENT = 8
# update_mu adds this to the class mass and to the centre norm before dividing.
_OFFICIAL_GUARD = 1e-6


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


def _refuse_empty_classes(empty: Tensor, dtype: torch.dtype, what: str, fix: str) -> None:
    """Refuse classes (``empty``, bool (K,)) whose ``what`` underflowed to 0 for every sample.

    The public code computes on and returns NaN there (0 / 0); our solver would instead keep
    the class empty and silently give it no pseudo-label. Neither is a UCM result.
    """
    if bool(empty.any()):
        classes = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"GPUA (recipe='official'): {what} underflowed to 0 for every sample in {dtype} for "
            f"class(es) {classes[:10]}, where the public code gives NaN; {fix}, or use "
            "recipe='paper' (log domain)."
        )


def _confident_centres(z: Tensor, probs: Tensor, n_confident: int) -> Tensor:
    """The public code's start (``init_mu``): per class, the ``n_confident`` samples of highest
    probability, weighted by it, averaged, normalised. Shape (K, d_v)."""
    weight, idx = probs.topk(n_confident, dim=0)  # (m, K) each
    centres = torch.einsum("mk,mkd->kd", weight, z[idx]) / n_confident  # (K, d_v)
    return centres / centres.norm(dim=1, keepdim=True)


def _official_centres(z: Tensor, probs: Tensor) -> Tensor:
    """The public code's ``update_mu`` (no top-k, no momentum): ``P^T Z`` over the class mass,
    then normalised, each division guarded by adding 1e-6 (so norms are 1 - O(1e-6))."""
    centres = (probs.T @ z) / (probs.sum(dim=0) + _OFFICIAL_GUARD)[:, None]  # (K, d_v)
    return centres / (centres.norm(dim=1, keepdim=True) + _OFFICIAL_GUARD)


def mine_correspondences_official(
    z: Tensor,
    x: Tensor,
    text: Tensor,
    *,
    lam: float,
    eps: float,
    n_iter: int,
    temperature: float,
    sinkhorn_max_iter: int,
    sinkhorn_tol: float,
) -> tuple[Tensor, tuple[int, ...], float]:
    """UCM as the public GPUA code runs it (``main.py``), quirks included.

    The knobs have no defaults here: the official recipe's (lam 0.9, eps 0.05, 3 rounds,
    temperature 100, at most 50 Sinkhorn iterations, tol 1e-5) live in
    ``core.methods.gpua.recipes`` and come through ``fit_gpua``.

    With ``d(a, b)`` the Euclidean distance (``torch.cdist``) and ``tau = 0.1``:
    ``P0 = softmax(temperature X Y^T)``; C from the ``8`` most confident samples of each class
    under P0 (weighted by P0, averaged, normalised; all n when n < 8, where the public code
    fails); then ``n_iter`` rounds of

        S = (1 - lam) * (-d(Z, C) / tau) + lam * (-d(X, Y) / tau)          (n, K)
        P = n * solve_swav(S, eps, at most sinkhorn_max_iter, stop at max|dQ| < tol)
        C = (P^T Z / (colsum P + 1e-6)) / (norm + 1e-6)

    Differences from :func:`mine_correspondences` (the paper's reading): distances instead of
    cosines, the top-8 start instead of the P0 barycentres, the probability-domain Sinkhorn and its
    stopping rule, and ``z`` used as given: the public code feeds ``Z = [VFM, VLM]`` with each
    block normalised and the concatenation not renormalised (rows of norm sqrt(2)).

    Parameters
    ----------
    z : Tensor, shape (n, d_v)
        Used as given (not normalised here).
    x : Tensor, shape (n, d_t)
        L2-normalised.
    text : Tensor, shape (K, d_t)
        L2-normalised.
    lam : float
        Weight of the VLM distance score (the code's ``beta = 1 - alpha = 0.9``).
    n_iter : int >= 0
        UCM rounds; the code takes them per dataset from ``MAX_ITER_MAP`` (default 3).

    Returns
    -------
    probs : Tensor, shape (n, K)
        Rows sum to 1; ``P0`` when ``n_iter = 0``.
    n_iters : tuple of int
        Sinkhorn iterations per round.
    marginal_error : float
        L1 column-marginal error of the last plan ``probs / n`` against 1/K (0 when n_iter = 0).

    Raises
    ------
    ValueError
        A class whose P0 or Sinkhorn kernel underflowed to zero for every sample (where the
        public code gives NaN).
    """
    n = z.shape[0]
    probs = torch.softmax(temperature * (x @ text.T), dim=1)  # (n, K)
    # A class with P0 = 0 everywhere has no weighted start centre (0 / 0).
    _refuse_empty_classes(probs.amax(dim=0) == 0, probs.dtype, "the zero-shot probability P0",
                          "pass float64 features or a lower temperature")
    centres = _confident_centres(z, probs, min(OFFICIAL_N_CONFIDENT, n))
    semantic = -torch.cdist(x, text) / OFFICIAL_DISTANCE_SCALE  # (n, K), fixed across rounds
    n_iters, err = [], 0.0
    for _ in range(n_iter):
        visual = -torch.cdist(z, centres) / OFFICIAL_DISTANCE_SCALE  # (n, K)
        score = (1.0 - lam) * visual + lam * semantic
        res = solve_swav(score, eps=eps, max_iter=sinkhorn_max_iter, tol=sinkhorn_tol, out=score)
        _refuse_empty_classes(
            torch.isneginf(res.log_v), score.dtype,
            f"the probability-domain Sinkhorn kernel exp((S - row max) / {eps:g})",
            "such a class scores more than ~104 eps below every sample's best class (745 eps "
            "in float64); pass float64 features or raise eps")
        probs = res.plan.mul_(n)  # rows sum to 1
        centres = _official_centres(z, probs)
        n_iters.append(res.n_iter)
        err = res.marginal_error
    return probs, tuple(n_iters), err
