"""Synthetic CLIP-like (VLM) and DINO-like (VFM) features with known labels.

The generator mimics the geometry that makes VLM x VFM fusion worth doing, so every solver can be
tested without model weights:

- One latent class structure ``L`` (k, d_latent). The VLM class directions are a linear image of
  ``L``; the VFM class directions a linear image of a *correlated* copy
  ``rho * L + sqrt(1 - rho^2) * L'`` in another dimension, so the two spaces agree on which classes
  are close without being a rotation of each other (``core.synthetic.spaces``).
- VLM space: images = class direction + within-class noise (``vlm_noise``); text prototypes = class
  direction + ``text_noise`` (a mediocre zero-shot classifier). A modality gap: after normalising,
  every image embedding gets the same offset ``gap * u_img`` and every text embedding a different
  offset ``gap * u_txt`` before the final normalisation, so images and texts live in two cones
  (Liang et al. 2022, "Mind the Gap"). ``u_img`` and ``u_txt`` are orthonormal and orthogonal to
  the class directions and the noise, so the gap shrinks cosines (and calibration) but changes no
  argmax: the zero-shot accuracy is set by the noise alone and is stable across seeds.
- VFM space: tighter clusters and no text. Extra VFMs (``extra_vfm_noise``) and VLMs
  (``extra_vlm_noise``) are further spaces over the same latent classes, each with its own noise.

Noise levels are relative to the unit norm of a class direction. All outputs are L2-normalised
float32; one ``seed`` gives identical data. Patch-level features for segmentation (label maps):
``core.synthetic.patches``.

Presets (``difficulty=``: ``"default"``, ``"hard"`` at d 64 / 96; ``"clip-b16-dinov2-l"``,
``"clip-b16-dinov2-b"``, ``"clip-b16-two-vfms"`` at real models' widths and tightness), what they
give and what each OTFusion recipe does on them: ``core.synthetic.presets``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import check_int, check_range, l2_normalize

# The presets lived here before core.synthetic.presets: still importable from this module.
from core.synthetic.presets import (  # noqa: F401
    DEFAULT,
    HARD,
    HARD_MEASURED,
    PRESETS,
    resolve_knobs,
)
from core.synthetic.spaces import Space, class_structure, model_space

__all__ = ["SyntheticData", "class_sizes", "make_synthetic"]

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
    vfm_extra : tuple of Tensor, shapes (n, d_vfm)
        Further VFMs of the same images (``extra_vfm_noise``), each with its own class structure
        and noise, L2-normalised; ``vfm_extra_class_means`` their (k, d_vfm) class directions.
    vlm_extra_image, vlm_extra_text : tuple of Tensor, shapes (n, d_vlm) and (k, d_vlm)
        Further VLMs (``extra_vlm_noise``), each with its own space, gap and text prototypes.
    The remaining fields record the knobs that produced the data (``vlm_noise`` and the extra
    VLMs' image noise after the per-k rescaling of a preset).
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
    vfm_extra: tuple[Tensor, ...] = ()
    vfm_extra_class_means: tuple[Tensor, ...] = ()
    vlm_extra_image: tuple[Tensor, ...] = ()
    vlm_extra_text: tuple[Tensor, ...] = ()
    rank: int = 0
    shared: float = 0.0
    vlm_spread: float = 0.0
    vfm_spread: float = 0.0
    extra_vfm_noise: tuple[float, ...] = ()
    extra_vlm_noise: tuple[tuple[float, float], ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def vlm_images(self) -> tuple[Tensor, ...]:
        """Image features of every VLM, (n, d_vlm) each, the primary one first."""
        return (self.vlm_image, *self.vlm_extra_image)

    @property
    def vlm_texts(self) -> tuple[Tensor, ...]:
        """Text prototypes of every VLM, (k, d_vlm) each, in the order of ``vlm_images``."""
        return (self.vlm_text, *self.vlm_extra_text)

    @property
    def vfm_images(self) -> tuple[Tensor, ...]:
        """Features of every VFM, (n, d_vfm) each, the primary one first."""
        return (self.vfm_image, *self.vfm_extra)

    @property
    def visual_sources(self) -> tuple[Tensor, ...]:
        """OTFusion's main setting: every VLM's image features, then every VFM's."""
        return (*self.vlm_images, *self.vfm_images)


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


