"""The feature cache's size cap: least recently used entries evicted, nothing else touched."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from core.pipeline.cache import DEFAULT_MAX_BYTES, EVICT_TO, FeatureCache, default_max_bytes
from core.pipeline.cache_size import entry_files, parse_size

MODEL, KIND = "test-model-0123456789abcdef", "global"


def sha(i: int) -> str:
    return hashlib.sha256(f"image {i}".encode()).hexdigest()


def feats(i: int, d: int = 256) -> torch.Tensor:
    return torch.full((d,), float(i))


def entry_size(tmp_path) -> int:
    probe = FeatureCache(tmp_path / "probe", max_bytes=0)
    probe.put_many(MODEL, KIND, {sha(0): feats(0)})
    return probe.total_bytes()


def age(cache: FeatureCache, shas, seconds_ago: float) -> None:
    now = os.path.getmtime(cache.root)  # a file-system time, like the entries'
    for s in shas:
        path = cache.path_for(MODEL, KIND, s)
        os.utime(path, (now - seconds_ago, now - seconds_ago))


def test_writes_past_the_cap_evict_the_least_recently_used(tmp_path):
    size = entry_size(tmp_path)
    cache = FeatureCache(tmp_path / "c", max_bytes=10 * size)
    cache.put_many(MODEL, KIND, {sha(i): feats(i) for i in range(10)})
    assert cache.n_evicted == 0 and cache.total_bytes() == 10 * size
    for i in range(10):  # entry i was last used i * 10 s after entry 0... entry 9 most recently
        age(cache, [sha(i)], 1000 - 10 * i)
    found, _ = cache.get_many(MODEL, KIND, [sha(0), sha(1)])  # a hit refreshes its access time
    assert set(found) == {sha(0), sha(1)}
    cache.put_many(MODEL, KIND, {sha(10): feats(10)})  # 11 entries: over the cap
    assert cache.total_bytes() <= EVICT_TO * cache.max_bytes
    kept = {e.path.stem for e in entry_files(cache.root)}
    assert {sha(0), sha(1), sha(10)} <= kept  # just used or just written
    assert sha(2) not in kept and sha(3) not in kept  # the least recently used went first
    assert cache.n_evicted == 11 - len(kept)
    found, missing = cache.get_many(MODEL, KIND, [sha(2), sha(9)])
    assert missing == [sha(2)] and torch.equal(found[sha(9)], feats(9))


def test_eviction_never_touches_files_outside_the_layout(tmp_path):
    size = entry_size(tmp_path)
    root = tmp_path / "shared"
    (root / "notes").mkdir(parents=True)
    precious = [root / "notes" / "todo.txt", root / "a.safetensors",
                root / MODEL / KIND / "zz" / "not-a-hash.safetensors"]
    for path in precious:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (5 * size))
    cache = FeatureCache(root, max_bytes=3 * size)
    cache.put_many(MODEL, KIND, {sha(i): feats(i) for i in range(6)})
    assert all(p.read_bytes() == b"x" * (5 * size) for p in precious)
    assert cache.total_bytes() <= 3 * size


def test_cap_zero_means_no_cap_and_hits_do_not_touch(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=0)
    cache.put_many(MODEL, KIND, {sha(i): feats(i) for i in range(5)})
    age(cache, [sha(0)], 500)
    before = os.path.getmtime(cache.path_for(MODEL, KIND, sha(0)))
    cache.get_many(MODEL, KIND, [sha(0)])
    assert os.path.getmtime(cache.path_for(MODEL, KIND, sha(0))) == before
    assert cache.n_evicted == 0 and len(entry_files(cache.root)) == 5


def test_a_second_process_on_the_same_root_sees_the_total(tmp_path):
    size = entry_size(tmp_path)
    FeatureCache(tmp_path / "c", max_bytes=0).put_many(
        MODEL, KIND, {sha(i): feats(i) for i in range(8)})
    other = FeatureCache(tmp_path / "c", max_bytes=5 * size)  # its first write scans the root
    other.put_many(MODEL, KIND, {sha(100): feats(100)})
    assert other.total_bytes() <= EVICT_TO * 5 * size


@pytest.mark.parametrize("text,expected", [("1000", 1000), ("4GiB", 4 * 1024**3),
                                           ("500MB", 500 * 1000**2), ("1.5g", 3 * 1024**3 // 2),
                                           (" 2 mib ", 2 * 1024**2), ("0", 0)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "4 parsecs", "1e9"])
def test_parse_size_rejects_with_an_example(text):
    with pytest.raises(ValueError, match="expected a size such as 4GiB"):
        parse_size(text, "FUSIONLAB_CACHE_MAX_BYTES")


def test_default_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv("FUSIONLAB_CACHE_MAX_BYTES", raising=False)
    assert default_max_bytes() == DEFAULT_MAX_BYTES
    monkeypatch.setenv("FUSIONLAB_CACHE_MAX_BYTES", "256MiB")
    assert FeatureCache("unused").max_bytes == 256 * 1024**2
    monkeypatch.setenv("FUSIONLAB_CACHE_MAX_BYTES", "big")
    with pytest.raises(ValueError, match="FUSIONLAB_CACHE_MAX_BYTES"):
        FeatureCache("unused")
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache("unused", max_bytes=-1)
