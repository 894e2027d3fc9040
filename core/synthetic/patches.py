"""Synthetic dense (patch-level) CLIP-like and DINO-like features with known label maps.

The patch counterpart of ``core.synthetic.features``: the same latent class structure, noise,
modality gap
and presets (its shared helpers), laid out on small images made of class blobs so segmentation
(GPUA, mIoU) can be tested without model weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.checks import check_int, l2_normalize
from core.synthetic.features import _names, _seeded_classes

__all__ = ["PatchSyntheticData", "make_patch_synthetic"]


@dataclass(frozen=True)
class PatchSyntheticData:
    """Synthetic dense features for segmentation.

    Attributes
    ----------
    vlm_patches : Tensor, shape (n, h, w, d_vlm)
        Dense-CLIP-like patch embeddings: blurred at boundaries, noisy, gapped, L2-normalised.
    vlm_text : Tensor, shape (k, d_vlm)
        Text prototypes, L2-normalised.
    vfm_patches : Tensor, shape (n, h, w, d_vfm)
        DINO-like patch embeddings: sharp, tighter, L2-normalised.
    vlm_image : Tensor, shape (n, d_vlm)
        Global (CLS-like) embedding: normalised mean of the VLM patches.
    labels : Tensor, shape (n, h, w), long
        Class of each patch.
    class_names : tuple of str, length k
    """

    vlm_patches: Tensor
    vlm_text: Tensor
    vfm_patches: Tensor
    vlm_image: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    seed: int
    difficulty: str
    vlm_noise: float
    text_noise: float
    vfm_noise: float
    gap: float
    class_correlation: float


def _label_maps(n, k, h, w, n_shapes, gen) -> Tensor:
    """Random label maps: a background class plus rectangles and ellipses of other classes."""
    maps = torch.empty(n, h, w, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(n):
        m = torch.full((h, w), int(torch.randint(k, (1,), generator=gen)), dtype=torch.long)
        for _ in range(n_shapes):
            c = int(torch.randint(k, (1,), generator=gen))
            sh = int(torch.randint(max(2, h // 4), max(3, h // 2 + 1), (1,), generator=gen))
            sw = int(torch.randint(max(2, w // 4), max(3, w // 2 + 1), (1,), generator=gen))
            top = int(torch.randint(0, max(1, h - sh + 1), (1,), generator=gen))
            left = int(torch.randint(0, max(1, w - sw + 1), (1,), generator=gen))
            if bool(torch.rand(1, generator=gen) < 0.5):
                m[top : top + sh, left : left + sw] = c
            else:
                cy, cx = top + (sh - 1) / 2, left + (sw - 1) / 2
                inside = ((yy - cy) / (sh / 2)) ** 2 + ((xx - cx) / (sw / 2)) ** 2 <= 1.0
                m[inside] = c
        maps[i] = m
    return maps


def make_patch_synthetic(
    n_images: int = 8,
    n_classes: int = 5,
    *,
    height: int = 16,
    width: int = 16,
    seed: int = 0,
    d_vlm: int | None = None,
    d_vfm: int | None = None,
    n_shapes: int = 3,
    difficulty: str = "default",
    vlm_noise: float | None = None,
    text_noise: float | None = None,
    vfm_noise: float | None = None,
    gap: float | None = None,
    class_correlation: float | None = None,
) -> PatchSyntheticData:
    """Synthetic patch features of small images made of class blobs, for segmentation tests.

    Each image is a background class with ``n_shapes`` rectangles or ellipses of random classes
    painted over it. VLM patches mimic dense CLIP (MaskCLIP): the class signal is a 3x3 average of
    the neighbours' class directions (blurry boundaries), plus noise and the modality gap. VFM
    patches are sharp with tighter noise. Knobs and presets as in ``make_synthetic`` (the
    primary VLM and VFM only: a preset's extra models are left out).

    Parameters
    ----------
    n_images : int, default 8
    n_classes : int, default 5
    height, width : int, default 16
        Patch grid of each image.

    Returns
    -------
    PatchSyntheticData
        Feature tensors shaped (n, h, w, d); labels shaped (n, h, w).
    """
    n_images = check_int(n_images, "n_images", 1)
    n_classes = check_int(n_classes, "n_classes", 2)
    height = check_int(height, "height", 2)
    width = check_int(width, "width", 2)
    n_shapes = check_int(n_shapes, "n_shapes", 0)
    knobs, gen, _, vlm, vfm = _seeded_classes(
        seed, n_classes, difficulty, d_vlm=d_vlm, d_vfm=d_vfm, vlm_noise=vlm_noise,
        text_noise=text_noise, vfm_noise=vfm_noise, gap=gap, class_correlation=class_correlation,
    )
    labels = _label_maps(n_images, n_classes, height, width, n_shapes, gen)
    onehot = F.one_hot(labels, n_classes).permute(0, 3, 1, 2).to(torch.float64)  # (n, k, h, w)
    blurred = F.avg_pool2d(onehot, 3, stride=1, padding=1, count_include_pad=False)
    blurred = blurred.permute(0, 2, 3, 1)  # (n, h, w, k)
    shape = (n_images, height, width)
    vlm_patches = blurred @ vlm.means + vlm.noise(shape, knobs["vlm_noise"], gen,
                                                  knobs["vlm_spread"])
    vfm_patches = vfm.means[labels] + vfm.noise(shape, knobs["vfm_noise"], gen, knobs["vfm_spread"])
    text = vlm.means + vlm.noise((n_classes,), knobs["text_noise"], gen)
    vlm_patches = vlm.gapped(vlm_patches, knobs["gap"], 0)
    f32 = torch.float32
    return PatchSyntheticData(
        vlm_patches=vlm_patches.to(f32),
        vlm_text=vlm.gapped(text, knobs["gap"], 1).to(f32),
        vfm_patches=l2_normalize(vfm_patches).to(f32),
        vlm_image=l2_normalize(vlm_patches.mean(dim=(1, 2))).to(f32),
        labels=labels,
        class_names=_names(n_classes),
        seed=int(seed),
        difficulty=difficulty,
        **{k: knobs[k] for k in ("vlm_noise", "text_noise", "vfm_noise", "gap",
                                  "class_correlation")},
    )
