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

from core.config import (
    BATCH_SIZE,
    DEFAULT_TEMPLATE,
    DEFAULT_VFM,
    DEFAULT_VLM,
    LAZSL_CROP_SCALE,
    PRECISION,
)
from core.data import ImageItem, ImageSet, NoImagesError, SkippedFile, decode_many
from core.methods.lazsl import crop_boxes, seed_from_hash
from core.methods.run import FeatureSet
from core.methods.zeroshot import (
    descriptor_sentences,
    ensemble_text_features,
    format_prompts,
)
from core.models.load import check_precision, resolve_device
from core.pipeline.cache import FeatureCache
from core.pipeline.features import FeatureRequest, LazyEncoder, cached_features, text_hashes
from core.pipeline.progress import NotedProgress, WorkProgress

Progress = Callable[[int, int, str], None]

DECODE_CHUNK = 64  # images decoded and encoded together: bounds the memory held by decoded images
DECODE_MAX_SIDE = 1024  # LaZSL's smallest crop (0.6 x short side) still gets >= 224 px


@dataclass(frozen=True)
class ExtractSettings:
    """What to compute (and what the feature cache is keyed on); defaults from ``core.config``.

    vlm : registry key of the vision-language model (image + text towers).
    vfm : registry key of the vision-only model, a VLM key (its image tower), or None (no VFM: the
          VLM's own image features stand in, the paper's "CLIP-only" row).
    templates : prompt templates with "{}"; several are ensembled.
    n_crops : LaZSL crops per image; 0 skips the LaZSL features (entry points that run LaZSL
              pass ``core.config.LAZSL_CROPS``, or the paper's ``LAZSL_CROPS_PAPER``).
    crop_scale : LaZSL crop side range as fractions of the short side.
    attributes : optional ``{class: [descriptor, ...]}``; classes without any use their name.
    precision : "fp32" (exact), "int8" (CPU dynamic quantisation), "bf16" (CUDA, or a CPU:
          fast with AMX / AVX-512 BF16) or "fp16" (CUDA); see
          ``core.models.load_encoder``. Part of the cache key.
    extra_vlms, extra_vfms : further models for OTFusion, which fuses any number of each (e.g.
          SigLIP beside CLIP; DINOv3 beside DINOv2); the baseline, GPUA and LaZSL use the first.
    lazsl_recipe : the attribute sentences' connective rule ("paper" or "official", see
          ``core.methods.zeroshot.descriptor_sentence``).
    """

    vlm: str = DEFAULT_VLM
    vfm: str | None = DEFAULT_VFM
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    n_crops: int = 0
    crop_scale: tuple[float, float] = LAZSL_CROP_SCALE
    attributes: Mapping[str, Sequence[str]] | None = field(default=None, hash=False, compare=False)
    batch_size: int = BATCH_SIZE
    device: str | None = None
    precision: str = PRECISION
    extra_vlms: tuple[str, ...] = ()
    extra_vfms: tuple[str, ...] = ()
    lazsl_recipe: str = "paper"

    @property
    def vlms(self) -> tuple[str, ...]:
        """Every VLM key, the first one first."""
        return (self.vlm, *self.extra_vlms)

    @property
    def vfms(self) -> tuple[str, ...]:
        """Every VFM key (empty without a VFM)."""
        return () if self.vfm is None else (self.vfm, *self.extra_vfms)


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
    precisions : dict registry key -> str
        The precision each model's features were computed in (``settings.precision``, "auto"
        resolved per model by ``core.models.resolve_precision``), VLMs first.
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
    precisions: dict = field(default_factory=dict)

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


def _load_models(settings: ExtractSettings, on_setup: Callable[[str], None] | None = None
                 ) -> tuple[list[LazyEncoder], list[LazyEncoder]]:
    """Every VLM and every VFM (one :class:`LazyEncoder` per distinct key, shared).

    Nothing is loaded yet (see :class:`LazyEncoder`, which calls ``on_setup`` before a slow
    one-time preparation). Raises ValueError for an unknown key, a vision-only model given as a
    VLM, extra VFMs without a first one, or a model named twice.
    """
    check_precision(settings.precision, resolve_device(settings.device))  # before any cache hit
    if settings.extra_vfms and settings.vfm is None:
        raise ValueError("vfm: extra VFMs were given without a first VFM; name the VFMs in order "
                         "(e.g. dinov2-large, dinov3-vitl16).")
    for kind, keys in (("vlm", settings.vlms), ("vfm", settings.vfms)):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"{kind}: {', '.join(repeated)} named twice; list each model once.")
    encoders: dict[str, LazyEncoder] = {}

    def encoder(key: str) -> LazyEncoder:
        if key not in encoders:
            encoders[key] = LazyEncoder(key, settings.device, precision=settings.precision,
                                        on_setup=on_setup)
        return encoders[key]

    vlms = [encoder(key) for key in settings.vlms]
    for key, vlm in zip(settings.vlms, vlms):
        if vlm.spec.kind != "vlm":
            raise ValueError(
                f"vlm: '{key}' is a vision-only model; pick a vision-language model (CLIP or "
                "SigLIP) for the text side, and list it as a VFM instead."
            )
    return vlms, [encoder(key) for key in settings.vfms]


