"""Synthetic CLIP-like (VLM) and DINO-like (VFM) features with known labels.

The generator mimics the geometry that makes VLM x VFM fusion worth doing, so every solver can be
tested without model weights:

- One latent class structure ``L`` (k, d_latent). The VLM class directions are a random linear
  image of ``L``; the VFM class directions are a random linear image of a *correlated* copy
  ``rho * L + sqrt(1 - rho^2) * L'`` in another dimension, so the two spaces agree on which classes
  are close without being a rotation of each other.
- VLM space: images = class direction + within-class noise (``vlm_noise``); text prototypes = class
  direction + ``text_noise`` (a mediocre zero-shot classifier). A modality gap: after normalising,
  every image embedding gets the same offset ``gap * u_img`` and every text embedding a different
  offset ``gap * u_txt`` before the final normalisation, so images and texts live in two cones
  (Liang et al. 2022, "Mind the Gap"). ``u_img`` and ``u_txt`` are orthonormal and orthogonal to
  the class directions and the noise, so the gap shrinks cosines (and calibration) but changes no
  argmax: the zero-shot accuracy is set by the noise alone and is stable across seeds.
- VFM space: tighter clusters (less noise per dimension) and no text.

Noise vectors are isotropic Gaussians scaled by ``1/sqrt(d)`` so a noise level of 1 has about the
norm of a class direction. All outputs are L2-normalised float32; one ``seed`` gives identical data.
Patch-level features for segmentation (label maps): ``core.synthetic.patches``.

Presets (``difficulty=``): ``"default"`` is a moderate problem (zero-shot about 75-85%);
``"hard"`` (``HARD``) is tuned so CLIP zero-shot accuracy (argmax of ``zeroshot_probs``) is about
45-55% for any 3 <= k <= 100 while a GMM / k-means on the VFM features recovers the classes (> 85%
after Hungarian matching) -- the regime of the OTFusion paper (Table 1: CLIP 50% on EuroSAT,
OTFusion 82%). A preset's ``vlm_noise`` is its value at k = 20; other k use it times
log(20) / log(k), because at a fixed noise the zero-shot accuracy falls with log(k). Measured
values are in ``HARD_MEASURED``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import check_int, check_range, l2_normalize

__all__ = [
    "DEFAULT",
    "HARD",
    "HARD_MEASURED",
    "PRESETS",
    "SyntheticData",
    "class_sizes",
    "make_synthetic",
]

# Knob values of each preset. Noise levels are relative to the unit norm of a class direction.
DEFAULT = dict(vlm_noise=2.0, text_noise=0.8, vfm_noise=1.5, gap=0.8, class_correlation=0.8)
HARD = dict(vlm_noise=2.95, text_noise=1.0, vfm_noise=2.0, gap=0.8, class_correlation=0.7)
PRESETS = {"default": DEFAULT, "hard": HARD}
# A preset's vlm_noise is its value at this many classes; other k use it times log(20) / log(k).
_REFERENCE_CLASSES = 20

# What "hard" gives, measured over seeds 0-4 at n in {1000, 2000} and k in {10, 20} (d_vlm=64,
# d_vfm=96): CLIP zero-shot accuracy 0.44-0.54 (mean 0.50); k-means on the VFM features (sklearn,
# n_init=10) 0.92-1.00 after Hungarian matching; nearest true VFM class mean >= 0.99.
# tests/test_synthetic.py asserts looser bands than these, which the solver tests rely on.
HARD_MEASURED = dict(zeroshot_accuracy=(0.44, 0.54), vfm_kmeans_matched_accuracy=(0.92, 1.0))


@dataclass(frozen=True)
class SyntheticData:
    """Paired synthetic features of the same ``n`` images.

    Attributes
    ----------
    vlm_image : Tensor, shape (n, d_vlm)
        CLIP-like image embeddings, L2-normalised, with the modality gap.
    vlm_text : Tensor, shape (k, d_vlm)
        Noisy text prototypes, one per class, L2-normalised.
    vfm_image : Tensor, shape (n, d_vfm)
        DINO-like image embeddings, L2-normalised, tighter clusters.
    labels : Tensor, shape (n,), long
        True class of each image, shuffled (not sorted by class).
    class_names : tuple of str, length k
    vlm_class_means : Tensor, shape (k, d_vlm)
        Noise-free class directions of the VLM space (normalised, without the gap).
    vfm_class_means : Tensor, shape (k, d_vfm)
        Noise-free class directions of the VFM space (normalised).
    The remaining fields record the knobs that produced the data (``vlm_noise`` after the
    per-k rescaling of a preset).
    """

    vlm_image: Tensor
    vlm_text: Tensor
    vfm_image: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    vlm_class_means: Tensor
    vfm_class_means: Tensor
    seed: int
    difficulty: str
    imbalance: float
    vlm_noise: float
    text_noise: float
    vfm_noise: float
    gap: float
    class_correlation: float

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])


def class_sizes(n_samples: int, n_classes: int, imbalance: float = 1.0) -> Tensor:
    """Geometric class sizes summing to ``n_samples``, largest / smallest about ``imbalance``.

    Class c gets a share proportional to ``imbalance ** (-c / (k - 1))``; sizes are rounded by the
    largest-remainder method and every class keeps at least one sample.

    Returns
    -------
    Tensor, shape (k,), long
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    n_classes = check_int(n_classes, "n_classes", 2)
    imbalance = check_range(imbalance, "imbalance", 1.0, float("inf"))
    if n_samples < n_classes:
        raise ValueError(
            f"n_samples: expected at least one sample per class, got {n_samples} samples for "
            f"{n_classes} classes; raise n_samples."
        )
    expo = -torch.arange(n_classes, dtype=torch.float64) / (n_classes - 1)
    share = torch.pow(torch.tensor(imbalance, dtype=torch.float64), expo)
    ideal = 1 + (n_samples - n_classes) * share / share.sum()  # at least one each
    sizes = ideal.floor().long()
    remainder = n_samples - int(sizes.sum())
    if remainder > 0:
        order = torch.argsort(ideal - sizes, descending=True, stable=True)
        sizes[order[:remainder]] += 1
    assert int(sizes.sum()) == n_samples
    return sizes


