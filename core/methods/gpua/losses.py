"""The alignment losses GPUA's Tables 4 and 6 compare, as options of the refinement stage.

Every loss takes the mapped features ``F = Z W`` (n, d_t; normalised here, gradients flow through
them), the L2-normalised prototypes ``Y`` (K, d_t) and the UCM pseudo-labels ``l`` (n,), and
returns a scalar to minimise. With cosines ``S = normalise(F) Y^T`` (n, K) and unit-vector
distances ``D = sqrt(2 - 2 S)``:

- ``ths`` (the paper's, Eq. 15-16): :func:`core.methods.gpua.ths.ths_loss`.
- ``csls``: the relaxed CSLS re-ranking loss of cross-lingual alignment (RCSLS, Joulin et al.
  2018), ``mean_i [-2 S_il + r_F(i) + r_Y(l_i)]`` with ``r_F(i)`` the mean cosine of sample i to
  its k nearest prototypes and ``r_Y(c)`` the mean cosine of prototype c to its k nearest samples
  of the batch (the hubness correction of CSLS, Lample et al. 2018).
- ``contrastive``: InfoNCE over the prototypes, ``mean_i -log softmax(tau S_i)[l_i]`` at CLIP's
  logit scale ``tau`` (``core.config.TEMPERATURE``).
- ``triplet``: ``mean_{i, c in N_i} relu(D_il + m - D_ic)`` over the k nearest competing
  prototypes N_i, with a constant margin ``m`` (``core.config.GPUA_TRIPLET_MARGIN``): THS without
  its semantic margin and hubness term.
- ``adaptive``: the "hubness-aware baseline Adaptive (Ouali et al., 2023)" of GPUA's Table 4, in
  our reading (GPUA names it and cites LFA's re-ranking loss; neither text we hold gives its
  formula): a hinge on CSLS scores ``C_ic = 2 S_ic - r_Y(c)`` with the adaptive semantic margin
  ``m_lc = (1 - y_l . y_c) / s``, ``mean_{i, c in N_i} relu(m_lc + C_ic - C_il)``, N_i the k
  nearest competing prototypes by C. Hub prototypes (high ``r_Y``) are pushed down by CSLS rather
  than by THS's neighbour-frequency count.

The naive loops in ``tests/test_gpua_losses.py`` restate each formula sample by sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import GPUA_LOSSES, GPUA_TRIPLET_MARGIN, TEMPERATURE
from core.methods.gpua.ths import competing_neighbours, mapped_cosines, ths_loss

__all__ = ["alignment_loss", "adaptive_loss", "contrastive_loss", "csls_loss", "triplet_loss"]


def _prototype_density(cos: Tensor, k: int) -> Tensor:
    """``r_Y`` (K,): mean cosine of each prototype to its ``k`` nearest samples (cos (n, K))."""
    return cos.topk(min(k, cos.shape[0]), dim=0).values.mean(dim=0)


def csls_loss(features: Tensor, text: Tensor, labels: Tensor, *, k: int = 3) -> Tensor:
    """RCSLS: ``mean_i [-2 S_il + r_F(i) + r_Y(l_i)]`` (module doc). Shapes: features (n, d_t),
    text (K, d_t), labels (n,) long; returns a scalar."""
    cos = mapped_cosines(features, text)  # (n, K)
    r_f = cos.topk(min(k, cos.shape[1]), dim=1).values.mean(dim=1)  # (n,)
    r_y = _prototype_density(cos, k)  # (K,)
    pos = cos.gather(1, labels[:, None]).squeeze(1)  # (n,)
    return (-2.0 * pos + r_f + r_y[labels]).mean()


def contrastive_loss(features: Tensor, text: Tensor, labels: Tensor, *,
                     temperature: float = TEMPERATURE) -> Tensor:
    """InfoNCE over the prototypes at logit scale ``temperature``; a scalar."""
    return F.cross_entropy(temperature * mapped_cosines(features, text), labels)


def triplet_loss(features: Tensor, text: Tensor, labels: Tensor, *, k: int = 3,
                 margin: float = GPUA_TRIPLET_MARGIN) -> Tensor:
    """``mean relu(D_il + margin - D_ic)`` over the k nearest competing prototypes; a scalar."""
    dist = (2.0 - 2.0 * mapped_cosines(features, text)).clamp_min(1e-12).sqrt()  # (n, K)
    nbrs = competing_neighbours(dist, labels, k)  # (n, k)
    return torch.relu(dist.gather(1, labels[:, None]) + margin - dist.gather(1, nbrs)).mean()


def adaptive_loss(features: Tensor, text: Tensor, labels: Tensor, *, k: int = 3,
                  margin_scale: float = 2.0) -> Tensor:
    """Hinge on CSLS scores with the adaptive margin ``(1 - y_l . y_c) / margin_scale`` over the
    k nearest competing prototypes by CSLS (module doc); a scalar."""
    cos = mapped_cosines(features, text)  # (n, K)
    score = 2.0 * cos - _prototype_density(cos, k)  # (n, K) CSLS up to the per-sample r_F
    nbrs = competing_neighbours(-score, labels, k)  # (n, k): highest competing scores
    with torch.no_grad():
        margin = (1.0 - (text @ text.T)[labels[:, None], nbrs]) / margin_scale  # (n, k)
    return torch.relu(margin + score.gather(1, nbrs) - score.gather(1, labels[:, None])).mean()


def alignment_loss(name: str, features: Tensor, text: Tensor, labels: Tensor, *, k: int = 3,
                   margin_scale: float = 2.0, **ths_options) -> Tensor:
    """The loss ``name`` (one of ``core.config.GPUA_LOSSES``) of mapped features (n, d_t)
    against prototypes (K, d_t) under pseudo-labels (n,). ``k`` and ``margin_scale`` are THS's
    (neighbours per sample, semantic margin scale); ``ths_options`` go to ``ths_loss`` only."""
    if name == "ths":
        return ths_loss(features, text, labels, k=k, margin_scale=margin_scale,
                        **ths_options)[0]
    if name == "csls":
        return csls_loss(features, text, labels, k=k)
    if name == "contrastive":
        return contrastive_loss(features, text, labels)
    if name == "triplet":
        return triplet_loss(features, text, labels, k=k)
    if name == "adaptive":
        return adaptive_loss(features, text, labels, k=k, margin_scale=margin_scale)
    raise ValueError(f"loss: expected one of {', '.join(GPUA_LOSSES)}, got {name!r}.")
