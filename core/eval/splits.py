"""A benchmark split's features, read and encoded ``chunk_size`` files at a time (see
``core.eval.harness`` on memory), and the train pools the inductive methods are fitted on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from core.config import EVAL_CHUNK_SIZE
from core.data import ImageSet, SkippedFile
from core.data.benchmarks import (
    BenchmarkData,
    DatasetError,
    SplitEntry,
    balanced_subset,
    iter_chunks,
)
from core.methods.run import FeatureSet
from core.pipeline.progress import Progress


@dataclass(frozen=True)
class SplitFeatures:
    """Features of one split. ``features.labels`` come from the split's entries (-1 never)."""

    features: FeatureSet
    skipped: tuple[SkippedFile, ...]
    seconds: float
    cache_hits: int
    encoded: int

    def describe(self) -> str:
        return f"{self.seconds:.1f} s ({self.cache_hits:,} cached, {self.encoded:,} encoded)"


def extract_split(entries: Sequence[SplitEntry], class_names, settings, *, cache=None,
                  chunk_size: int = EVAL_CHUNK_SIZE, progress: Progress | None = None,
                  desc: str = "images", prefetch=None) -> SplitFeatures:
    """Features of a split, ``chunk_size`` files at a time (see the module note on memory).

    ``prefetch(paths, settings)``, when given, first puts the split's image features into the
    store ``cache`` reads (``core.pipeline.distributed.prefetcher``: e.g. on Ray); what it
    leaves out is computed here as usual.
    """
    from core.pipeline.extraction import extract

    if prefetch is not None and entries:
        prefetch([e.path for e in entries], settings)
    start, parts, skipped = time.perf_counter(), [], []
    label_of = {e.name: e.label for e in entries}
    done = hits = encoded = 0
    for items, bad in iter_chunks(entries, chunk_size):
        skipped += bad
        done += len(items) + len(bad)
        if items:
            try:
                ex = extract(ImageSet(tuple(items)), class_names, settings, cache=cache)
            except ValueError as exc:  # every image of the chunk failed to decode
                if "could be decoded" not in str(exc):
                    raise
                skipped += [SkippedFile(it.name, "cannot decode") for it in items]
            else:
                skipped += list(ex.skipped)
                hits += ex.stats.get("cache_hits", 0)
                encoded += ex.stats.get("encoded", 0)
                parts.append((ex.features, [label_of[it.name] for it in ex.items]))
        if progress:
            progress(done, len(entries), desc)
    if not parts:
        raise DatasetError(f"{desc}: none of the {len(entries)} images could be read or decoded "
                           f"(e.g. {skipped[0].name}: {skipped[0].reason})." if skipped else
                           f"{desc}: no images.")

    def cat(name):
        tensors = [getattr(f, name) for f, _ in parts]
        return None if tensors[0] is None else torch.cat(tensors)

    def cat_each(name):  # a tuple of per-image tensors (further VLMs / VFMs), each concatenated
        return tuple(torch.cat(ts) for ts in zip(*(getattr(f, name) for f, _ in parts)))

    features = replace(parts[0][0], vlm_image=cat("vlm_image"), vfm_image=cat("vfm_image"),
                       crops=cat("crops"), extra_vlm_images=cat_each("extra_vlm_images"),
                       extra_vfm_images=cat_each("extra_vfm_images"),
                       labels=torch.tensor([lab for _, labs in parts for lab in labs]))
    return SplitFeatures(features, tuple(skipped), time.perf_counter() - start, hits, encoded)


def train_pool(data: BenchmarkData, settings, shots: int, *, seed: int,
               max_images: int | None = None, chunk_size: int = EVAL_CHUNK_SIZE, cache=None,
               progress: Progress | None = None, desc: str = "train",
               prefetch=None) -> SplitFeatures:
    """The train split's features: ``shots`` unlabeled images per class (``seed``; the labels
    only pick a balanced pool, as GPUA* does) or all of it (0), then at most ``max_images``."""
    train: tuple[SplitEntry, ...] = data.splits.get("train", ())
    if shots > 0:
        train = balanced_subset(train, per_class=shots, seed=seed)
    if max_images:
        train = balanced_subset(train, max_images, seed=seed)
    return extract_split(train, data.class_names, settings, cache=cache, chunk_size=chunk_size,
                         progress=progress, desc=desc, prefetch=prefetch)
