"""Images + classes + model choices -> cached features -> every method's results.

Two halves, so a slider never re-encodes:

- :func:`extract` (slow, once): decodes only the images whose features are not cached, runs the
  chosen VLM (global image features, text prototypes, LaZSL crops and attribute sentences) and VFM
  (global features), and returns an :class:`Extraction` holding a
  :class:`core.methods.run.FeatureSet`.
- :func:`core.methods.run.run_methods` (fast, every time): CLIP, OTFusion, GPUA and LaZSL on it.

The app and the CLI both call this module; it never imports gradio. Models are loaded lazily: a
fully cached rerun never loads a model (nor needs its weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.data import ImageItem, ImageSet, NoImagesError, SkippedFile, decode_many
from core.methods.lazsl import crop_boxes, seed_from_hash
from core.methods.run import FeatureSet
from core.methods.zeroshot import DEFAULT_TEMPLATE, descriptor_sentences
from core.pipeline.cache import FeatureCache, feature_shape, kind_key, model_key
from core.pipeline.features import LazyEncoder, cached_texts

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
        The tensors the solvers take (see core.methods.run).
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


@dataclass
class _Need:
    """One feature kind of one model for every image: cache lookup, then compute the misses."""

    model: LazyEncoder
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


def _load_models(settings: ExtractSettings) -> tuple[LazyEncoder, LazyEncoder | None]:
    """The VLM and the VFM (None without one; the VLM itself when both keys are the same).

    Nothing is loaded yet (see :class:`LazyEncoder`). Raises ValueError for an unknown key or a
    vision-only model given as the VLM.
    """
    vlm = LazyEncoder(settings.vlm, settings.device)
    if vlm.spec.kind != "vlm":
        raise ValueError(
            f"vlm: '{settings.vlm}' is a vision-only model; pick a vision-language model "
            "(CLIP or SigLIP) for the text side."
        )
    if settings.vfm is None:
        return vlm, None
    vfm = vlm if settings.vfm == settings.vlm else LazyEncoder(settings.vfm, settings.device)
    return vlm, vfm


def _global_need(model: LazyEncoder, batch_size: int) -> _Need:
    """One model's global image features, (n, d) for n images."""
    return _Need(
        model,
        "global",
        None,
        lambda ims, its: model.encoder.encode_images(ims, batch_size=batch_size),
    )


def _image_needs(
    settings: ExtractSettings, vlm: LazyEncoder, vfm: LazyEncoder | None
) -> dict[str, _Need]:
    """The per-image features to read or compute, keyed by their :class:`FeatureSet` field.

    In the order they are computed for each chunk: "vlm_image" always, "vfm_image" with a VFM,
    "crops" (LaZSL, keyed on the crop settings) when ``settings.n_crops > 0``.
    """
    batch_size = settings.batch_size
    needs = {"vlm_image": _global_need(vlm, batch_size)}
    if vfm is not None:
        needs["vfm_image"] = _global_need(vfm, batch_size)
    if settings.n_crops > 0:
        crop_settings = {"n_crops": int(settings.n_crops), "scale": list(settings.crop_scale)}

        def compute_crops(ims, its):
            boxes = _crop_boxes_from_sizes(its, settings.n_crops, settings.crop_scale)
            # Decoded images may be downscaled (DECODE_MAX_SIDE): scale boxes to their size.
            scale = torch.tensor(
                [[im.width / it.size[0], im.height / it.size[1]] * 2 for im, it in zip(ims, its)]
            )
            return vlm.encoder.encode_crops(ims, boxes * scale[:, None, :], batch_size=batch_size)

        needs["crops"] = _Need(vlm, "crops", crop_settings, compute_crops)
    return needs


def _forward_passes(needs: Mapping[str, _Need]) -> int:
    """Forward passes run so far by the needs' models, each model counted once (the VLM serves
    global features, crops and text)."""
    models = {id(n.model): n.model for n in needs.values()}
    return sum(m.n_forward for m in models.values())


def _cache_lookups(
    needs: Mapping[str, _Need], items: Sequence[ImageItem], cache: FeatureCache | None
) -> set[str]:
    """Fill each need's ``found`` from the cache; return the hashes some need still lacks.

    Cheap: no decoding, no model. Without a cache every image is missing.
    """
    missing: set[str] = set()
    for need in needs.values():
        if cache is None:
            missing.update(item.sha256 for item in items)
            continue
        mkey, kkey = need.keys
        shape = feature_shape(need.model.spec, need.kind, need.settings)
        need.found, miss = cache.get_many(
            mkey, kkey, [it.sha256 for it in items], expected_shape=shape
        )
        missing.update(miss)
    return missing


def _encode_chunk(
    needs: Mapping[str, _Need], images: list, items: list[ImageItem], cache: FeatureCache | None
) -> None:
    """Compute each need's features for the decoded ``images`` (of ``items``) it lacks.

    The new features go into ``need.found`` and are written to the cache.
    """
    for need in needs.values():
        want = [i for i, it in enumerate(items) if it.sha256 not in need.found]
        if not want:
            continue
        feats = need.compute([images[i] for i in want], [items[i] for i in want])
        new = {items[i].sha256: feats[j] for j, i in enumerate(want)}
        if cache is not None:
            cache.put_many(*need.keys, new)
        need.found.update(new)