def _seeded_classes(seed, n_classes, difficulty, **knobs):
    """The opening both generators share: resolved knobs, then the seeded generator and the class
    structure drawn from it first (``make_synthetic``, ``core.synthetic.patches``).

    Returns (knobs, gen, latent (k, d_latent), VLM ``Space``, VFM ``Space``).
    """
    knobs = resolve_knobs(difficulty, n_classes, **knobs)
    gen = torch.Generator().manual_seed(int(seed))
    return knobs, gen, *class_structure(n_classes, knobs["d_vlm"], knobs["d_vfm"], knobs, gen)


def _vlm_features(space: Space, labels: Tensor, image_noise: float, text_noise: float, knobs,
                  gen) -> tuple[Tensor, Tensor]:
    """Gapped image (n, d) and text (k, d) features of one VLM, float64."""
    image = space.means[labels] + space.noise(labels.shape, image_noise, gen, knobs["vlm_spread"])
    text = space.means + space.noise(space.means.shape[:1], text_noise, gen)
    return space.gapped(image, knobs["gap"], 0), space.gapped(text, knobs["gap"], 1)


def _vfm_features(space: Space, labels: Tensor, noise: float, knobs, gen) -> Tensor:
    """Normalised image features (n, d) of one VFM, float64."""
    return l2_normalize(space.means[labels] + space.noise(labels.shape, noise, gen,
                                                           knobs["vfm_spread"]))


def _names(k: int) -> tuple[str, ...]:
    return tuple(f"class_{c:02d}" for c in range(k))