# (decoded images, their items, per-batch progress) -> their features, Tensor (n, ...)
_ImageCompute = Callable[[list, list[ImageItem], Progress], Tensor]


def _image_requests(
    settings: ExtractSettings,
    vlms: Sequence[LazyEncoder],
    vfms: Sequence[LazyEncoder],
    cache: FeatureCache | None,
    hashes: list[str],
) -> dict[str, tuple[FeatureRequest, _ImageCompute, int]]:
    """The per-image features, looked up in the cache, with how to compute the misses and the
    forward-pass views per image (1, or 1 + n_crops).

    In the order they are computed for each chunk: "vlm 0", "vlm 1", ... (every VLM's global
    features), "vfm 0", ... (every VFM's), then "crops" (LaZSL, first VLM, keyed on the crop
    settings) when ``settings.n_crops > 0``. A model listed as both VLM and VFM is one request.
    """
    vlm = vlms[0]
    batch_size = settings.batch_size

    def global_features(model: LazyEncoder) -> tuple[FeatureRequest, _ImageCompute, int]:
        return (
            FeatureRequest(cache, model, "global", hashes),
            lambda ims, its, progress: model.encoder.encode_images(
                ims, batch_size=batch_size, progress=progress),
            1,
        )

    requests = {f"vlm {i}": global_features(m) for i, m in enumerate(vlms)}
    for i, m in enumerate(vfms):  # a VLM's image tower as a VFM reuses its request
        same = [name for name, j in zip(requests, vlms) if j is m]
        requests[f"vfm {i}"] = requests[same[0]] if same else global_features(m)
    if settings.n_crops > 0:
        crop_settings = {"n_crops": int(settings.n_crops), "scale": list(settings.crop_scale)}

        def compute_crops(ims, its, progress):
            boxes = _crop_boxes_from_sizes(its, settings.n_crops, settings.crop_scale)
            # Decoded images may be downscaled (DECODE_MAX_SIDE): scale boxes to their size.
            scale = torch.tensor(
                [[im.width / it.size[0], im.height / it.size[1]] * 2 for im, it in zip(ims, its)]
            )
            return vlm.encoder.encode_crops(ims, boxes * scale[:, None, :], batch_size=batch_size,
                                            progress=progress)

        request = FeatureRequest(cache, vlm, "crops", hashes, settings=crop_settings)
        requests["crops"] = (request, compute_crops, 1 + int(settings.n_crops))
    return requests


def _forward_passes(models: Sequence[LazyEncoder]) -> int:
    """Forward passes run so far by ``models``, each counted once (the VLM serves global
    features, crops and text)."""
    unique = {id(m): m for m in models}
    return sum(m.n_forward for m in unique.values())


def _encode_misses(
    requests: Mapping[str, tuple[FeatureRequest, _ImageCompute, int]],
    todo: list[ImageItem],
    report: Progress,
) -> dict[str, str]:
    """Decode only the images some request lacks, ``DECODE_CHUNK`` at a time, and give each
    request the features it lacks for them (written to the cache as each chunk is done).

    Progress counts images through a forward pass (an image with M LaZSL crops counts 1 + M)
    and is reported after every batch of every encoder, with the time left; it ends at its total.
    Returns ``{sha256: why}`` for the images that could not be decoded.
    """
    def units(items: Sequence[ImageItem]) -> int:  # forward-pass views still to compute
        return sum(views for request, _, views in requests.values()
                   for it in items if it.sha256 not in request.found)

    work = WorkProgress(report, units(todo))
    bad: dict[str, str] = {}
    for start_i in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start_i : start_i + DECODE_CHUNK]
        work.advance(0, "decoding images")
        images, failures = decode_many(chunk, max_side=DECODE_MAX_SIDE)
        failed = {f.index for f in failures}
        bad.update((chunk[f.index].sha256, f.reason) for f in failures)
        work.drop(units([chunk[i] for i in failed]))
        ok_items = [it for i, it in enumerate(chunk) if i not in failed]
        for request, compute, _ in requests.values():
            want = [i for i, it in enumerate(ok_items) if it.sha256 not in request.found]
            if want:
                desc = f"encoding images ({request.kind}, {request.model_key.rsplit('-', 1)[0]})"
                feats = compute([images[i] for i in want], [ok_items[i] for i in want],
                                work.part(desc))
                request.store([ok_items[i].sha256 for i in want], feats)
    work.advance(0, "images encoded")
    return bad


