"""Stage 2 of GPUA: orthogonal Procrustes, then THS (topology-aware hubness suppression).

Geometry-Preserving Alignment (Eq. 13-16 of GPUA) maps VFM features ``Z`` (n, d_v) into the VLM
text space with a (semi-)orthogonal ``W`` (d_v, d_t):

- Procrustes (Eq. 13-14): ``min_W ||Z W - P Y||_F`` s.t. W orthogonal is solved by the polar factor
  ``W0 = U V^T`` of the cross-covariance ``M = Z^T P Y = U S V^T`` (thin SVD). With d_v < d_t
  ``W0`` has orthonormal rows (``W W^T = I``), otherwise orthonormal columns (``W^T W = I``).
- THS (Eq. 15-16): with ``f_i = normalise(W^T z_i)``, ``d_ic = ||f_i - y_c||`` and pseudo-label
  ``l_i``, for the k nearest *competing* prototypes ``c != l_i`` (the set N_i)

      L = 1/(n k) sum_i sum_{c in N_i} relu(d_il + (1 - y_l . y_c) / s + h_c - d_ic)
      h_c = 1/n sum_i 1[c in N_i]

  ``h_c`` is the hubness of prototype c, recomputed from the current ``W`` at every step (no
  gradient): it is a by-product of the same top-k that picks N_i, so it costs nothing. Following
  Eq. 16 it counts the same competing sets N_i that enter the hinge.

The public code's THS (``alignment_loss`` in ``alignment_utils.py``, ``refine_mapping`` in
``gpa.py``) differs: N_i is the top-k over *all* prototypes, so the pseudo-label's own prototype is
often in it (its hinge term is the constant ``hub_weight * h_l``, no gradient, but ``h_c`` counts
it); ``h_c`` is weighted by 2; each step draws a random 75% subset, adds Gaussian noise (sigma
0.035) with probability 1/2 and applies dropout (rate 0.05, survivors scaled by 1/0.95) with
probability 1/2; AdamW has weight decay 5e-4 and its cosine decay ends at 1e-7; W is never
re-projected. ``fit_gpua(..., recipe="official")`` runs it that way (``include_positive``,
``hub_weight``, ``noise_std``, ``dropout``, ``lr_min`` and the rest set by
``core.methods.gpua.recipes``), matching it in distribution: the random draws are ours, not the
code's seeds. The paper recipe, the default, keeps the settings above.

The refinement runs AdamW with cosine decay on a leaf copy of ``W``. After each step ``W`` can be
pulled back to the (semi-)orthogonal matrices by one Newton-Schulz polar iteration (two products
of size d_v x d_t x d_t instead of an SVD per step; exact SVD if W strayed far); the final ``W``
gets an exact polar projection by SVD in float64, so the reported orthogonality error is at
rounding level.

Cost per full-batch step: Z W and its gradient (2 n d_v d_t multiply-adds) plus the projection
(2 d_v d_t^2); at n = 1000, d_v = 768, d_t = 512 that is about 1.2 G multiply-adds, compute bound.
``batch_size`` trades the first term for noise, ``reproject_every`` divides the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core.solvers.procrustes import (
    nearest_orthogonal,
    newton_schulz_step,
    orthogonality_error,
)

__all__ = [
    "THSResult", "augment", "competing_neighbours", "hubness_weights", "mapped_cosines",
    "refine_ths", "ths_loss",
]


def mapped_cosines(features: Tensor, text: Tensor) -> Tensor:
    """Cosines (n, K) of mapped features (n, d_t; any norm, gradients flow) to unit prototypes
    (K, d_t). Normalises the (n, K) scores rather than the (n, d_t) features: same values, less
    work."""
    norms = features.norm(dim=1, keepdim=True).clamp_min(torch.finfo(features.dtype).tiny ** 0.5)
    return (features @ text.T) / norms


def competing_neighbours(dist: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` nearest prototypes *other than* each sample's pseudo-label.

    Parameters
    ----------
    dist : Tensor, shape (n, K)
        Sample-to-prototype distances.
    labels : Tensor, shape (n,), long
    k : int, 1 <= k <= K - 1

    Returns
    -------
    Tensor, shape (n, k), long
        Never contains ``labels[i]`` in row i (the public code's top-3 includes the positive).
    """
    masked = dist.detach().scatter(1, labels[:, None], float("inf"))  # (n, K)
    return masked.topk(k, dim=1, largest=False).indices


