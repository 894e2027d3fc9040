"""Images of an extraction -> dense segmentation: CLIP alone vs GPUA-aligned VFM patches.

For the app and the CLI: decodes the chosen images, reads (or computes and caches) the VLM's dense
CLIP (MaskCLIP) features and the VFM's patch features, fits GPUA on a patch pool and labels every
pixel both ways. The solver itself (pool selection, dense CLIP, GPUA segmentation) is
:mod:`core.methods.gpua.segment`; this module only feeds it from an
:class:`core.pipeline.extraction.Extraction`.

Geometry: each model sees its own centre crop of the image (``core.models.crop_box``, the
preprocessing's own arithmetic); its logits are placed in that box, pixels outside it are
``NOT_SEEN``, and the pool pairs each VFM patch with the CLIP feature sampled (bilinearly) at that
patch's centre in the image (:mod:`core.methods.gpua.patch_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.data import decode_many
from core.methods.gpua.segment import NOT_SEEN, UNLABELED
from core.models.preprocess import crop_box
from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import DECODE_MAX_SIDE, Extraction, Progress
from core.pipeline.features import LazyEncoder, cached_features

__all__ = ["NOT_SEEN", "UNLABELED", "SegmentationResult", "segment"]


@dataclass(frozen=True)
class SegmentationResult:
    """Dense predictions for some images of an extraction.

    Attributes
    ----------
    indices : tuple of int
        Which images of the extraction (positions in ``Extraction.items``).
    images : list of PIL.Image
        The decoded images (at most ``DECODE_MAX_SIDE``), to draw overlays on.
    clip_labels, gpua_labels : list of Tensor, each (H_i, W_i) long
        -1 (``UNLABELED``) below the confidence threshold, -2 (``NOT_SEEN``) outside the crop.
        Dense CLIP (MaskCLIP) alone, and GPUA-aligned VFM patches, at each image's size.
    clip_probs, gpua_probs : list of Tensor, each (K, H_i, W_i)
        0 where not seen.
    clip_seen, gpua_seen : list of Tensor, each (H_i, W_i) bool
        Pixels inside the VLM's / the VFM's crop; outside, the labels are ``NOT_SEEN`` (-2).
    clip_boxes, gpua_boxes : list of (left, top, right, bottom)
        Those crops in pixels of each image.
    alignment : core.methods.gpua.fit.Alignment fitted on the patch pool
    """

    indices: tuple[int, ...]
    images: list
    clip_labels: list
    gpua_labels: list
    clip_probs: list
    gpua_probs: list
    clip_seen: list
    gpua_seen: list
    clip_boxes: list
    gpua_boxes: list
    alignment: object = field(repr=False, default=None)


def segment(
    extraction: Extraction,
    indices: Sequence[int],
    *,
    cache: FeatureCache | None = None,
    pool_indices: Sequence[int] | None = None,
    per_class: int = 256,
    ths_steps: int = 100,
    unlabeled_threshold: float | None = None,
    progress: Progress | None = None,
) -> SegmentationResult:
    """Segment images of an extraction: dense CLIP alone vs GPUA-mapped VFM patches.

    GPUA is fitted on a patch pool drawn from ``pool_indices`` (default: the images being
    segmented), per class the top ``per_class`` patches by CLIP patch-text similarity (the paper
    uses 1024 per class over a whole data set; fewer images need fewer). The VLM must be a ViT
    CLIP (it needs MaskCLIP's dense path) and the VFM a patch model.
    """
    from core.methods.gpua.fit import fit_gpua
    from core.methods.gpua.patch_grid import resample_patches
    from core.methods.gpua.segment import segment as gpua_segment
    from core.methods.gpua.segment import segment_dense_clip, select_patch_pool

    settings = extraction.settings
    report = progress or (lambda done, total, desc: None)
    vlm = LazyEncoder(settings.vlm, settings.device)
    if not vlm.spec.dense:
        raise ValueError(
            f"segmentation needs a ViT CLIP with a dense path; '{settings.vlm}' has none. Pick "
            "CLIP ViT-B/16, ViT-B/32 or ViT-L/14."
        )
    vfm_key = settings.vfm or settings.vlm
    vfm = vlm if vfm_key == settings.vlm else LazyEncoder(vfm_key, settings.device)
    if vfm.spec.patch_size is None:
        raise ValueError(f"segmentation needs a VFM with patches; '{vfm_key}' has none.")
    indices = [int(i) for i in indices]
    pool = sorted(set(indices) | set(int(i) for i in (pool_indices or indices)))
    items = [extraction.items[i] for i in pool]
    report(0, 3, "decoding images")
    images, failures = decode_many(items, max_side=DECODE_MAX_SIDE)
    if failures:
        raise ValueError(f"cannot decode {failures[0].name}: {failures[0].reason}")
    by_pos = dict(zip(pool, images))

    def patches(model: LazyEncoder, kind: str, compute) -> Tensor:
        hashes = [it.sha256 for it in items]
        return cached_features(
            cache, model, kind, hashes, lambda rows: compute([images[r] for r in rows])
        )

    report(1, 3, "dense CLIP and VFM patch features")
    bs = settings.batch_size
    x = patches(vlm, "dense", lambda ims: vlm.encoder.encode_dense(ims, batch_size=bs))
    z = patches(vfm, "patches", lambda ims: vfm.encoder.encode_patches(ims, batch_size=bs))
    # Each image's crop in its own pixels, per model: (n_pool, 4) each.
    x_boxes = torch.tensor([crop_box(im.size, vlm.spec) for im in images], dtype=torch.float64)
    z_boxes = torch.tensor([crop_box(im.size, vfm.spec) for im in images], dtype=torch.float64)
    # Pair each VFM patch with the CLIP feature at the same place in the image (not the same grid
    # index: the grids tile different crops); VFM patches outside CLIP's crop have no partner.
    x_on_z, paired = resample_patches(
        x, source_boxes=x_boxes, target_boxes=z_boxes, target_grid=tuple(z.shape[1:3])
    )
    text = extraction.features.text
    flat_x = x_on_z.reshape(-1, x_on_z.shape[-1])
    flat_z = z.reshape(-1, z.shape[-1])
    report(2, 3, "fitting GPUA on the patch pool")
    idx = select_patch_pool(x_on_z, text, per_class=per_class, mask=paired)
    align = fit_gpua(
        vfm_features=flat_z[idx], vlm_features=flat_x[idx], text_features=text, ths_steps=ths_steps
    )
    out = {f"{m}_{k}": [] for m in ("clip", "gpua") for k in ("labels", "probs", "seen", "boxes")}
    for i in indices:
        p = pool.index(i)
        size = (by_pos[i].height, by_pos[i].width)
        c = segment_dense_clip(x[p : p + 1], text, image_size=size, crop_box=x_boxes[p],
                               unlabeled_threshold=unlabeled_threshold)
        g = gpua_segment(z[p : p + 1], align, text, image_size=size, crop_box=z_boxes[p],
                         unlabeled_threshold=unlabeled_threshold)
        for m, res, boxes in (("clip", c, x_boxes), ("gpua", g, z_boxes)):
            out[f"{m}_labels"].append(res.labels[0])
            out[f"{m}_probs"].append(res.probs[0])
            out[f"{m}_seen"].append(res.seen[0])
            out[f"{m}_boxes"].append(tuple(boxes[p].tolist()))
    report(3, 3, "segmentation ready")
    return SegmentationResult(
        indices=tuple(indices), images=[by_pos[i] for i in indices], alignment=align, **out
    )