def _text_features(
    vlm: LazyEncoder,
    cache: FeatureCache | None,
    class_names: tuple[str, ...],
    templates: tuple[str, ...],
) -> Tensor:
    """Class text prototypes (template-ensembled), cached by their exact prompts: (k, d)."""

    def compute(rows: list[int]) -> Tensor:
        prompts = format_prompts([class_names[r] for r in rows], templates)  # (k', t) strings
        flat = [p for per_class in prompts for p in per_class]
        emb = vlm.encoder.encode_sentences(flat)  # (k' t, d), L2-normalised
        return ensemble_text_features(emb.reshape(len(rows), len(templates), -1))

    keys = [json.dumps([c, templates]) for c in class_names]
    return cached_features(
        cache, vlm, "text", text_hashes("text", keys), compute,
        expected_shape=(vlm.spec.output_dim,),
    )


def _attribute_features(
    vlm: LazyEncoder,
    cache: FeatureCache | None,
    class_names: tuple[str, ...],
    attributes: Mapping[str, Sequence[str]] | None,
    recipe: str = "paper",
) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """LaZSL attribute sentences per class, each sentence encoded (and cached) once.

    Returns the sentences (s), attribute_index (k, a) long (-1 = padding), attribute_mask (k, a)
    and the features (k, a, d), zero on the padding.
    """
    sentences, attribute_index, attribute_mask = descriptor_sentences(
        dict(attributes or {}), class_names, recipe=recipe
    )
    sent_feats = cached_features(
        cache,
        vlm,
        "sentence",
        text_hashes("sentence", sentences),
        lambda rows: vlm.encoder.encode_sentences([sentences[r] for r in rows]),
        expected_shape=(vlm.spec.output_dim,),
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
    # A model's one-time preparation (the int8 ONNX export, ~40 s) is said in the progress line.
    report = NotedProgress(progress or (lambda done, total, desc: None))
    vlms, vfms = _load_models(settings, on_setup=report.note)
    vlm = vlms[0]
    items = list(image_set.items)
    if not items:
        raise ValueError("images: no usable image in the upload; see the skipped files for why.")

    # 1. Cache lookups (no decoding, no model), then 2. decode and encode only the misses.
    requests = _image_requests(settings, vlms, vfms, cache, [it.sha256 for it in items])
    unique = {id(r[0]): r for r in requests.values()}  # a shared request is computed once
    missing = {sha for request, _, _ in unique.values() for sha in request.missing}
    todo = list({it.sha256: it for it in items if it.sha256 in missing}.values())
    bad = _encode_misses(unique, todo, report)
    kept = [it for it in items if it.sha256 not in bad]
    skipped = list(image_set.skipped)
    skipped += [SkippedFile(it.name, bad[it.sha256]) for it in items if it.sha256 in bad]
    if not kept:
        raise NoImagesError(  # a ValueError that carries what was skipped and why
            "images: none of the uploaded images could be decoded; see the skipped files.",
            skipped,
        )
    kept_hashes = [it.sha256 for it in kept]
    stacked = {id(req): req.stack(kept_hashes) for req, _, _ in unique.values()}  # once each
    image_features = {name: stacked[id(req)] for name, (req, _, _) in requests.items()}

    # 3. Text prototypes (and LaZSL attribute sentences), cached by their exact prompts.
    report(0, 1, "encoding class prompts")
    texts = [_text_features(m, cache, class_names, tuple(settings.templates)) for m in vlms]
    attributes = attribute_mask = attribute_index = None
    sentences: list[str] = []
    boxes = None
    if settings.n_crops > 0:
        sentences, attribute_index, attribute_mask, attributes = _attribute_features(
            vlm, cache, class_names, settings.attributes, settings.lazsl_recipe
        )
        boxes = _crop_boxes_from_sizes(kept, settings.n_crops, settings.crop_scale)
    labels, warnings = None, []
    if any(it.label is not None for it in kept):
        labels, warnings = resolve_labels([it.label for it in kept], class_names)
    n_forward = _forward_passes([*vlms, *vfms])
    stats = _stats(items, missing, len(kept), len(todo) - len(bad), n_forward, cache, start)
    report(1, 1, "features ready")
    return Extraction(
        features=FeatureSet(
            vlm_image=image_features["vlm 0"],
            text=texts[0],
            vfm_image=image_features.get("vfm 0"),
            crops=image_features.get("crops"),
            attributes=attributes,
            attribute_mask=attribute_mask,
            labels=labels,
            extra_vlm_images=tuple(image_features[f"vlm {i}"] for i in range(1, len(vlms))),
            extra_texts=tuple(texts[1:]),
            extra_vfm_images=tuple(image_features[f"vfm {i}"] for i in range(1, len(vfms))),
            vlm_names=tuple(m.spec.display_name for m in vlms),
            vfm_names=tuple(m.spec.display_name for m in vfms),
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
        precisions={m.spec.key: m.precision for m in [*vlms, *vfms]},
    )