def hubness_weights(
    neighbours: Tensor, n_classes: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``h_c`` of Eq. 16: the fraction of samples whose neighbour set contains prototype c.

    Parameters
    ----------
    neighbours : Tensor, shape (n, k), long
        Distinct prototype indices per row (as from :func:`competing_neighbours`).
    n_classes : int

    Returns
    -------
    Tensor, shape (n_classes,), ``dtype``
    """
    counts = torch.bincount(neighbours.reshape(-1), minlength=n_classes)
    return counts.to(dtype) / neighbours.shape[0]


def ths_loss(
    features: Tensor,
    text: Tensor,
    labels: Tensor,
    *,
    k: int = 3,
    margin_scale: float = 2.0,
    hubness_penalty: bool = True,
    include_positive: bool = False,
    hub_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """THS loss (Eq. 15 of GPUA) of mapped features against prototypes.

    Parameters
    ----------
    features : Tensor, shape (n, d_t)
        Mapped features ``Z W`` (normalised here; gradients flow through them).
    text : Tensor, shape (K, d_t)
        L2-normalised prototypes.
    labels : Tensor, shape (n,), long
        Pseudo-labels.
    k : int
        Competing prototypes per sample (capped at K - 1 by the caller; K with
        ``include_positive``).
    margin_scale : float
        ``s`` in the semantic margin ``(1 - y_l . y_c) / s``.
    hubness_penalty : bool
        Add ``hub_weight * h_c`` (Eq. 16, no gradient) inside the hinge.
    include_positive : bool
        Take the k nearest prototypes over all classes, the pseudo-label's included (the public
        code); False takes the k nearest *other* prototypes (Eq. 15).
    hub_weight : float
        Weight of ``h_c`` in the hinge (1 in Eq. 15, 2 in the public code).

    Returns
    -------
    loss : Tensor, scalar
    hubness : Tensor, shape (K,)
        ``h_c`` at these features (zeros when ``hubness_penalty`` is False).
    """
    cos = mapped_cosines(features, text)  # (n, K)
    # Unit vectors: ||f - y||^2 = 2 - 2 f.y; the clamp keeps sqrt's gradient finite at 0.
    dist = (2.0 - 2.0 * cos).clamp_min(1e-12).sqrt()  # (n, K)
    if include_positive:
        nbrs = dist.detach().topk(k, dim=1, largest=False).indices  # (n, k)
    else:
        nbrs = competing_neighbours(dist, labels, k)  # (n, k)
    n_classes = text.shape[0]
    if hubness_penalty:
        hub = hubness_weights(nbrs, n_classes, dtype=dist.dtype)
    else:
        hub = dist.new_zeros(n_classes)
    with torch.no_grad():
        cos_tt = text @ text.T  # (K, K)
        margin = (1.0 - cos_tt[labels[:, None], nbrs]) / margin_scale  # (n, k)
    d_pos = dist.gather(1, labels[:, None])  # (n, 1)
    d_neg = dist.gather(1, nbrs)  # (n, k)
    penalty = hub[nbrs] if hub_weight == 1.0 else hub_weight * hub[nbrs]  # (n, k)
    loss = torch.relu(d_pos + margin + penalty - d_neg).mean()
    return loss, hub


def augment(
    z: Tensor, *, noise_std: float, dropout: float, generator: torch.Generator | None
) -> Tensor:
    """The public code's THS feature augmentations (``refine_mapping`` in ``gpa.py``).

    With probability 1/2 add Gaussian noise of standard deviation ``noise_std``; then, with
    probability 1/2, zero each entry with probability ``dropout`` and scale the rest by
    ``1 / (1 - dropout)`` (``F.dropout``). A rate of 0 skips that step and draws nothing.

    Parameters
    ----------
    z : Tensor, shape (n, d)
    noise_std, dropout : float, 0 <= dropout < 1
    generator : torch.Generator or None
        CPU generator for every draw (moved to ``z``'s device); None uses the global RNG.

    Returns
    -------
    Tensor, shape (n, d)
        A new tensor when anything was applied, else ``z`` itself.
    """

    def coin() -> bool:  # the public code's `np.random.rand() > 0.5`
        return float(torch.rand((), generator=generator)) < 0.5

    if noise_std > 0 and coin():
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype)
        z = z + noise_std * noise.to(z.device)
    if dropout > 0 and coin():
        keep = torch.rand(z.shape, generator=generator) >= dropout
        z = z * keep.to(z.device) / (1.0 - dropout)
    return z


@dataclass(frozen=True, eq=False)
class THSResult:
    """Result of :func:`refine_ths`.

    Attributes
    ----------
    W : Tensor, shape (d_v, d_t)
    loss_history : tuple of float, length n_steps + 1
        Loss at the initial W, then after each step (on the next step's batch), then after the
        final projection. The first and last entries are on the whole pool, so that they compare
        (minibatch losses differ by the batch drawn).
    orthogonality_error : float
        ``||W^T W - I||_F`` (or ``W W^T`` for wide W) of the returned W.
    """

    W: Tensor
    loss_history: tuple[float, ...]
    orthogonality_error: float


def refine_ths(
    z: Tensor,
    text: Tensor,
    labels: Tensor,
    w_init: Tensor,
    *,
    n_steps: int = 200,
    k: int = 3,
    margin_scale: float = 2.0,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    hubness_penalty: bool = True,
    include_positive: bool = False,
    hub_weight: float = 1.0,
    lr_min: float = 0.0,
    noise_std: float = 0.0,
    dropout: float = 0.0,
    reorthogonalize: bool = True,
    reproject_every: int = 1,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    loss: str = "ths",
) -> THSResult:
    """Refine ``W`` by AdamW on the THS loss with cosine learning-rate decay (Eq. 15-16).

    Parameters
    ----------
    z : Tensor, shape (n, d_v)
        L2-normalised VFM features.
    text : Tensor, shape (K, d_t)
        L2-normalised prototypes.
    labels : Tensor, shape (n,), long
        Pseudo-labels from UCM.
    w_init : Tensor, shape (d_v, d_t)
        Start (the Procrustes solution ``W0``).
    n_steps, k, margin_scale, lr, weight_decay, hubness_penalty, include_positive, hub_weight
        See :func:`core.methods.gpua.fit.fit_gpua` (``ths_*``) and :func:`ths_loss`.
    lr_min : float >= 0
        The cosine decay goes from ``lr`` at step 0 towards ``lr_min`` (``CosineAnnealingLR``).
    noise_std, dropout : float >= 0, dropout < 1
        Augmentations of each step's features, each applied with probability 1/2 (coin flips
        from ``generator``): Gaussian noise of this standard deviation, then dropout at this rate
        with survivors scaled by 1 / (1 - rate). 0 = off (no random number drawn).
    reorthogonalize : bool
        One Newton-Schulz polar iteration every ``reproject_every`` steps, exact SVD polar at
        the end.
    reproject_every : int >= 1
        Steps between Newton-Schulz projections. The projection (2 d_v d_t^2 multiply-adds) costs
        about twice a 256-sample THS step; an AdamW step at lr 5e-4 moves ``W^T W`` by about 0.3
        (Frobenius), so a few steps between projections stay well inside the iteration's basin.
    batch_size : int or None
        Samples per step; None or >= n is full batch (the paper). Smaller batches are drawn
        without replacement with ``generator``; ``h_c`` is then the batch's hubness.
    generator : torch.Generator, optional
        Draws the batches and the augmentations (CPU; the draws are moved to ``z``'s device).
    loss : str, default "ths"
        The objective (``core.config.GPUA_LOSSES``; GPUA Tables 4 and 6): "ths" (Eq. 15-16) or
        the baselines of ``core.methods.gpua.losses`` ("csls", "contrastive", "triplet",
        "adaptive"), which take ``k`` and ``margin_scale`` and ignore the THS-only options.

    Returns
    -------
    THSResult
        ``loss_history`` holds the chosen loss.
    """
    n = z.shape[0]
    k = min(k, text.shape[0] if include_positive else text.shape[0] - 1)
    w = w_init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=weight_decay) if n_steps > 0 else None
    full = batch_size is None or batch_size >= n
    kw = dict(k=k, margin_scale=margin_scale, hubness_penalty=hubness_penalty)
    if include_positive or hub_weight != 1.0:  # keeps the paper's call (and results) unchanged
        kw.update(include_positive=include_positive, hub_weight=hub_weight)

    def batch() -> tuple[Tensor, Tensor]:
        if full:
            zb, lb = z, labels
        else:
            idx = torch.randperm(n, generator=generator)[:batch_size].to(z.device)
            zb, lb = z[idx], labels[idx]
        return augment(zb, noise_std=noise_std, dropout=dropout, generator=generator), lb

    if loss == "ths":
        def objective(f: Tensor, lb: Tensor) -> Tensor:
            return ths_loss(f, text, lb, **kw)[0]
    else:  # the Table 4 / 6 baselines (their module imports this one)
        from core.methods.gpua.losses import alignment_loss

        def objective(f: Tensor, lb: Tensor) -> Tensor:
            return alignment_loss(loss, f, text, lb, k=k, margin_scale=margin_scale)

    def pool_loss(w_now: Tensor) -> float:
        with torch.no_grad():
            return float(objective(z @ w_now, labels))

    history = []
    for step in range(n_steps):
        for group in opt.param_groups:  # cosine decay from lr towards lr_min over n_steps
            group["lr"] = (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * step / n_steps)) + lr_min
        zb, lb = batch()
        value = objective(zb @ w, lb)
        history.append(float(value.detach()) if full or step else pool_loss(w.detach()))
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if reorthogonalize and (step + 1) % reproject_every == 0:
            with torch.no_grad():
                w.copy_(newton_schulz_step(w))
    w = w.detach()
    if reorthogonalize:
        w = nearest_orthogonal(w)
    history.append(pool_loss(w))
    return THSResult(W=w, loss_history=tuple(history), orthogonality_error=orthogonality_error(w))
