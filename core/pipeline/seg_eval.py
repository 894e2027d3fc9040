"""Open-vocabulary segmentation over a benchmark: streaming mIoU of MaskCLIP with and without GPUA.

One image at a time (bounded memory): read it, cut it into windows (:mod:`seg_windows`), get
the windows' dense CLIP (MaskCLIP) features and, for GPUA, the VFM's patch features (from the
feature cache when present, keyed by the file's content and the window settings), score every
method, average the windows, resize to the label map, argmax, and add the image's confusion
matrix to each method's running sum. Nothing per image is kept; mIoU comes from the summed
confusion (:func:`core.metrics.iou_from_confusion`), as MMSegmentation's IoU metric does.

GPUA (App. C of GPUA): the alignment is fitted before the evaluation on a patch pool, per class
the top ``per_class`` (1024) patches by CLIP patch-text cosine among every window patch of the
fitting images (the train split by default: "without access to test data"). The pool is kept
in a stream (:class:`PatchPool`): the top patches of each class so far plus the new image's,
so the selection equals one over all fitting patches with the memory of K x 1024 patches.
Z = [VFM patch, CLIP patch] (the paper's concatenation), the CLIP patch sampled at the VFM
patch's centre when the two grids differ. The scoring is then the same as MaskCLIP's with the
mapped VFM patches in place of the dense CLIP ones (GPUA changes nothing else).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.config import SEG_METHODS, SEG_POOL_PER_CLASS, MethodSettings
from core.data.segmentation_sets import IGNORE_INDEX, SegmentationSet
from core.methods.gpua.patch_grid import resample_patches
from core.methods.gpua.segment import select_patch_pool, text_logits
from core.methods.run import FeatureSet, fit_gpua_with, gpua_inputs
from core.metrics import confusion_matrix, iou_from_confusion
from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import _text_features
from core.pipeline.features import LazyEncoder, cached_features
from core.pipeline.seg_windows import SlideSettings, average_windows, image_windows, upsample_to

__all__ = ["PatchPool", "SegMethodScore", "SegRun", "evaluate_segmentation"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SegMethodScore:
    """One method over a dataset: mIoU (fraction), IoU per class (NaN: class absent from both
    labels and predictions), the summed confusion (K, K) and the scoring seconds."""

    method: str
    miou: float
    per_class: Tensor
    confusion: Tensor
    seconds: float


@dataclass(frozen=True)
class SegRun:
    """A dataset's evaluation: scores per method, what ran, and notes for the report."""

    dataset: str
    n_images: int
    scores: dict[str, SegMethodScore]
    settings: dict
    notes: tuple[str, ...] = ()
    fit_images: int = 0
    pool_size: int = 0
    extract_seconds: float = 0.0
    alignment: object = field(default=None, repr=False)


