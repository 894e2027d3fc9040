"""Features cached per row, computed only for the misses, by lazily loaded models.

:class:`LazyEncoder` loads a model on first use, so a fully cached run never touches its weights
(nor needs them); :func:`cached_rows` reads a batch of features from the on-disk cache and computes
only the missing rows; :func:`cached_texts` does the same for prompts, keyed by the hash of the
exact text encoded. Used by ``core.pipeline.extraction`` (image and text features) and
``core.pipeline.segmentation`` (patch features).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import torch
from torch import Tensor

from core.models import get_spec, load_encoder
from core.pipeline.cache import FeatureCache, feature_shape, kind_key, model_key


class LazyEncoder:
    """Loads the model on first use, so fully cached runs never touch the weights."""

    def __init__(self, key: str, device: str | None):
        self.spec = get_spec(key)
        self._device = device
        self._encoder = None
        self._baseline = 0

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_encoder(self.spec.key, device=self._device)
            # Loaded models are shared by every call in the process: count from here.
            self._baseline = int(getattr(self._encoder, "n_forward", 0))
        return self._encoder

    @property
    def n_forward(self) -> int:
        """Forward passes (batches, images and text) run through this wrapper."""
        if self._encoder is None:
            return 0
        return int(getattr(self._encoder, "n_forward", 0)) - self._baseline


def _text_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_rows(
    cache: FeatureCache | None,
    model: LazyEncoder,
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


def cached_texts(
    model: LazyEncoder,
    cache: FeatureCache | None,
    kind: str,
    keys: list[str],
    compute: Callable[[list[int]], Tensor],
) -> Tensor:
    """Text features cached like image features, keyed by the hash of what was encoded."""
    return cached_rows(cache, model, kind, [_text_hash(kind, key) for key in keys], compute)