def _resolve(difficulty: str, n_classes: int, **knobs) -> dict:
    if difficulty not in PRESETS:
        raise ValueError(f"difficulty: expected one of {sorted(PRESETS)}, got {difficulty!r}.")
    out = dict(PRESETS[difficulty])
    # At a fixed noise, zero-shot accuracy falls with log(k); rescaling the preset's image noise
    # keeps it about constant for 3 <= k <= 100 (measured), so "hard" means the same for any k.
    out["vlm_noise"] *= math.log(_REFERENCE_CLASSES) / math.log(n_classes)
    for key, value in knobs.items():
        if value is not None:
            out[key] = check_range(value, key, 0.0, float("inf"))
    check_range(out["class_correlation"], "class_correlation", 0.0, 1.0)
    return out


def _class_structure(k, d_vlm, d_vfm, rho, gen):
    """Class directions of both spaces from one latent structure (see module docstring).

    Returns the VLM and VFM class directions and the orthonormal gap directions (2, d_vlm). The
    VLM class directions are orthogonal to the gap plane, so the gap is a pure offset.
    """
    d_lat = max(d_vlm, d_vfm)
    latent = torch.randn(k, d_lat, generator=gen, dtype=torch.float64)
    other = torch.randn(k, d_lat, generator=gen, dtype=torch.float64)
    proj_t = torch.randn(d_lat, d_vlm, generator=gen, dtype=torch.float64) / math.sqrt(d_lat)
    proj_v = torch.randn(d_lat, d_vfm, generator=gen, dtype=torch.float64) / math.sqrt(d_lat)
    gap_dirs = torch.linalg.qr(torch.randn(d_vlm, 2, generator=gen, dtype=torch.float64))[0].T
    vlm_means = l2_normalize(_off_gap(latent @ proj_t, gap_dirs))  # (k, d_vlm)
    vfm_means = l2_normalize((rho * latent + math.sqrt(1.0 - rho**2) * other) @ proj_v)
    return vlm_means, vfm_means, gap_dirs


def _seeded_classes(seed, n_classes, d_vlm, d_vfm, difficulty, **knobs):
    """The opening both generators share: resolved knobs, then the seeded generator and the class
    directions drawn from it first (``make_synthetic``, ``core.synthetic.patches``).

    Returns (knobs, gen, vlm_means (k, d_vlm), vfm_means (k, d_vfm), gap_dirs (2, d_vlm)).
    """
    knobs = _resolve(difficulty, n_classes, **knobs)
    gen = torch.Generator().manual_seed(int(seed))
    return knobs, gen, *_class_structure(n_classes, d_vlm, d_vfm, knobs["class_correlation"], gen)


