"""LaZSL's attribute sentences under another recipe, re-encoded without touching an image.

The recipe of LaZSL's sentences (``core.methods.zeroshot.descriptor_sentence``: "paper" tests the
descriptor's first word, "official" its first letters, as the public code) is an extraction
setting (``ExtractSettings.lazsl_recipe``), because the sentences are encoded by the VLM's text
tower. Switching it needs the text side only: :func:`with_lazsl_recipe` rebuilds the sentences and
encodes them (cached by their exact text, so switching back costs nothing); every image feature,
crop and box is kept as it is.
"""

from __future__ import annotations

from dataclasses import replace

from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import Extraction, _attribute_features
from core.pipeline.features import LazyEncoder


def with_lazsl_recipe(extraction: Extraction, recipe: str, *,
                      cache: FeatureCache | None = None) -> Extraction:
    """``extraction`` with LaZSL's attribute sentences built under ``recipe`` ("paper" or
    "official") and encoded by its first VLM's text tower; image features are untouched.

    Returns ``extraction`` with new ``attribute_sentences``, ``attribute_index`` (k, a),
    ``features.attributes`` (k, a, d), ``features.attribute_mask`` (k, a) and
    ``settings.lazsl_recipe``. Without attribute features (LaZSL was not run) only the setting
    changes. Raises ValueError for an unknown recipe.
    """
    settings = replace(extraction.settings, lazsl_recipe=recipe)
    if extraction.features.attributes is None:
        return replace(extraction, settings=settings)
    vlm = LazyEncoder(settings.vlm, settings.device, precision=settings.precision)
    sentences, index, mask, features = _attribute_features(
        vlm, cache, tuple(extraction.class_names), settings.attributes, recipe)
    return replace(
        extraction, settings=settings, attribute_sentences=tuple(sentences),
        attribute_index=index,
        features=replace(extraction.features, attributes=features, attribute_mask=mask))
