"""Feature cache: a miss then hits with zero forward passes, corruption recovery, keys, no cache."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.models import get_spec, load_encoder
from core.models.tiny import tiny_test_models
from core.pipeline.cache import (
    CachedFeatures,
    FeatureCache,
    cached_encode,
    default_cache_dir,
    feature_shape,
    kind_key,
    model_key,
)

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


def _images(encoder):
    return lambda its: encoder.encode_images([it.image for it in its], batch_size=4)


def test_miss_then_hit_runs_zero_forward_passes(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    first = cached_encode(encoder, "global", items, _images(encoder), cache)
    assert isinstance(first, CachedFeatures)
    assert (first.n_hits, first.n_misses) == (0, len(items)) and first.n_forward == 2
    second = cached_encode(encoder, "global", items, _images(encoder), cache)
    assert (second.n_hits, second.n_misses, second.n_forward) == (len(items), 0, 0)
    torch.testing.assert_close(second.features, first.features, atol=0, rtol=0)
    torch.testing.assert_close(first.features, encoder.encode_images([it.image for it in items]),
                               atol=ATOL, rtol=0)
    # A fresh cache object on the same folder (a new process) hits too.
    third = cached_encode(encoder, "global", items[::-1], _images(encoder), FeatureCache(tmp_path))
    assert third.n_forward == 0
    torch.testing.assert_close(third.features, first.features.flip(0), atol=0, rtol=0)


def test_partial_hits_compute_only_the_misses_in_order(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    cached_encode(encoder, "global", items[:3], _images(encoder), cache)
    seen = []

    def compute(its):
        seen.extend(it.name for it in its)
        return _images(encoder)(its)

    mixed = [items[4], items[0], items[4], items[5], items[1]]  # a duplicate, hits and misses
    res = cached_encode(encoder, "global", mixed, compute, cache)
    assert seen == ["img4.png", "img5.png"]  # each missing image once, in input order
    assert (res.n_hits, res.n_misses) == (2, 2) and res.features.shape == (5, 32)
    torch.testing.assert_close(res.features[0], res.features[2], atol=0, rtol=0)
    direct = encoder.encode_images([it.image for it in mixed])
    torch.testing.assert_close(res.features, direct, atol=ATOL, rtol=0)


def test_plain_hash_strings_and_patch_kinds(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    by_hash = {it.sha256: it for it in items}
    hashes = list(by_hash)

    def dense(shas):
        return encoder.encode_dense([by_hash[s].image for s in shas])

    first = cached_encode(encoder, "dense", hashes, dense, cache)
    assert first.features.shape == (len(items), 4, 4, 32)
    again = cached_encode(encoder, "dense", hashes, dense, cache)
    assert again.n_forward == 0


def test_truncated_entry_is_deleted_and_recomputed(tmp_path, encoder, items, caplog):
    cache = FeatureCache(tmp_path)
    first = cached_encode(encoder, "global", items, _images(encoder), cache)
    victim = cache.path_for(model_key(encoder.spec), "global", items[2].sha256)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    res = cached_encode(encoder, "global", items, _images(encoder), cache)
    assert (res.n_hits, res.n_misses, res.n_corrupt) == (len(items) - 1, 1, 1)
    assert res.n_forward == 1
    torch.testing.assert_close(res.features, first.features, atol=ATOL, rtol=0)
    assert "corrupt" in caplog.text
    assert cached_encode(encoder, "global", items, _images(encoder), cache).n_forward == 0


def test_wrong_shape_or_nan_entry_is_recomputed(tmp_path, encoder, items):
    cache = FeatureCache(tmp_path)
    first = cached_encode(encoder, "global", items, _images(encoder), cache)
    mkey = model_key(encoder.spec)
    for item, bad in ((items[0], torch.zeros(31)), (items[1], torch.full((32,), float("nan")))):
        path = cache.path_for(mkey, "global", item.sha256)
        save_file({"features": bad}, str(path),
                  metadata={"model": mkey, "kind": "global", "sha256": item.sha256})
    res = cached_encode(encoder, "global", items, _images(encoder), cache)
    assert res.n_corrupt == 2 and res.n_misses == 2
    torch.testing.assert_close(res.features, first.features, atol=ATOL, rtol=0)


def test_unwritable_cache_warns_once_and_still_returns_features(tmp_path, encoder, items):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = FeatureCache(blocker / "cache")  # mkdir fails, even for root
    with pytest.warns(RuntimeWarning, match="feature cache disabled") as record:
        res = cached_encode(encoder, "global", items, _images(encoder), cache)
        again = cached_encode(encoder, "global", items, _images(encoder), cache)
    assert len([w for w in record if "feature cache" in str(w.message)]) == 1
    assert not cache.enabled and res.features.shape == (len(items), 32)
    assert again.n_forward > 0 and again.n_hits == 0
    torch.testing.assert_close(again.features, res.features, atol=0, rtol=0)


def test_no_cache_computes_everything(encoder, items):
    res = cached_encode(encoder, "global", items, _images(encoder), None)
    assert res.n_misses == len(items) and res.n_hits == 0 and res.n_forward > 0


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


def test_bad_names_are_rejected(tmp_path, encoder):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        cache.path_for("m", "global", "../../etc/passwd")
    with pytest.raises(ValueError, match="kind"):
        kind_key("../x")
    with pytest.raises(ValueError, match="sha256"):
        cached_encode(encoder, "global", [object()], _images(encoder), cache)
    with pytest.raises(ValueError, match="one row per missing item"):
        cached_encode(encoder, "global", ["ab" * 32], lambda its: torch.zeros(2, 32), cache)
    with pytest.raises(ValueError, match="per-item shape"):
        cached_encode(encoder, "global", ["cd" * 32], lambda its: torch.zeros(1, 7), cache)


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "feat"))
    assert default_cache_dir() == tmp_path / "feat"
    assert FeatureCache().root == tmp_path / "feat"
    monkeypatch.delenv("FUSIONLAB_CACHE_DIR")
    assert str(default_cache_dir()).endswith("fusionlab/features")


def test_thousand_cached_entries_load_without_decoding_or_forward(tmp_path, encoder):
    """A cached rerun of 1,000 images reads features only (no decode, no forward). Its speed
    (DESIGN target < 2 s; 0.06 s measured) is measured by benchmarks/encode.py, not here."""
    cache = FeatureCache(tmp_path)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    generator = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(1000, 32, generator=generator), dim=-1)
    cache.put_many(model_key(encoder.spec), "global", dict(zip(hashes, feats)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cached_encode(encoder, "global", hashes, _images(encoder), cache)
    assert res.n_hits == 1000 and res.n_forward == 0
    torch.testing.assert_close(res.features, feats, atol=0, rtol=0)