class PatchPool:
    """Per class the top ``per_class`` patches by CLIP patch-text cosine, kept over a stream.

    Holds at most ~2 K per_class rows between prunes (ADE20K, CLIP ViT-B/16 + DINOv3-B:
    2 x 150 x 1024 x (512 + 768) float32, 1.6 GB); pruning that rarely keeps its cost (a
    (rows, K) cosine and top-k) small beside the forward passes.

    ``add(x, z)`` takes one image's patches (CLIP (n, d_t) at the VFM patches, VFM (n, d_v));
    ``select()`` gives the pool's (x, z) rows, equal to ``select_patch_pool`` over every patch
    added (with its cap max(1, P // K) for P patches seen).
    """

    def __init__(self, text: Tensor, *, per_class: int = SEG_POOL_PER_CLASS):
        self.text, self.per_class = text, per_class
        self.x: Tensor | None = None
        self.z: Tensor | None = None
        self.n_seen = 0

    def add(self, x: Tensor, z: Tensor) -> None:
        self.n_seen += x.shape[0]
        self.x = x if self.x is None else torch.cat([self.x, x])
        self.z = z if self.z is None else torch.cat([self.z, z])
        limit = self.per_class * self.text.shape[0]
        if self.x.shape[0] > 2 * limit:  # prune to the top per_class of each class (no cap)
            self._keep(select_patch_pool(self.x, self.text, per_class=self.per_class,
                                         n_candidates=limit))

    def _keep(self, idx: Tensor) -> None:
        self.x, self.z = self.x[idx], self.z[idx]

    def select(self) -> tuple[Tensor, Tensor]:
        if self.x is None:
            raise ValueError("PatchPool.select: no patch was added; fit on at least one image.")
        idx = select_patch_pool(self.x, self.text, per_class=self.per_class,
                                n_candidates=self.n_seen)
        return self.x[idx], self.z[idx]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Windows:
    """Window features of one image for the VLM (dense CLIP) and optionally the VFM, cached."""

    def __init__(self, vlm: LazyEncoder, vfm: LazyEncoder | None, cache: FeatureCache | None,
                 slide: SlideSettings, batch_size: int):
        self.vlm, self.vfm, self.cache, self.slide, self.bs = vlm, vfm, cache, slide, batch_size

    def __call__(self, image, path) -> tuple:
        resized, boxes, orig = image_windows(image.size, self.slide)
        sha = [_sha(path)] if self.cache is not None else ["-"]

        def feats(model: LazyEncoder) -> Tensor:
            def compute(rows: list[int]) -> Tensor:  # the one image: (1, M, h, w, d)
                return model.encoder.encode_crop_patches([image], orig[None], batch_size=self.bs)

            return cached_features(self.cache, model, "slide-patches", sha, compute,
                                   settings=self.slide.as_dict())[0]  # (M, h, w, d)

        x = feats(self.vlm)
        z = feats(self.vfm) if self.vfm is not None else None
        return resized, boxes, x, z


def _paired(x: Tensor, z: Tensor, boxes: Tensor) -> Tensor:
    """CLIP window patches (M, h, w, d_t) sampled at the VFM patches (M, h', w') of each window."""
    if x.shape[1:3] == z.shape[1:3]:
        return x
    return resample_patches(x, source_boxes=boxes, target_boxes=boxes,
                            target_grid=tuple(z.shape[1:3]))[0]


def _gpua_z(x_on_z: Tensor, z: Tensor, solver: MethodSettings) -> Tensor:
    """Z rows for GPUA, (n, d_z): the solver's concatenation of the VFM and CLIP patches."""
    d = x_on_z.shape[-1]
    # gpua_inputs reads the image features only; the text field is a placeholder.
    fs = FeatureSet(vlm_image=x_on_z.reshape(-1, d), text=torch.zeros(1, d),
                    vfm_image=z.reshape(-1, z.shape[-1]))
    return gpua_inputs(fs, solver.gpua)


def fit_segmentation_gpua(fit_set: SegmentationSet, indices: Sequence[int], windows: _Windows,
                          text: Tensor, solver: MethodSettings, *, per_class: int,
                          progress: Progress) -> tuple[object, int]:
    """GPUA's alignment fitted on the streamed patch pool of ``fit_set[indices]``."""
    pool = PatchPool(text, per_class=per_class)
    for done, i in enumerate(indices):
        sample = fit_set.samples[i]
        _, boxes, x, z = windows(fit_set.read_image(sample), sample.image)
        x_on_z = _paired(x, z, boxes)
        pool.add(x_on_z.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1]))
        progress(done + 1, len(indices), "GPUA patch pool")
    px, pz = pool.select()
    if px.shape[0] < text.shape[0]:
        raise ValueError(
            f"GPUA patch pool: {px.shape[0]} distinct patches for {text.shape[0]} classes (from "
            f"{len(indices)} images, {pool.n_seen} patches); the fit needs at least one per "
            "class: fit on more images (--fit-images) or raise --per-class.")
    align = fit_gpua_with(FeatureSet(vlm_image=px, text=text, vfm_image=pz), solver.gpua, text)
    return align, int(px.shape[0])


def _method_logits(method: str, x: Tensor, z: Tensor | None, boxes: Tensor, text: Tensor,
                   solver: MethodSettings, align) -> Tensor:
    """(M, K, h, w) cosine maps of one method over an image's windows."""
    if method == "maskclip":
        return text_logits(x, text)
    x_on_z = _paired(x, z, boxes)
    mapped = align.transform(_gpua_z(x_on_z, z, solver))  # (M h' w', d_t), normalised
    return text_logits(mapped.reshape(*z.shape[:3], -1), text)


