"""Open-vocabulary segmentation with GPUA, and the dense-CLIP (MaskCLIP) baseline.

GPUA for segmentation (Sec. 4.2 and App. C of GPUA): fit the alignment on a pool of patches, per
class the top-M patches by CLIP patch-text similarity (M = 1024 in the paper, scaled down here
when the images hold few patches); map every VFM patch with ``W``, score against the text
prototypes, upsample the logits bilinearly to the image size, argmax. The baseline scores the
dense CLIP patch features (MaskCLIP: value path of the last attention block, projected to the
joint space; computed by ``core.models.load``) against the same prototypes the same way.

Typical use::

    flat_x = vlm_patches.reshape(-1, d_t)                      # (n h w, d_t)
    idx = select_patch_pool(flat_x, text)
    align = fit_gpua(vfm_patches.reshape(-1, d_v)[idx], flat_x[idx], text)
    seg = segment(vfm_patches, align, text, image_size=(224, 224))
    labels, probs = seg                                        # or seg.labels, seg.probs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.checks import check_classes, check_int, check_matrix, check_positive, l2_normalize
from core.methods.gpua.fit import Alignment

__all__ = ["Segmentation", "segment", "segment_dense_clip", "select_patch_pool"]


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Per-pixel predictions; unpacks as ``labels, probs = result``.

    Attributes
    ----------
    labels : Tensor, shape (n, H, W), long
        Class per pixel, -1 where the top probability is below ``unlabeled_threshold``.
    probs : Tensor, shape (n, K, H, W)
        Softmax (temperature ``tau``) of the upsampled logits.
    """

    labels: Tensor
    probs: Tensor

    def __iter__(self):
        return iter((self.labels, self.probs))


def select_patch_pool(vlm_patches, text_features, *, per_class: int = 1024) -> Tensor:
    """Fitting pool for segmentation: per class the top-M patches by CLIP patch-text cosine.

    Parameters
    ----------
    vlm_patches : Tensor, shape (..., d_t)
        Dense CLIP patch features, any leading shape (indices refer to the flattened patches).
    text_features : Tensor, shape (K, d_t)
    per_class : int >= 1, default 1024
        M of the paper; capped at ``max(1, P // K)`` for P patches so small images do not put
        every patch in every class's list.

    Returns
    -------
    Tensor, shape (n_pool,), long
        Sorted unique indices into ``vlm_patches.reshape(-1, d_t)``.
    """
    x = torch.as_tensor(vlm_patches)
    x = check_matrix(x, "vlm_patches", ndim=max(x.ndim, 2))
    y = check_matrix(text_features, "text_features")
    if x.shape[-1] != y.shape[1]:
        raise ValueError(
            f"text_features: expected dimension {x.shape[-1]} (as vlm_patches), got shape "
            f"{tuple(y.shape)}; encode patches and prompts with the same VLM."
        )
    check_classes(y.shape[0], None, "text_features")
    per_class = check_int(per_class, "per_class", 1)
    x = x.reshape(-1, x.shape[-1])
    m = min(per_class, max(1, x.shape[0] // y.shape[0]))
    sim = l2_normalize(x) @ l2_normalize(y.to(x.dtype)).T  # (P, K)
    top = sim.topk(m, dim=0).indices  # (m, K)
    return torch.unique(top.reshape(-1))


def _segment_features(
    features: Tensor, text_features, image_size, unlabeled_threshold, temperature
) -> Segmentation:
    """Score normalised (n, h, w, d_t) features against text, upsample logits, argmax."""
    temperature = check_positive(temperature, "temperature")
    y = check_matrix(text_features, "text_features")
    if y.shape[1] != features.shape[-1]:
        raise ValueError(
            f"text_features: expected dimension {features.shape[-1]}, got shape {tuple(y.shape)}; "
            "use prompts encoded by the same VLM."
        )
    check_classes(y.shape[0], None, "text_features")
    y = l2_normalize(y.to(device=features.device, dtype=features.dtype))
    logits = temperature * (features @ y.T)  # (n, h, w, K)
    logits = logits.permute(0, 3, 1, 2)  # (n, K, h, w)
    if image_size is not None:
        if len(image_size) != 2:
            raise ValueError(f"image_size: expected (H, W), got {image_size!r}.")
        size = tuple(check_int(s, "image_size", 1) for s in image_size)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    probs = torch.softmax(logits, dim=1)  # (n, K, H, W)
    top, labels = probs.max(dim=1)
    if unlabeled_threshold is not None:
        labels = labels.masked_fill(top < float(unlabeled_threshold), -1)
    return Segmentation(labels=labels, probs=probs)


def _check_grid(x, name: str) -> Tensor:
    x = torch.as_tensor(x)
    return check_matrix(x, name, ndim=4)


def segment(
    vfm_patches,
    alignment: Alignment,
    text_features,
    *,
    image_size: tuple[int, int] | None = None,
    unlabeled_threshold: float | None = None,
    temperature: float = 100.0,
) -> Segmentation:
    """Segment by mapping VFM patches with a GPUA alignment into the text space.

    Parameters
    ----------
    vfm_patches : Tensor, shape (n, h, w, d_v)
    alignment : Alignment
    text_features : Tensor, shape (K, d_t)
    image_size : (H, W), optional
        Logits are upsampled bilinearly to it before the argmax; None keeps the patch grid.
    unlabeled_threshold : float, optional
        Pixels whose top probability is below it get label -1.
    temperature : float, default 100.0

    Returns
    -------
    Segmentation
        ``labels`` (n, H, W) and ``probs`` (n, K, H, W).
    """
    z = _check_grid(vfm_patches, "vfm_patches")
    return _segment_features(
        alignment.transform(z), text_features, image_size, unlabeled_threshold, temperature
    )


def segment_dense_clip(
    vlm_patches,
    text_features,
    *,
    image_size: tuple[int, int] | None = None,
    unlabeled_threshold: float | None = None,
    temperature: float = 100.0,
) -> Segmentation:
    """Dense-CLIP (MaskCLIP) baseline: score the VLM's own patch features against text.

    Parameters
    ----------
    vlm_patches : Tensor, shape (n, h, w, d_t)
    text_features, image_size, unlabeled_threshold, temperature
        As in :func:`segment`.

    Returns
    -------
    Segmentation
    """
    x = _check_grid(vlm_patches, "vlm_patches")
    return _segment_features(
        l2_normalize(x), text_features, image_size, unlabeled_threshold, temperature
    )