def _off_gap(x: Tensor, gap_dirs: Tensor) -> Tensor:
    """Remove the components of ``x`` (..., d) along the two gap directions (2, d)."""
    return x - (x @ gap_dirs.T) @ gap_dirs


def _noise(shape, level, gen) -> Tensor:
    return level * torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[-1])


def _gapped(x: Tensor, gap: float, direction: Tensor) -> Tensor:
    return l2_normalize(l2_normalize(x) + gap * direction)


def _names(k: int) -> tuple[str, ...]:
    return tuple(f"class_{c:02d}" for c in range(k))


def make_synthetic(
    n_samples: int = 2000,
    n_classes: int = 20,
    *,
    seed: int = 0,
    d_vlm: int = 64,
    d_vfm: int = 96,
    difficulty: str = "default",
    imbalance: float = 1.0,
    vlm_noise: float | None = None,
    text_noise: float | None = None,
    vfm_noise: float | None = None,
    gap: float | None = None,
    class_correlation: float | None = None,
) -> SyntheticData:
    """Synthetic paired VLM / VFM features with a modality gap and noisy text prototypes.

    Parameters
    ----------
    n_samples : int, default 2000
    n_classes : int, default 20
    seed : int, default 0
        Seeds a private ``torch.Generator``: same arguments -> identical tensors.
    d_vlm, d_vfm : int, default 64 and 96
        Dimensions of the VLM (image and text) and VFM spaces.
    difficulty : {"default", "hard"}
        Preset for the knobs below (``PRESETS``); a knob given explicitly overrides its preset.
        ``"hard"``: CLIP zero-shot accuracy about 45-55%, VFM clusters well separated.
    imbalance : float >= 1, default 1.0
        Ratio of the largest to the smallest class size (geometric sizes, see ``class_sizes``).
    vlm_noise, text_noise, vfm_noise : float >= 0, optional
        Within-class noise of VLM images, noise of text prototypes, within-class noise of VFM
        images, relative to the unit norm of a class direction.
    gap : float >= 0, optional
        Size of the modality-gap offset added to every image / text embedding (0: no gap).
    class_correlation : float in [0, 1], optional
        How much the VFM class structure follows the VLM one (1: same latent structure).

    Returns
    -------
    SyntheticData
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    n_classes = check_int(n_classes, "n_classes", 2)
    d_vlm = check_int(d_vlm, "d_vlm", 2)
    d_vfm = check_int(d_vfm, "d_vfm", 2)
    knobs, gen, vlm_means, vfm_means, gap_dirs = _seeded_classes(
        seed, n_classes, d_vlm, d_vfm, difficulty, vlm_noise=vlm_noise, text_noise=text_noise,
        vfm_noise=vfm_noise, gap=gap, class_correlation=class_correlation,
    )
    sizes = class_sizes(n_samples, n_classes, imbalance)  # draws nothing from gen
    labels = torch.repeat_interleave(torch.arange(n_classes), sizes)
    labels = labels[torch.randperm(n_samples, generator=gen)]
    vlm_image = vlm_means[labels] + _off_gap(
        _noise((n_samples, d_vlm), knobs["vlm_noise"], gen), gap_dirs
    )
    vlm_text = vlm_means + _off_gap(_noise((n_classes, d_vlm), knobs["text_noise"], gen), gap_dirs)
    vfm_image = vfm_means[labels] + _noise((n_samples, d_vfm), knobs["vfm_noise"], gen)
    f32 = torch.float32
    return SyntheticData(
        vlm_image=_gapped(vlm_image, knobs["gap"], gap_dirs[0]).to(f32),
        vlm_text=_gapped(vlm_text, knobs["gap"], gap_dirs[1]).to(f32),
        vfm_image=l2_normalize(vfm_image).to(f32),
        labels=labels,
        class_names=_names(n_classes),
        vlm_class_means=vlm_means.to(f32),
        vfm_class_means=vfm_means.to(f32),
        seed=int(seed),
        difficulty=difficulty,
        imbalance=float(imbalance),
        **{k: float(v) for k, v in knobs.items()},
    )
