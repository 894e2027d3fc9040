"""Open-vocabulary segmentation with GPUA, and the dense-CLIP (MaskCLIP) baseline.

GPUA for segmentation (Sec. 4.2 and App. C of GPUA): fit the alignment on a pool of patches, per
class the top-M patches by CLIP patch-text similarity (M = 1024 in the paper, scaled down here
when the images hold few patches); map every VFM patch with ``W``, score against the text
prototypes, upsample the logits bilinearly to the image size, argmax. The baseline scores the
dense CLIP patch features (MaskCLIP: value path of the last attention block, projected to the
joint space; computed by ``core.models.load``) against the same prototypes the same way.

The logits go where the patches came from: each model sees a centre crop of the image
(``crop_box``, e.g. ``core.models.crop_box(image.size, spec)``), its grid is placed in that box
(:mod:`core.methods.gpua.patch_grid`) and pixels outside it get the label ``NOT_SEEN``: stretching
the grid over the whole image would misplace a 4:3 image's segments by up to 12.5% (CLIP 224 of
224) or 17% (DINO 224 of 256) of its width.

Typical use::

    flat_x = vlm_patches.reshape(-1, d_t)                      # (n h w, d_t)
    idx = select_patch_pool(flat_x, text)
    align = fit_gpua(vfm_patches.reshape(-1, d_v)[idx], flat_x[idx], text)
    seg = segment(vfm_patches, align, text, image_size=(h, w), crop_box=crop_box((w, h), spec))
    labels, probs = seg                                        # or seg.labels, seg.probs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import check_classes, check_int, check_matrix, check_positive, l2_normalize
from core.methods.gpua.fit import Alignment
from core.methods.gpua.patch_grid import place_in_image

__all__ = [
    "NOT_SEEN", "UNLABELED", "Segmentation", "segment", "segment_dense_clip", "select_patch_pool",
    "text_logits",
]

UNLABELED = -1  # label of a pixel whose top probability is below the threshold
NOT_SEEN = -2  # label of a pixel outside the model's crop: it has no prediction at all


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Per-pixel predictions; unpacks as ``labels, probs = result``.

    Attributes
    ----------
    labels : Tensor, shape (n, H, W), long
        Class per pixel; ``UNLABELED`` (-1) where the top probability is below
        ``unlabeled_threshold``, ``NOT_SEEN`` (-2) outside the model's crop.
    probs : Tensor, shape (n, K, H, W)
        Softmax (temperature ``tau``) of the upsampled logits where ``seen``; 0 elsewhere.
    seen : Tensor, shape (n, H, W), bool
        Pixels inside the crop the model saw (all True without a ``crop_box``).
    """

    labels: Tensor
    probs: Tensor
    seen: Tensor

    def __iter__(self):
        return iter((self.labels, self.probs))