def evaluate_segmentation(
    dataset: SegmentationSet,
    *,
    vlm: str,
    vfm: str | None,
    methods: Sequence[str],
    slide: SlideSettings,
    templates: tuple[str, ...],
    solver: MethodSettings | None = None,
    fit_set: SegmentationSet | None = None,
    fit_indices: Sequence[int] = (),
    per_class: int = SEG_POOL_PER_CLASS,
    cache: FeatureCache | None = None,
    device: str | None = None,
    precision: str = "fp32",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> SegRun:
    """Streaming mIoU of each method in ``methods`` ("maskclip", "maskclip+gpua") on ``dataset``.

    ``fit_set[fit_indices]``: the images GPUA's patch pool comes from (needed with
    "maskclip+gpua"). Returns a :class:`SegRun` (mIoU as a fraction).
    """
    unknown = [m for m in methods if m not in SEG_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods: {'unknown ' + str(unknown) if unknown else 'none given'}; "
                         f"choose from {', '.join(SEG_METHODS)} (SCLIP / SC-CLIP are not "
                         "available in this project).")
    solver = solver or MethodSettings()
    report = progress or (lambda done, total, desc: None)
    start = time.perf_counter()
    v = LazyEncoder(vlm, device, precision=precision)
    if not v.spec.dense:
        raise ValueError(f"seg-eval needs a ViT CLIP with MaskCLIP's dense path; '{vlm}' has none."
                         " Pick clip-vit-b16 (the papers'), clip-vit-b32 or clip-vit-l14.")
    needs_vfm = "maskclip+gpua" in methods
    if needs_vfm and vfm is None:
        raise ValueError("maskclip+gpua needs a VFM (--vfm); the papers use dinov3-vitb16.")
    f = LazyEncoder(vfm, device, precision=precision) if needs_vfm else None
    if f is not None and f.spec.patch_size is None:
        raise ValueError(f"maskclip+gpua needs a VFM with patches; '{vfm}' has none.")
    text = _text_features(v, cache, dataset.class_names, templates)  # (K, d_t)
    windows = _Windows(v, f, cache, slide, batch_size)
    align, pool_size = None, 0
    if needs_vfm:
        if fit_set is None or not len(fit_indices):
            raise ValueError("maskclip+gpua: no fitting image; give a train split or fit images.")
        align, pool_size = fit_segmentation_gpua(fit_set, fit_indices, windows, text, solver,
                                                 per_class=per_class, progress=report)
    k = dataset.n_classes
    conf = {m: torch.zeros((k, k), dtype=torch.long) for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    extract = time.perf_counter() - start
    for done, sample in enumerate(dataset.samples):
        label = dataset.read_label(sample)  # (H, W)
        image = dataset.read_image(sample)
        if (image.height, image.width) != tuple(label.shape):
            raise ValueError(f"{sample.name}: image {image.width}x{image.height} but label map "
                             f"{label.shape[1]}x{label.shape[0]}; the pair does not match.")
        t0 = time.perf_counter()
        resized, boxes, x, z = windows(image, sample.image)  # z None without a VFM
        extract += time.perf_counter() - t0
        keep = label != IGNORE_INDEX
        for m in methods:
            t0 = time.perf_counter()
            logits = average_windows(_method_logits(m, x, z, boxes, text, solver, align), boxes,
                                     resized)
            pred = upsample_to(logits, tuple(label.shape)).argmax(dim=0)  # (H, W)
            if bool(keep.any()):
                conf[m] += confusion_matrix(pred[keep], label[keep], k)
            seconds[m] += time.perf_counter() - t0
        report(done + 1, len(dataset), "segmenting")
    scores = {}
    for m in methods:
        miou, per = iou_from_confusion(conf[m])
        scores[m] = SegMethodScore(m, miou, per, conf[m], seconds[m])
    return SegRun(dataset=dataset.key, n_images=len(dataset), scores=scores,
                  settings={"vlm": vlm, "vfm": vfm if needs_vfm else None, **slide.as_dict(),
                            "templates": len(templates), "per_class": per_class,
                            "label_source": dataset.label_source},
                  fit_images=len(fit_indices) if needs_vfm else 0, pool_size=pool_size,
                  extract_seconds=extract, alignment=align)