def _encode_misses(
    needs: Mapping[str, _Need],
    todo: list[ImageItem],
    cache: FeatureCache | None,
    report: Progress,
) -> dict[str, str]:
    """Decode and encode only the missing images, ``DECODE_CHUNK`` at a time.

    Returns ``{sha256: why}`` for the images that could not be decoded.
    """
    bad: dict[str, str] = {}
    for start_i in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start_i : start_i + DECODE_CHUNK]
        report(start_i, len(todo), "decoding and encoding images")
        images, failures = decode_many(chunk, max_side=DECODE_MAX_SIDE)
        failed = {f.index for f in failures}
        bad.update((chunk[f.index].sha256, f.reason) for f in failures)
        ok_items = [it for i, it in enumerate(chunk) if i not in failed]
        if ok_items:
            _encode_chunk(needs, images, ok_items, cache)
    report(len(todo), len(todo), "images encoded")
    return bad


def _stacked(need: _Need, items: Sequence[ImageItem]) -> Tensor:
    """One need's features for ``items``, in order: float32 (n, ...)."""
    return torch.stack([need.found[it.sha256] for it in items]).to(torch.float32)


def _text_features(
    vlm: LazyEncoder,
    cache: FeatureCache | None,
    class_names: tuple[str, ...],
    templates: tuple[str, ...],
) -> Tensor:
    """Class text prototypes (template-ensembled), cached by their exact prompts: (k, d)."""
    return cached_texts(
        vlm,
        cache,
        "text",
        [json.dumps([c, templates]) for c in class_names],
        lambda rows: vlm.encoder.encode_text([class_names[r] for r in rows], templates=templates),
    )


def _attribute_features(
    vlm: LazyEncoder,
    cache: FeatureCache | None,
    class_names: tuple[str, ...],
    attributes: Mapping[str, Sequence[str]] | None,
) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """LaZSL attribute sentences per class, each sentence encoded (and cached) once.

    Returns the sentences (s), attribute_index (k, a) long (-1 = padding), attribute_mask (k, a)
    and the features (k, a, d), zero on the padding.
    """
    sentences, attribute_index, attribute_mask = descriptor_sentences(
        dict(attributes or {}), class_names
    )
    sent_feats = cached_texts(
        vlm,
        cache,
        "sentence",
        sentences,
        lambda rows: vlm.encoder.encode_sentences([sentences[r] for r in rows]),
    )
    safe_index = attribute_index.clamp_min(0)
    features = sent_feats[safe_index] * attribute_mask[..., None]  # (k, a, d), zero padding
    return sentences, attribute_index, attribute_mask, features


def _stats(
    items: Sequence[ImageItem],
    missing: set[str],
    n_kept: int,
    n_encoded: int,
    n_forward: int,
    cache: FeatureCache | None,
    start: float,
) -> dict:
    """What the run cost: images kept, cache hits, images encoded, forward passes, seconds."""
    return {
        "images": n_kept,
        "cache_hits": sum(1 for it in items if it.sha256 not in missing),
        "encoded": n_encoded,
        "forward_passes": n_forward,
        "cache_enabled": bool(cache is not None and cache.enabled),
        "seconds": time.perf_counter() - start,
    }


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
        From ``core.data.images.load_image_set``; folder / CSV labels become ``features.labels``.
    class_names : sequence of str, length k >= 2
    settings : ExtractSettings
    cache : FeatureCache or None
        None disables the on-disk cache.
    progress : callable ``progress(done, total, desc)``, optional

    Raises
    ------
    ValueError
        Fewer than 2 classes, no decodable image, unknown model keys.
    core.models.hub.WeightsUnavailableError
        A model whose features are not cached has no weights on this machine.
    """
    settings = settings or ExtractSettings()
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise ValueError(f"classes: expected at least 2 classes, got {len(class_names)}.")
    start = time.perf_counter()
    report = progress or (lambda done, total, desc: None)
    vlm, vfm = _load_models(settings)
    items = list(image_set.items)
    if not items:
        raise ValueError("images: no usable image in the upload; see the skipped files for why.")

    # 1. Cache lookups (no decoding, no model), then 2. decode and encode only the misses.
    needs = _image_needs(settings, vlm, vfm)
    missing = _cache_lookups(needs, items, cache)
    todo = list({it.sha256: it for it in items if it.sha256 in missing}.values())
    bad = _encode_misses(needs, todo, cache, report)
    kept = [it for it in items if it.sha256 not in bad]
    skipped = list(image_set.skipped)
    skipped += [SkippedFile(it.name, bad[it.sha256]) for it in items if it.sha256 in bad]
    if not kept:
        raise NoImagesError(  # a ValueError that carries what was skipped and why
            "images: none of the uploaded images could be decoded; see the skipped files.",
            skipped,
        )
    image_features = {name: _stacked(need, kept) for name, need in needs.items()}

    # 3. Text prototypes (and LaZSL attribute sentences), cached by their exact prompts.
    report(0, 1, "encoding class prompts")
    text = _text_features(vlm, cache, class_names, tuple(settings.templates))
    attributes = attribute_mask = attribute_index = None
    sentences: list[str] = []
    boxes = None
    if settings.n_crops > 0:
        sentences, attribute_index, attribute_mask, attributes = _attribute_features(
            vlm, cache, class_names, settings.attributes
        )
        boxes = _crop_boxes_from_sizes(kept, settings.n_crops, settings.crop_scale)
    labels, warnings = None, []
    if any(it.label is not None for it in kept):
        labels, warnings = resolve_labels([it.label for it in kept], class_names)
    n_forward = _forward_passes(needs)
    stats = _stats(items, missing, len(kept), len(todo) - len(bad), n_forward, cache, start)
    report(1, 1, "features ready")
    return Extraction(
        features=FeatureSet(
            vlm_image=image_features["vlm_image"],
            text=text,
            vfm_image=image_features.get("vfm_image"),
            crops=image_features.get("crops"),
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
