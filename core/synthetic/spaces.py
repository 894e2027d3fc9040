"""Where the synthetic features live: class directions, noise and the modality gap of each model.

Two class structures share one latent class matrix ``L`` (k, d_latent):

- isotropic (``rank=0``, the original generator of the ``"default"`` / ``"hard"`` presets): each
  space's class directions are a random Gaussian image of (a correlated copy of) ``L`` in d
  dimensions, ``d_latent = max(d_vlm, d_vfm)``, and noise is isotropic in d. Kept draw for draw,
  so those presets give the same tensors as before.
- low-rank (``rank=r > 0``, the realistic presets of ``core.synthetic.presets``): ``L`` has r
  columns; each space maps it by an orthonormal basis (r, d), and the within-class and text noise
  live in that r-dimensional subspace, where the class differences are. Only then do realistic
  cosines to the class mean (0.6-0.8) leave room for errors: isotropic noise of the same norm
  spreads over all d dimensions, puts about 1/sqrt(d) of it on any class difference, and every
  classifier becomes nearly perfect at d = 512 (measured: "hard" at d 512 / 1024 gives 99.9%
  zero-shot). A ``spread`` of isotropic noise over all d dimensions then lowers the cosines
  without moving the clusters much.

``shared`` mixes one common direction into every class direction of a space (class directions
then have a cosine of about ``shared`` with each other, as real class means do: they share a
"photo" component), which narrows image-text cosines and calibrates the 100-scaled softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import l2_normalize

F64 = torch.float64


@dataclass(frozen=True)
class Space:
    """One model's feature space.

    Attributes
    ----------
    means : Tensor, shape (k, d), float64
        Noise-free class directions, unit norm (off the gap plane for a VLM).
    basis : Tensor, shape (r, d), or None
        Orthonormal rows spanning the class structure and its noise; None: noise is isotropic.
    gap_dirs : Tensor, shape (2, d), or None
        Orthonormal image and text gap directions of a VLM; None for a VFM (no text).
    """

    means: Tensor
    basis: Tensor | None
    gap_dirs: Tensor | None

    def noise(self, shape: tuple[int, ...], level: float, gen, spread: float = 0.0) -> Tensor:
        """Noise of norm about ``level`` (in the basis) plus ``spread`` (isotropic), shape
        ``(*shape, d)``, off the gap plane. Draws nothing for a zero ``spread``."""
        d = self.means.shape[1]
        if self.basis is None:
            out = _noise((*shape, d), level, gen)
        else:
            out = _noise((*shape, self.basis.shape[0]), level, gen) @ self.basis
        if spread > 0:
            out = out + _noise((*shape, d), spread, gen)
        return out if self.gap_dirs is None else _off_gap(out, self.gap_dirs)

    def gapped(self, x: Tensor, gap: float, which: int) -> Tensor:
        """Images (``which=0``) or texts (1) with the modality-gap offset, unit norm."""
        return l2_normalize(l2_normalize(x) + gap * self.gap_dirs[which])


def class_structure(k, d_vlm, d_vfm, knobs, gen) -> tuple[Tensor, Space, Space]:
    """The latent class matrix and the primary VLM and VFM spaces (the first draws of ``gen``).

    Returns (latent (k, d_latent), VLM space, VFM space); ``d_latent`` is ``knobs["rank"]``, or
    ``max(d_vlm, d_vfm)`` for the isotropic structure.
    """
    rho, rank, shared = knobs["class_correlation"], knobs["rank"], knobs["shared"]
    if rank:
        latent = torch.randn(k, rank, generator=gen, dtype=F64)
        vlm = model_space(latent, d_vlm, 1.0, knobs, gen, gapped=True)
        return latent, vlm, model_space(latent, d_vfm, rho, knobs, gen, gapped=False)
    # The original isotropic structure, in its original draw order.
    d_lat = max(d_vlm, d_vfm)
    latent = torch.randn(k, d_lat, generator=gen, dtype=F64)
    other = torch.randn(k, d_lat, generator=gen, dtype=F64)
    proj_t = torch.randn(d_lat, d_vlm, generator=gen, dtype=F64) / math.sqrt(d_lat)
    proj_v = torch.randn(d_lat, d_vfm, generator=gen, dtype=F64) / math.sqrt(d_lat)
    gap_dirs = _gap_plane(d_vlm, gen)
    vlm_means = _shared(_off_gap(latent @ proj_t, gap_dirs), shared, gen, gap_dirs)
    vfm_means = _shared(_correlated(latent, other, rho) @ proj_v, shared, gen, None)
    return latent, Space(vlm_means, None, gap_dirs), Space(vfm_means, None, None)


def model_space(latent: Tensor, d: int, rho: float, knobs, gen, *, gapped: bool) -> Space:
    """One model's space (d dimensions) over the latent classes ``latent`` (k, d_latent).

    Its class structure follows ``latent`` with correlation ``rho`` (a fresh correlated copy when
    ``rho < 1``); a VLM (``gapped``) gets its own gap plane. Low-rank when ``knobs["rank"]``.
    """
    k, d_lat = latent.shape
    if rho < 1.0:
        latent = _correlated(latent, torch.randn(k, d_lat, generator=gen, dtype=F64), rho)
    gap_dirs = _gap_plane(d, gen) if gapped else None
    if knobs["rank"]:
        # the common direction lies in the latent space, so the noise moves it too
        coords = _shared(latent, knobs["shared"], gen, None)  # (k, r), unit rows
        basis = _orthonormal_rows(d_lat, d, gen, gap_dirs)  # (r, d), off the gap plane
        return Space(coords @ basis, basis, gap_dirs)
    proj = torch.randn(d_lat, d, generator=gen, dtype=F64) / math.sqrt(d_lat)
    means = latent @ proj if gap_dirs is None else _off_gap(latent @ proj, gap_dirs)
    return Space(_shared(means, knobs["shared"], gen, gap_dirs), None, gap_dirs)


def _gap_plane(d: int, gen) -> Tensor:
    """Two orthonormal directions (2, d): the image and the text offsets of the modality gap."""
    return torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=F64))[0].T


def _orthonormal_rows(r: int, d: int, gen, avoid: Tensor | None) -> Tensor:
    """r random orthonormal rows (r, d), orthogonal to the rows of ``avoid`` (m, d) if given."""
    m = torch.randn(d, r, generator=gen, dtype=F64)
    if avoid is None:
        return torch.linalg.qr(m)[0].T
    q = torch.linalg.qr(torch.cat([avoid.T, m], dim=1))[0]  # (d, m + r), avoid's span first
    return q[:, avoid.shape[0]:].T


def _correlated(latent: Tensor, other: Tensor, rho: float) -> Tensor:
    """rho * latent + sqrt(1 - rho^2) * other: a class structure that agrees with ``latent``."""
    return rho * latent + math.sqrt(1.0 - rho**2) * other


def _shared(x: Tensor, shared: float, gen, gap_dirs: Tensor | None) -> Tensor:
    """Unit rows of ``x`` (k, d) mixed with one random common unit direction (off the gap plane):
    normalise(sqrt(shared) c + sqrt(1 - shared) x_k / |x_k|). Draws nothing for ``shared = 0``."""
    x = l2_normalize(x)
    if shared == 0:
        return x
    c = torch.randn(x.shape[1], generator=gen, dtype=F64)
    c = l2_normalize(c if gap_dirs is None else _off_gap(c, gap_dirs))
    return l2_normalize(math.sqrt(shared) * c + math.sqrt(1.0 - shared) * x)


def _off_gap(x: Tensor, gap_dirs: Tensor) -> Tensor:
    """Remove the components of ``x`` (..., d) along the two gap directions (2, d)."""
    return x - (x @ gap_dirs.T) @ gap_dirs


def _noise(shape, level, gen) -> Tensor:
    """Isotropic Gaussian noise of norm about ``level``: N(0, level^2 / d) per entry."""
    return level * torch.randn(*shape, generator=gen, dtype=F64) / math.sqrt(shape[-1])
