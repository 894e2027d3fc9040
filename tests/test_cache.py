"""Feature cache and the pipeline's one cache-or-compute (core.pipeline.features): a miss then
hits with zero forward passes, only the misses computed, corruption recovery, keys, the on-disk
layout an existing cache relies on, no cache."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.models import get_spec, load_encoder
from core.models.tiny import tiny_test_models
from core.pipeline.cache import (
    FeatureCache,
    default_cache_dir,
    feature_shape,
    kind_key,
    model_key,
)
from core.pipeline.features import FeatureRequest, cached_features, text_hashes

TINY = tiny_test_models()
ATOL = 1e-5


@dataclass(frozen=True)
class Item:
    """Stand-in for a core.data.images image item: content hash, name and the decoded image."""

    sha256: str
    name: str
    image: Image.Image


@pytest.fixture(scope="module")
def items() -> list[Item]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(6):
        arr = rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)
        out.append(Item(hashlib.sha256(arr.tobytes()).hexdigest(), f"img{i}.png",
                        Image.fromarray(arr)))
    return out


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(TINY["clip_vit"], device="cpu")


def _compute(encoder, items, seen=None):
    """``compute(rows)`` for cached_features: global features of items[rows], batches of 4."""

    def compute(rows):
        if seen is not None:
            seen.extend(rows)
        return encoder.encode_images([items[r].image for r in rows], batch_size=4)

    return compute


def _run(cache, encoder, items, kind="global", compute=None, **kw):
    """cached_features over ``items`` and the forward passes it cost."""
    before = encoder.n_forward
    feats = cached_features(cache, encoder, kind, [it.sha256 for it in items],
                            compute or _compute(encoder, items), **kw)
    return feats, encoder.n_forward - before


def test_miss_then_hit_runs_zero_forward_passes(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    first, passes = _run(cache, encoder, items)
    assert passes == 2 and (cache.n_hits, cache.n_misses, cache.n_written) == (0, 6, 6)
    second, passes = _run(cache, encoder, items)
    assert passes == 0 and cache.n_hits == len(items)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    torch.testing.assert_close(first, encoder.encode_images([it.image for it in items]),
                               atol=ATOL, rtol=0)
    # A fresh cache object on the same folder (a new process) hits too, in any order.
    third, passes = _run(FeatureCache(tmp_path), encoder, items[::-1])
    assert passes == 0
    torch.testing.assert_close(third, first.flip(0), atol=0, rtol=0)


def test_entries_written_before_still_hit(tmp_path, encoder, items):
    """The on-disk layout and keys an existing cache was written with:
    <root>/<model key>/<kind key>/<sha[:2]>/<sha>.safetensors, tensor "features", metadata."""
    mkey = model_key(encoder.spec)
    feats = torch.nn.functional.normalize(torch.randn(len(items), 32), dim=-1)
    for item, row in zip(items, feats):
        path = tmp_path / mkey / "global" / item.sha256[:2] / f"{item.sha256}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": row.clone()}, str(path),
                  metadata={"model": mkey, "kind": "global", "sha256": item.sha256})
    got, passes = _run(FeatureCache(tmp_path), encoder, items)
    assert passes == 0
    torch.testing.assert_close(got, feats, atol=0, rtol=0)
    # Text rows are keyed by the sha256 of the JSON list [kind, text].
    assert text_hashes("text", ["x"]) == [hashlib.sha256(b'["text", "x"]').hexdigest()]
    assert text_hashes("sentence", ["x"]) != text_hashes("text", ["x"])


def test_partial_hits_compute_only_the_misses_in_order(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    _run(cache, encoder, items[:3])
    mixed = [items[4], items[0], items[4], items[5], items[1]]  # a duplicate, hits and misses
    seen = []
    res, _ = _run(cache, encoder, mixed, compute=_compute(encoder, mixed, seen))
    assert seen == [0, 3]  # the first occurrence of each missing image, in input order
    assert res.shape == (5, 32)
    torch.testing.assert_close(res[0], res[2], atol=0, rtol=0)
    direct = encoder.encode_images([it.image for it in mixed])
    torch.testing.assert_close(res, direct, atol=ATOL, rtol=0)


def test_request_filled_chunk_by_chunk(tmp_path, encoder, items):
    """How extraction uses it: one lookup, the misses stored a few at a time, rows stacked."""
    cache = FeatureCache(tmp_path)
    _run(cache, encoder, items[:2])
    hashes = [it.sha256 for it in items]
    request = FeatureRequest(cache, encoder, "global", hashes + hashes[:1])
    assert request.missing == hashes[2:] and set(request.found) == set(hashes[:2])
    for chunk in (items[2:4], items[4:]):
        request.store([it.sha256 for it in chunk],
                      encoder.encode_images([it.image for it in chunk]))
    stacked = request.stack(hashes[::-1])
    assert stacked.dtype == torch.float32 and stacked.shape == (6, 32)
    torch.testing.assert_close(stacked, encoder.encode_images([it.image for it in items[::-1]]),
                               atol=ATOL, rtol=0)
    assert FeatureRequest(FeatureCache(tmp_path), encoder, "global", hashes).missing == []


def test_plain_hash_strings_and_patch_kinds(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    first, _ = _run(cache, encoder, items, "dense",
                    lambda rows: encoder.encode_dense([items[r].image for r in rows]))
    assert first.shape == (len(items), 4, 4, 32)
    again, passes = _run(cache, encoder, items, "dense", lambda rows: 1 / 0)
    assert passes == 0
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_truncated_entry_is_deleted_and_recomputed(tmp_path, encoder, items, caplog):
    cache = FeatureCache(tmp_path)
    first, _ = _run(cache, encoder, items)
    victim = cache.path_for(model_key(encoder.spec), "global", items[2].sha256)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    seen = []
    res, passes = _run(cache, encoder, items, compute=_compute(encoder, items, seen))
    assert seen == [2] and passes == 1 and cache.n_corrupt == 1
    torch.testing.assert_close(res, first, atol=ATOL, rtol=0)
    assert "corrupt" in caplog.text
    assert _run(cache, encoder, items)[1] == 0


def test_wrong_shape_or_nan_entry_is_recomputed(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    first, _ = _run(cache, encoder, items)
    mkey = model_key(encoder.spec)
    for item, bad in ((items[0], torch.zeros(31)), (items[1], torch.full((32,), float("nan")))):
        path = cache.path_for(mkey, "global", item.sha256)
        save_file({"features": bad}, str(path),
                  metadata={"model": mkey, "kind": "global", "sha256": item.sha256})
    seen = []
    res, _ = _run(cache, encoder, items, compute=_compute(encoder, items, seen))
    assert cache.n_corrupt == 2 and seen == [0, 1]
    torch.testing.assert_close(res, first, atol=ATOL, rtol=0)


def test_unwritable_cache_warns_once_and_still_returns_features(tmp_path, encoder, items):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = FeatureCache(blocker / "cache")  # mkdir fails, even for root
    with pytest.warns(RuntimeWarning, match="feature cache disabled") as record:
        res, _ = _run(cache, encoder, items)
        again, passes = _run(cache, encoder, items)
    assert len([w for w in record if "feature cache" in str(w.message)]) == 1
    assert not cache.enabled and res.shape == (len(items), 32)
    assert passes > 0 and cache.n_hits == 0
    torch.testing.assert_close(again, res, atol=0, rtol=0)


def test_no_cache_computes_everything(encoder, items):
    seen = []
    res, passes = _run(None, encoder, items + items[:1], compute=_compute(encoder, items, seen))
    assert seen == list(range(len(items))) and passes > 0 and res.shape == (7, 32)
    torch.testing.assert_close(res[-1], res[0], atol=0, rtol=0)


def test_preprocessing_or_crop_settings_change_misses(tmp_path, encoder, items):
    """A new key, not a stale hit: features move with preprocessing and crop settings."""
    cache = FeatureCache(tmp_path)
    hashes = [it.sha256 for it in items]
    _run(cache, encoder, items)
    other = SimpleNamespace(spec=replace(encoder.spec, mean=(0.5, 0.5, 0.5)))
    assert FeatureRequest(cache, other, "global", hashes).missing == hashes
    assert FeatureRequest(cache, encoder, "global", hashes).missing == []
    crops = {"n_crops": 2, "scale": [0.6, 0.9]}
    request = FeatureRequest(cache, encoder, "crops", hashes, settings=crops)
    assert request.expected_shape == (3, 32)
    request.store(hashes, torch.nn.functional.normalize(torch.randn(6, 3, 32), dim=-1))
    assert FeatureRequest(cache, encoder, "crops", hashes, settings=crops).missing == []
    wider = dict(crops, scale=[0.5, 0.9])
    assert FeatureRequest(cache, encoder, "crops", hashes, settings=wider).missing == hashes


def test_keys_follow_weights_preprocessing_and_settings():
    spec = get_spec("clip-vit-b16")
    assert model_key(spec) == model_key(replace(spec))  # deterministic
    assert model_key(spec).startswith("clip-vit-b16-")
    variants = [replace(spec, mean=(0.5, 0.5, 0.5)), replace(spec, pretrained="laion2b_s34b_b88k"),
                replace(spec, interpolation="bilinear"), replace(spec, resize_size=256),
                replace(spec, quick_gelu=False), replace(spec, image_size=192, resize_size=192)]
    assert len({model_key(v).split("-")[-1] for v in [spec, *variants]}) == 1 + len(variants)
    assert model_key(replace(spec, display_name="renamed")) == model_key(spec)
    crops_a = kind_key("crops", {"n_crops": 16, "scale": (0.6, 0.9), "seed": 0})
    crops_b = kind_key("crops", {"n_crops": 32, "scale": (0.6, 0.9), "seed": 0})
    assert crops_a != crops_b and kind_key("global") == "global"
    assert feature_shape(spec, "crops", {"n_crops": 16}) == (17, 512)
    assert feature_shape(spec, "dense") == (14, 14, 512)
    assert feature_shape(get_spec("dinov2-base"), "patches") == (16, 16, 768)


def test_bad_names_and_bad_computed_features_are_rejected(tmp_path, encoder):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        cache.path_for("m", "global", "../../etc/passwd")
    with pytest.raises(ValueError, match="kind"):
        kind_key("../x")
    with pytest.raises(ValueError, match="sha256"):
        cached_features(cache, encoder, "global", ["not-a-hash"], lambda rows: torch.zeros(1, 32))
    with pytest.raises(ValueError, match="one row per computed item"):
        cached_features(cache, encoder, "global", ["ab" * 32], lambda rows: torch.zeros(2, 32))
    with pytest.raises(ValueError, match="per-item shape"):
        cached_features(cache, encoder, "global", ["cd" * 32], lambda rows: torch.zeros(1, 7))
    assert cache.n_written == 0  # nothing malformed reached the disk


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "feat"))
    assert default_cache_dir() == tmp_path / "feat"
    assert FeatureCache().root == tmp_path / "feat"
    monkeypatch.delenv("FUSIONLAB_CACHE_DIR")
    assert str(default_cache_dir()).endswith("fusionlab/features")


def test_thousand_cached_entries_load_without_decoding_or_forward(tmp_path, encoder):
    """A cached rerun of 1,000 images reads features only (no decode, no forward). Its speed
    (DESIGN target < 2 s) is measured by benchmarks/encode.py, not here."""
    cache = FeatureCache(tmp_path)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    generator = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(1000, 32, generator=generator), dim=-1)
    cache.put_many(model_key(encoder.spec), "global", dict(zip(hashes, feats)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cached_features(cache, encoder, "global", hashes, lambda rows: 1 / 0)
    assert cache.n_hits == 1000
    torch.testing.assert_close(res, feats, atol=0, rtol=0)
