"""Images + classes + model choices -> cached features -> every method's results.

Two halves, so a slider never re-encodes:

- :func:`extract` (slow, once): decodes only the images whose features are not cached, runs the
  chosen VLM (global image features, text prototypes, LaZSL crops and attribute sentences) and VFM
  (global features), and returns an :class:`Extraction` holding a :class:`core.methods.FeatureSet`.
- :func:`core.methods.run_methods` (fast, every time): CLIP, OTFusion, GPUA and LaZSL on it.

The app and the CLI both call this module; it never imports gradio. Models are loaded lazily: a
fully cached rerun never loads a model (nor needs its weights).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.cache import FeatureCache, feature_shape, kind_key, model_key
from core.data import ImageItem, ImageSet, SkippedFile, decode_many
from core.encoders import get_spec, load_encoder
from core.lazsl import crop_boxes, seed_from_hash
from core.methods import FeatureSet
from core.zeroshot import DEFAULT_TEMPLATE, descriptor_sentences

Progress = Callable[[int, int, str], None]

DECODE_CHUNK = 64  # images decoded and encoded together: bounds the memory held by decoded images
DECODE_MAX_SIDE = 1024  # LaZSL's smallest crop (0.6 x short side) still gets >= 224 px


@dataclass(frozen=True)
class ExtractSettings:
    """What to compute (and what the feature cache is keyed on).

    vlm : registry key of the vision-language model (image + text towers).
    vfm : registry key of the vision-only model, a VLM key (its image tower), or None (no VFM: the
          VLM's own image features stand in, the paper's "CLIP-only" row).
    templates : prompt templates with "{}"; several are ensembled.
    n_crops : LaZSL crops per image; 0 skips the LaZSL features.
    crop_scale : LaZSL crop side range as fractions of the short side.
    attributes : optional ``{class: [descriptor, ...]}``; classes without any use their name.
    """

    vlm: str = "clip-vit-b16"
    vfm: str | None = "dinov2-large"
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    n_crops: int = 0
    crop_scale: tuple[float, float] = (0.6, 0.9)
    attributes: Mapping[str, Sequence[str]] | None = field(default=None, hash=False, compare=False)
    batch_size: int = 32
    device: str | None = None


@dataclass(frozen=True)
class Extraction:
    """Features of an image set, with what is needed to show them.

    Attributes
    ----------
    features : FeatureSet
        The tensors the solvers take (see core.methods).
    items : tuple of ImageItem, length n
        The images that have features, in order (bad files are in ``skipped`` instead).
    class_names : tuple of str, length k
    skipped : tuple of SkippedFile
        Files rejected when loading or decoding, by name, with the reason.
    crop_boxes : Tensor, shape (n, m, 4) or None
        LaZSL crop boxes (left, top, right, bottom) in pixels of each decoded image.
    attribute_sentences : tuple of str, and attribute_index (k, a) long (-1 = padding)
    warnings : tuple of str
        Non-fatal notes for the user (labels outside the class list, ...).
    stats : dict
        Cache hits / misses, forward passes, seconds.
    """

    features: FeatureSet
    items: tuple[ImageItem, ...]
    class_names: tuple[str, ...]
    settings: ExtractSettings
    skipped: tuple[SkippedFile, ...] = ()
    crop_boxes: Tensor | None = None
    attribute_sentences: tuple[str, ...] = ()
    attribute_index: Tensor | None = None
    warnings: tuple[str, ...] = ()
    stats: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]


def _norm_label(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def resolve_labels(
    labels: Sequence[str | None], class_names: Sequence[str]
) -> tuple[Tensor, list[str]]:
    """Map label strings to class indices (case, "_" and spacing ignored); -1 where unknown.

    Returns the (n,) long tensor and warnings naming labels that match no class.
    """
    index = {_norm_label(c): i for i, c in reversed(list(enumerate(class_names)))}
    out = torch.full((len(labels),), -1, dtype=torch.long)
    unknown: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label is None:
            continue
        k = index.get(_norm_label(label))
        if k is None:
            unknown[label] = unknown.get(label, 0) + 1
        else:
            out[i] = k
    warnings = []
    if unknown:
        listing = ", ".join(f"'{name}' ({n})" for name, n in list(unknown.items())[:8])
        warnings.append(
            f"{sum(unknown.values())} image(s) have a folder/CSV label that is not in the class "
            f"list: {listing}. They are classified but left out of the accuracy; add those "
            "classes or rename the folders to match."
        )
    return out, warnings


class _LazyEncoder:
    """Loads the model on first use, so fully cached runs never touch the weights."""

    def __init__(self, key: str, device: str | None):
        self.spec = get_spec(key)
        self._device = device
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_encoder(self.spec.key, device=self._device)
        return self._encoder

    @property
    def n_forward(self) -> int:
        return 0 if self._encoder is None else int(getattr(self._encoder, "n_forward", 0))


@dataclass
class _Need:
    """One feature kind of one model for every image: cache lookup, then compute the misses."""

    model: _LazyEncoder
    kind: str
    settings: dict | None
    compute: Callable[[list, list[ImageItem]], Tensor]  # (decoded images, their items) -> features
    found: dict = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, str]:
        return model_key(self.model.spec), kind_key(self.kind, self.settings)


def _crop_boxes_from_sizes(items: Sequence[ImageItem], n_crops: int, scale) -> Tensor:
    """Deterministic LaZSL boxes per image, seeded from its content hash: Tensor (n, m, 4).

    Boxes are in pixels of the full-resolution (EXIF-transposed) image, ``ImageItem.size``, so they
    are known without decoding; callers scale them to a downsized decode.
    """
    return torch.stack(
        [
            crop_boxes(
                item.size[0],
                item.size[1],
                n_crops=n_crops,
                scale=scale,
                seed=seed_from_hash(item.sha256),
            )
            for item in items
        ]
    ).to(torch.float32)


def _text_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cached_rows(
    cache: FeatureCache | None,
    model: _LazyEncoder,
    kind: str,
    hashes: list[str],
    compute: Callable[[list[int]], Tensor],
) -> Tensor:
    """Features for ``hashes`` (one row each), reading the cache and computing only the misses.

    ``compute(rows)`` gets the positions (first occurrence) of the missing hashes and returns their
    features in that order; they are written back to the cache.
    """
    mkey, kkey = model_key(model.spec), kind_key(kind)
    shape = feature_shape(model.spec, kind) or (model.spec.output_dim,)
    found, missing = (
        cache.get_many(mkey, kkey, hashes, expected_shape=shape) if cache else ({}, hashes)
    )
    missing = list(dict.fromkeys(missing))
    if missing:
        first = {h: i for i, h in reversed(list(enumerate(hashes)))}
        new = dict(zip(missing, compute([first[h] for h in missing])))
        if cache is not None:
            cache.put_many(mkey, kkey, new)
        found.update(new)
    return torch.stack([found[h] for h in hashes]).to(torch.float32)


def _encode_texts(
    model: _LazyEncoder,
    cache: FeatureCache | None,
    kind: str,
    keys: list[str],
    compute: Callable[[list[int]], Tensor],
) -> Tensor:
    """Text features cached like image features, keyed by the hash of what was encoded."""
    return _cached_rows(cache, model, kind, [_text_hash(kind, key) for key in keys], compute)


def extract(
    image_set: ImageSet,
    class_names: Sequence[str],
    settings: ExtractSettings | None = None,
    *,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
) -> Extraction:
    """Compute (or read from the cache) every feature the methods need.

    Parameters
    ----------
    image_set : ImageSet
        From ``core.data.load_image_set``; folder / CSV labels become ``features.labels``.
    class_names : sequence of str, length k >= 2
    settings : ExtractSettings
    cache : FeatureCache or None
        None disables the on-disk cache.
    progress : callable ``progress(done, total, desc)``, optional

    Raises
    ------
    ValueError
        Fewer than 2 classes, no decodable image, unknown model keys.
    core.hub.WeightsUnavailableError
        A model whose features are not cached has no weights on this machine.
    """
    settings = settings or ExtractSettings()
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise ValueError(f"classes: expected at least 2 classes, got {len(class_names)}.")
    start = time.perf_counter()
    report = progress or (lambda done, total, desc: None)
    vlm = _LazyEncoder(settings.vlm, settings.device)
    if vlm.spec.kind != "vlm":
        raise ValueError(
            f"vlm: '{settings.vlm}' is a vision-only model; pick a vision-language model "
            "(CLIP or SigLIP) for the text side."
        )
    vfm = None
    if settings.vfm is not None:
        vfm = vlm if settings.vfm == settings.vlm else _LazyEncoder(settings.vfm, settings.device)

    items = list(image_set.items)
    skipped = list(image_set.skipped)
    if not items:
        raise ValueError("images: no usable image in the upload; see the skipped files for why.")

    def bs():
        return settings.batch_size

    needs = [
        _Need(vlm, "global", None, lambda ims, its: vlm.encoder.encode_images(ims, batch_size=bs()))
    ]
    if vfm is not None:
        needs.append(
            _Need(
                vfm,
                "global",
                None,
                lambda ims, its: vfm.encoder.encode_images(ims, batch_size=bs()),
            )
        )
    crop_settings = None
    if settings.n_crops > 0:
        crop_settings = {"n_crops": int(settings.n_crops), "scale": list(settings.crop_scale)}

        def compute_crops(ims, its):
            boxes = _crop_boxes_from_sizes(its, settings.n_crops, settings.crop_scale)
            # Decoded images may be downscaled (DECODE_MAX_SIDE): scale boxes to their size.
            scale = torch.tensor(
                [[im.width / it.size[0], im.height / it.size[1]] * 2 for im, it in zip(ims, its)]
            )
            return vlm.encoder.encode_crops(ims, boxes * scale[:, None, :], batch_size=bs())

        needs.append(_Need(vlm, "crops", crop_settings, compute_crops))

    # 1. Cache lookups (cheap: no decoding, no model).
    missing: set[str] = set()
    for need in needs:
        if cache is None:
            missing.update(item.sha256 for item in items)
            continue
        mkey, kkey = need.keys
        shape = feature_shape(need.model.spec, need.kind, need.settings)
        need.found, miss = cache.get_many(
            mkey, kkey, [it.sha256 for it in items], expected_shape=shape
        )
        missing.update(miss)

    # 2. Decode and encode only the misses, chunk by chunk.
    todo = list({it.sha256: it for it in items if it.sha256 in missing}.values())
    bad: dict[str, str] = {}  # sha256 -> why it could not be decoded
    forward_before = sum(n.model.n_forward for n in needs)
    for start_i in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start_i : start_i + DECODE_CHUNK]
        report(start_i, len(todo), "decoding and encoding images")
        images, failures = decode_many(chunk, max_side=DECODE_MAX_SIDE)
        failed = {f.index for f in failures}
        bad.update((chunk[f.index].sha256, f.reason) for f in failures)
        ok_items = [it for i, it in enumerate(chunk) if i not in failed]
        if not ok_items:
            continue
        for need in needs:
            want = [i for i, it in enumerate(ok_items) if it.sha256 not in need.found]
            if not want:
                continue
            feats = need.compute([images[i] for i in want], [ok_items[i] for i in want])
            new = {ok_items[i].sha256: feats[j] for j, i in enumerate(want)}
            if cache is not None:
                cache.put_many(*need.keys, new)
            need.found.update(new)
    report(len(todo), len(todo), "images encoded")

    kept = [it for it in items if it.sha256 not in bad]
    skipped += [SkippedFile(it.name, bad[it.sha256]) for it in items if it.sha256 in bad]
    if not kept:
        raise ValueError(
            "images: none of the uploaded images could be decoded; see the skipped files."
        )

    def stacked(need: _Need) -> Tensor:
        return torch.stack([need.found[it.sha256] for it in kept]).to(torch.float32)

    vlm_image = stacked(needs[0])
    vfm_image = stacked(needs[1]) if vfm is not None else None
    crops = stacked(needs[-1]) if crop_settings else None

    # 3. Text prototypes (and LaZSL attribute sentences), cached by their exact prompts.
    report(0, 1, "encoding class prompts")
    templates = tuple(settings.templates)
    text = _encode_texts(
        vlm,
        cache,
        "text",
        [json.dumps([c, templates]) for c in class_names],
        lambda rows: vlm.encoder.encode_text([class_names[r] for r in rows], templates=templates),
    )
    attributes = attribute_mask = attribute_index = None
    sentences: list[str] = []
    if crop_settings:
        sentences, attribute_index, attribute_mask = descriptor_sentences(
            dict(settings.attributes or {}), class_names
        )
        sent_feats = _encode_texts(
            vlm,
            cache,
            "sentence",
            sentences,
            lambda rows: vlm.encoder.encode_sentences([sentences[r] for r in rows]),
        )
        safe_index = attribute_index.clamp_min(0)
        attributes = sent_feats[safe_index] * attribute_mask[..., None]  # (k, a, d), zero padding

    labels = None
    warnings: list[str] = []
    if any(it.label is not None for it in kept):
        labels, warnings = resolve_labels([it.label for it in kept], class_names)
    boxes = (
        _crop_boxes_from_sizes(kept, settings.n_crops, settings.crop_scale)
        if crop_settings
        else None
    )
    n_forward = sum(n.model.n_forward for n in needs) - forward_before
    stats = {
        "images": len(kept),
        "cache_hits": sum(1 for it in items if it.sha256 not in missing),
        "encoded": len(todo) - len(bad),
        "forward_passes": n_forward,
        "cache_enabled": bool(cache is not None and cache.enabled),
        "seconds": time.perf_counter() - start,
    }
    report(1, 1, "features ready")
    return Extraction(
        features=FeatureSet(
            vlm_image=vlm_image,
            text=text,
            vfm_image=vfm_image,
            crops=crops,
            attributes=attributes,
            attribute_mask=attribute_mask,
            labels=labels,
        ),
        items=tuple(kept),
        class_names=class_names,
        settings=settings,
        skipped=tuple(skipped),
        crop_boxes=boxes,
        attribute_sentences=tuple(sentences),
        attribute_index=attribute_index,
        warnings=tuple(image_set.warnings) + tuple(warnings),
        stats=stats,
    )


@dataclass(frozen=True)
class SegmentationResult:
    """Dense predictions for some images of an extraction.

    Attributes
    ----------
    indices : tuple of int
        Which images of the extraction (positions in ``Extraction.items``).
    images : list of PIL.Image
        The decoded images (at most ``DECODE_MAX_SIDE``), to draw overlays on.
    clip_labels, gpua_labels : list of Tensor, each (H_i, W_i) long, -1 = unlabeled
        Dense CLIP (MaskCLIP) alone, and GPUA-aligned VFM patches, at each image's size.
    clip_probs, gpua_probs : list of Tensor, each (K, H_i, W_i)
    alignment : core.gpua.Alignment fitted on the patch pool
    """

    indices: tuple[int, ...]
    images: list
    clip_labels: list
    gpua_labels: list
    clip_probs: list
    gpua_probs: list
    alignment: object = field(repr=False, default=None)


def _resize_grid(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, h, w, d) -> (n, H, W, d) by bilinear interpolation (CLIP and DINO grids differ)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = torch.nn.functional.interpolate(
        x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False
    )
    return y.permute(0, 2, 3, 1)


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
    from core.gpua import fit_gpua
    from core.gpua_seg import segment as gpua_segment
    from core.gpua_seg import segment_dense_clip, select_patch_pool

    settings = extraction.settings
    report = progress or (lambda done, total, desc: None)
    vlm = _LazyEncoder(settings.vlm, settings.device)
    if not vlm.spec.dense:
        raise ValueError(
            f"segmentation needs a ViT CLIP with a dense path; '{settings.vlm}' has none. Pick "
            "CLIP ViT-B/16, ViT-B/32 or ViT-L/14."
        )
    vfm_key = settings.vfm or settings.vlm
    vfm = vlm if vfm_key == settings.vlm else _LazyEncoder(vfm_key, settings.device)
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

    def patches(model: _LazyEncoder, kind: str, compute) -> Tensor:
        hashes = [it.sha256 for it in items]
        return _cached_rows(
            cache, model, kind, hashes, lambda rows: compute([images[r] for r in rows])
        )

    report(1, 3, "dense CLIP and VFM patch features")
    bs = settings.batch_size
    x = patches(vlm, "dense", lambda ims: vlm.encoder.encode_dense(ims, batch_size=bs))
    z = patches(vfm, "patches", lambda ims: vfm.encoder.encode_patches(ims, batch_size=bs))
    x_on_z = _resize_grid(x, tuple(z.shape[1:3]))  # pair each VFM patch with CLIP's at its place
    text = extraction.features.text
    flat_x = x_on_z.reshape(-1, x_on_z.shape[-1])
    flat_z = z.reshape(-1, z.shape[-1])
    report(2, 3, "fitting GPUA on the patch pool")
    idx = select_patch_pool(flat_x, text, per_class=per_class)
    align = fit_gpua(
        vfm_features=flat_z[idx], vlm_features=flat_x[idx], text_features=text, ths_steps=ths_steps
    )
    out = {"clip_labels": [], "gpua_labels": [], "clip_probs": [], "gpua_probs": []}
    for i in indices:
        p = pool.index(i)
        size = (by_pos[i].height, by_pos[i].width)
        c = segment_dense_clip(
            x[p : p + 1], text, image_size=size, unlabeled_threshold=unlabeled_threshold
        )
        g = gpua_segment(
            z[p : p + 1], align, text, image_size=size, unlabeled_threshold=unlabeled_threshold
        )
        out["clip_labels"].append(c.labels[0])
        out["clip_probs"].append(c.probs[0])
        out["gpua_labels"].append(g.labels[0])
        out["gpua_probs"].append(g.probs[0])
    report(3, 3, "segmentation ready")
    return SegmentationResult(
        indices=tuple(indices), images=[by_pos[i] for i in indices], alignment=align, **out
    )