def select_patch_pool(vlm_patches, text_features, *, per_class: int = 1024, mask=None,
                      n_candidates: int | None = None) -> Tensor:
    """Fitting pool for segmentation: per class the top-M patches by CLIP patch-text cosine.

    Parameters
    ----------
    vlm_patches : Tensor, shape (..., d_t)
        Dense CLIP patch features, any leading shape (indices refer to the flattened patches).
    text_features : Tensor, shape (K, d_t)
    per_class : int >= 1, default 1024
        M of the paper; capped at ``max(1, P // K)`` for P candidate patches so small images do
        not put every patch in every class's list.
    mask : Tensor, shape (...) as ``vlm_patches`` without d_t, bool, optional
        Candidate patches (default all); e.g. the VFM patches whose position CLIP also saw
        (``patch_grid.resample_patches``'s ``paired``).
    n_candidates : int, optional
        P in the cap ``max(1, P // K)`` (default: the candidate patches given). A pool selected
        in a stream passes the number of patches seen so far, so that selecting again from the
        kept patches and new ones equals one selection over everything.

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
    candidates = torch.arange(x[..., 0].numel())
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"mask: expected a bool tensor of shape {tuple(x.shape[:-1])} (vlm_patches "
                f"without d_t), got {mask.dtype} {tuple(mask.shape)}."
            )
        candidates = mask.reshape(-1).nonzero().squeeze(1)
        if len(candidates) == 0:
            raise ValueError("mask: no candidate patch; the two models' crops do not overlap.")
    x = x.reshape(-1, x.shape[-1])[candidates]
    total = x.shape[0] if n_candidates is None else check_int(n_candidates, "n_candidates", 1)
    m = min(per_class, max(1, total // y.shape[0]), x.shape[0])
    sim = l2_normalize(x) @ l2_normalize(y.to(x.dtype)).T  # (P, K)
    top = sim.topk(m, dim=0).indices  # (m, K)
    return candidates[torch.unique(top.reshape(-1))]


def _segment_features(
    features: Tensor, text_features, image_size, crop_box, unlabeled_threshold, temperature
) -> Segmentation:
    """Score normalised (n, h, w, d_t) features against text, place logits in the image, argmax."""
    temperature = check_positive(temperature, "temperature")
    logits = temperature * text_logits(features, text_features)  # (n, K, h, w)
    if image_size is not None:
        logits, seen = place_in_image(logits, image_size, crop_box)  # (n, K, H, W), (n, H, W)
    elif crop_box is not None:
        raise ValueError("crop_box: needs image_size (H, W), the image the box refers to.")
    else:
        seen = torch.ones(logits[:, 0].shape, dtype=torch.bool, device=logits.device)
    probs = torch.softmax(logits, dim=1) * seen[:, None]  # (n, K, H, W)
    top, labels = probs.max(dim=1)
    if unlabeled_threshold is not None:
        labels = labels.masked_fill(top < float(unlabeled_threshold), UNLABELED)
    labels = labels.masked_fill(~seen, NOT_SEEN)
    return Segmentation(labels=labels, probs=probs, seen=seen)


def text_logits(features: Tensor, text_features) -> Tensor:
    """Cosine of each patch with each class prototype, as logit maps.

    Parameters
    ----------
    features : Tensor, shape (n, h, w, d_t)
        L2-normalised patch features in the text space (dense CLIP, or ``Alignment.transform``).
    text_features : Tensor, shape (K, d_t)
        Normalised here.

    Returns
    -------
    Tensor, shape (n, K, h, w)
        Cosines (no temperature): what sliding-window inference averages over windows.
    """
    y = check_matrix(text_features, "text_features")
    if y.shape[1] != features.shape[-1]:
        raise ValueError(
            f"text_features: expected dimension {features.shape[-1]}, got shape {tuple(y.shape)}; "
            "use prompts encoded by the same VLM."
        )
    check_classes(y.shape[0], None, "text_features")
    y = l2_normalize(y.to(device=features.device, dtype=features.dtype))
    return (features @ y.T).permute(0, 3, 1, 2)  # (n, h, w, K) -> (n, K, h, w)


def _check_grid(x, name: str) -> Tensor:
    x = torch.as_tensor(x)
    return check_matrix(x, name, ndim=4)


def segment(
    vfm_patches,
    alignment: Alignment,
    text_features,
    *,
    image_size: tuple[int, int] | None = None,
    crop_box=None,
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
    crop_box : (left, top, right, bottom) or Tensor (n, 4), optional
        Where the patch grid lies in the image, in its pixels (the VFM's
        ``core.models.crop_box((W, H), spec)``); pixels outside get ``NOT_SEEN``. None: the
        grid covers the whole image (right for a "squash" model only).
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
        alignment.transform(z), text_features, image_size, crop_box, unlabeled_threshold,
        temperature,
    )


def segment_dense_clip(
    vlm_patches,
    text_features,
    *,
    image_size: tuple[int, int] | None = None,
    crop_box=None,
    unlabeled_threshold: float | None = None,
    temperature: float = 100.0,
) -> Segmentation:
    """Dense-CLIP (MaskCLIP) baseline: score the VLM's own patch features against text.

    Parameters
    ----------
    vlm_patches : Tensor, shape (n, h, w, d_t)
    text_features, image_size, crop_box, unlabeled_threshold, temperature
        As in :func:`segment` (``crop_box``: the VLM's crop).

    Returns
    -------
    Segmentation
    """
    x = _check_grid(vlm_patches, "vlm_patches")
    return _segment_features(
        l2_normalize(x), text_features, image_size, crop_box, unlabeled_threshold, temperature
    )
