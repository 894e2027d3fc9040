"""Cache-or-compute: features read from the on-disk cache, computed only for the misses.

This is the one place the pipeline reads and fills the feature cache (``core.pipeline.cache``):
extraction (global image features, LaZSL crops, class prompts, attribute sentences) and
segmentation (dense CLIP and VFM patch features) all go through :class:`FeatureRequest`.

- :class:`LazyEncoder` loads a model on first use, so a fully cached run never touches its weights
  (nor needs them).
- :class:`FeatureRequest` is one feature kind of one model over a list of content hashes: it looks
  them up once, takes the features computed for the misses (in one go, or chunk by chunk while
  the caller decodes images a few at a time) and writes them back, then stacks the rows in order.
- :func:`cached_features` is the whole round trip in one call, for callers that can compute every
  miss at once.
- :func:`text_hashes` keys text features by the exact text encoded (what images key by content).

Cache layout and keys are the cache's: ``model_key(spec)``, ``kind_key(kind, settings)`` and the
row's sha256, so an entry written by one caller is a hit for every other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from core.models import get_spec, load_encoder, one_time_setup, resolve_device, resolve_precision
from core.pipeline.cache import FeatureCache, feature_shape, kind_key, model_key


class LazyEncoder:
    """Loads the model on first use, so fully cached runs never touch the weights.

    ``on_setup(note)``, optional: called just before a load that has slow one-time work to do
    first (``core.models.one_time_setup``: the int8 ONNX export of "onnx-int8"), with the words
    for a progress line, so a caller can say why nothing moves for a while.
    """

    def __init__(self, key: str, device: str | None, *, precision: str = "fp32",
                 on_setup: Callable[[str], None] | None = None):
        self.spec = get_spec(key)
        self._device = device
        # "auto" is resolved now: the cache key (before any load) needs the real precision.
        self.precision = resolve_precision(self.spec, precision, resolve_device(device))
        self._on_setup = on_setup
        self._encoder = None
        self._baseline = 0

    @property
    def encoder(self):
        if self._encoder is None:
            note = one_time_setup(self.spec, self.precision, self._device)
            if note is not None and self._on_setup is not None:
                self._on_setup(note)
            self._encoder = load_encoder(self.spec.key, device=self._device,
                                         precision=self.precision)
            # Loaded models are shared by every call in the process: count from here.
            self._baseline = int(getattr(self._encoder, "n_forward", 0))
        return self._encoder

    @property
    def n_forward(self) -> int:
        """Forward passes (batches, images and text) run through this wrapper."""
        if self._encoder is None:
            return 0
        return int(getattr(self._encoder, "n_forward", 0)) - self._baseline


def text_hashes(kind: str, texts: Sequence[str]) -> list[str]:
    """Cache keys of text features: the sha256 of ``[kind, text]`` (the exact text encoded)."""
    return [hashlib.sha256(json.dumps([kind, t], sort_keys=True).encode()).hexdigest()
            for t in texts]


class FeatureRequest:
    """One feature kind of one model for a list of content hashes, read from the cache first.

    Parameters
    ----------
    cache : FeatureCache or None
        None computes everything and stores nothing.
    model : LazyEncoder or Encoder
        Only ``model.spec`` and ``model.precision`` are used here (the cache key); the caller's
        compute runs the model.
    kind : str
        "global", "crops", "dense", "patches", "text", "sentence", ...
    hashes : sequence of str, length n
        sha256 of each row's content (``ImageItem.sha256``, or :func:`text_hashes`); duplicates
        share one entry.
    settings : mapping, optional
        Settings that change the features of this kind (crop count and scale); part of the key.
    expected_shape : tuple of int, optional
        Per-row shape; defaults to ``feature_shape(model.spec, kind, settings)`` (None: any shape).
        An entry of another shape, non-finite or truncated is deleted and counted as missing.

    Attributes
    ----------
    found : dict sha -> Tensor
        Features known so far: the cache hits, then whatever :meth:`store` added.
    missing : list of str
        Unique hashes the cache lacked at lookup, in input order (every hash without a cache).
    """

    def __init__(
        self,
        cache: FeatureCache | None,
        model,
        kind: str,
        hashes: Sequence[str],
        *,
        settings: Mapping | None = None,
        expected_shape: tuple[int, ...] | None = None,
    ):
        self.cache = cache
        self.kind = kind
        self.model_key = model_key(model.spec, getattr(model, "precision", "fp32"))
        self.kind_key = kind_key(kind, settings)
        if expected_shape is None:
            expected_shape = feature_shape(model.spec, kind, settings)
        self.expected_shape = None if expected_shape is None else tuple(expected_shape)
        if cache is None:
            self.found: dict[str, Tensor] = {}
            self.missing: list[str] = list(dict.fromkeys(hashes))
        else:
            self.found, self.missing = cache.get_many(
                self.model_key, self.kind_key, hashes, expected_shape=self.expected_shape
            )

    def __repr__(self) -> str:
        return (f"FeatureRequest({self.model_key}/{self.kind_key}: {len(self.found)} known, "
                f"{len(self.missing)} missing at lookup)")

    def store(self, hashes: Sequence[str], features: Tensor) -> None:
        """Keep ``features`` (one row per hash, in order) and write them to the cache."""
        n = len(hashes)
        if not isinstance(features, Tensor) or features.ndim < 1 or len(features) != n:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise ValueError(
                f"{self.kind} features: expected a Tensor with one row per computed item ({n}), "
                f"got {got}."
            )
        if self.expected_shape is not None and tuple(features.shape[1:]) != self.expected_shape:
            raise ValueError(
                f"{self.kind} features of {self.model_key}: expected per-item shape "
                f"{self.expected_shape}, got {tuple(features.shape[1:])}."
            )
        new = {sha: features[i] for i, sha in enumerate(hashes)}
        if self.cache is not None:
            self.cache.put_many(self.model_key, self.kind_key, new)
        self.found.update(new)

    def stack(self, hashes: Sequence[str]) -> Tensor:
        """The features of ``hashes`` in order: float32 Tensor, shape (n, ...)."""
        return torch.stack([self.found[sha] for sha in hashes]).to(torch.float32)


def cached_features(
    cache: FeatureCache | None,
    model,
    kind: str,
    hashes: Sequence[str],
    compute: Callable[[list[int]], Tensor],
    *,
    settings: Mapping | None = None,
    expected_shape: tuple[int, ...] | None = None,
) -> Tensor:
    """Features for ``hashes`` (one row each): read the cache, compute the misses at once.

    ``compute(rows)`` gets the positions in ``hashes`` of the first occurrence of each missing
    hash (input order) and returns their features in that order, Tensor (len(rows), ...); they are
    written to the cache. Other parameters as :class:`FeatureRequest`.

    Returns
    -------
    Tensor, shape (len(hashes), ...), float32
    """
    request = FeatureRequest(
        cache, model, kind, hashes, settings=settings, expected_shape=expected_shape
    )
    if request.missing:
        first = {sha: i for i, sha in reversed(list(enumerate(hashes)))}
        request.store(request.missing, compute([first[sha] for sha in request.missing]))
    return request.stack(hashes)