def make_synthetic(
    n_samples: int = 2000,
    n_classes: int = 20,
    *,
    seed: int = 0,
    d_vlm: int | None = None,
    d_vfm: int | None = None,
    difficulty: str = "default",
    imbalance: float = 1.0,
    vlm_noise: float | None = None,
    text_noise: float | None = None,
    vfm_noise: float | None = None,
    gap: float | None = None,
    class_correlation: float | None = None,
    rank: int | None = None,
    shared: float | None = None,
    vlm_spread: float | None = None,
    vfm_spread: float | None = None,
    extra_vfm_noise: Sequence[float] | None = None,
    extra_vlm_noise: Sequence[tuple[float, float]] | None = None,
) -> SyntheticData:
    """Synthetic paired VLM / VFM features with a modality gap and noisy text prototypes.

    Every option left at None takes its preset's value (``PRESETS[difficulty]``, then 64 / 96
    dimensions, the isotropic structure and no extra models).

    Parameters
    ----------
    n_samples : int, default 2000
    n_classes : int, default 20
    seed : int, default 0
        Seeds a private ``torch.Generator``: same arguments -> identical tensors.
    d_vlm, d_vfm : int, optional
        Dimensions of the VLM (image and text) and VFM spaces (64 and 96 unless the preset sets
        them: 512 and 1024 or 768 for the realistic presets).
    difficulty : str
        Preset name (``PRESETS``): ``"default"``, ``"hard"`` (CLIP zero-shot about 45-55%, VFM
        clusters well separated), or a realistic one at real models' widths
        (``core.synthetic.presets``).
    imbalance : float >= 1, default 1.0
        Ratio of the largest to the smallest class size (geometric sizes, see ``class_sizes``).
    vlm_noise, text_noise, vfm_noise : float >= 0, optional
        Within-class noise of VLM images, noise of text prototypes, within-class noise of VFM
        images, relative to the unit norm of a class direction.
    gap : float >= 0, optional
        Size of the modality-gap offset added to every image / text embedding (0: no gap).
    class_correlation : float in [0, 1], optional
        How much the VFM class structure follows the VLM one (1: same latent structure).
    rank : int >= 0, optional
        Dimension of the class structure and of the within-class and text noise (0: the whole
        space, isotropic noise; ``core.synthetic.spaces``).
    shared : float in [0, 0.99], optional
        Weight of one common direction in every class direction (about the cosine between two
        class directions of a space).
    vlm_spread, vfm_spread : float >= 0, optional
        Isotropic image noise over the whole space, on top of the noise above: it lowers the
        cosine to the class mean without moving a low-rank structure's clusters much.
    extra_vfm_noise : sequence of float >= 0, optional
        One further VFM (d_vfm) per entry, with this within-class noise (``vfm_extra``).
    extra_vlm_noise : sequence of (float, float), optional
        One further VLM (d_vlm) per (image noise, text noise) pair (``vlm_extra_image``,
        ``vlm_extra_text``); a preset's image noise is rescaled with k like ``vlm_noise``.

    Returns
    -------
    SyntheticData
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    n_classes = check_int(n_classes, "n_classes", 2)
    knobs, gen, latent, vlm, vfm = _seeded_classes(
        seed, n_classes, difficulty, d_vlm=d_vlm, d_vfm=d_vfm, vlm_noise=vlm_noise,
        text_noise=text_noise, vfm_noise=vfm_noise, gap=gap, class_correlation=class_correlation,
        rank=rank, shared=shared, vlm_spread=vlm_spread, vfm_spread=vfm_spread,
        extra_vfm_noise=extra_vfm_noise, extra_vlm_noise=extra_vlm_noise,
    )
    sizes = class_sizes(n_samples, n_classes, imbalance)  # draws nothing from gen
    labels = torch.repeat_interleave(torch.arange(n_classes), sizes)
    labels = labels[torch.randperm(n_samples, generator=gen)]
    vlm_image, vlm_text = _vlm_features(vlm, labels, knobs["vlm_noise"], knobs["text_noise"],
                                        knobs, gen)
    vfm_image = _vfm_features(vfm, labels, knobs["vfm_noise"], knobs, gen)
    # Extra models come after every draw above, each whole before the next, so adding one
    # changes neither the primary pair nor the extra models before it.
    rho = knobs["class_correlation"]
    extra_vfms, extra_vfm_images = [], []
    for noise in knobs["extra_vfm_noise"]:
        extra_vfms.append(model_space(latent, knobs["d_vfm"], rho, knobs, gen, gapped=False))
        extra_vfm_images.append(_vfm_features(extra_vfms[-1], labels, noise, knobs, gen))
    extra_vlms = [_vlm_features(model_space(latent, knobs["d_vlm"], rho, knobs, gen, gapped=True),
                                labels, img, txt, knobs, gen)
                  for img, txt in knobs["extra_vlm_noise"]]
    f32 = torch.float32
    return SyntheticData(
        vlm_image=vlm_image.to(f32),
        vlm_text=vlm_text.to(f32),
        vfm_image=vfm_image.to(f32),
        labels=labels,
        class_names=_names(n_classes),
        vlm_class_means=vlm.means.to(f32),
        vfm_class_means=vfm.means.to(f32),
        seed=int(seed),
        difficulty=difficulty,
        imbalance=float(imbalance),
        vfm_extra=tuple(v.to(f32) for v in extra_vfm_images),
        vfm_extra_class_means=tuple(s.means.to(f32) for s in extra_vfms),
        vlm_extra_image=tuple(x.to(f32) for x, _ in extra_vlms),
        vlm_extra_text=tuple(t.to(f32) for _, t in extra_vlms),
        **{k: v for k, v in knobs.items() if k not in ("d_vlm", "d_vfm")},
    )
