"""The sharded feature store and the local store engine (no Ray needed): atomic shards, lookups,
resuming, the single-machine path reading the store, ``python -m core extract``."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.pipeline.distributed as distributed
import core.pipeline.store as store_module
from core.cli import main as cli_main
from core.data import load_image_set
from core.models import get_spec
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache, model_key
from core.pipeline.distributed import StoreJob, list_images, run_local
from core.pipeline.extraction import ExtractSettings, extract
from core.pipeline.store import FeatureStore


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make_images(folder: Path, n: int, *, bad: int = 1, seed: int = 0) -> Path:
    """``n`` small PNGs of two sizes in two class folders, plus ``bad`` unreadable files."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        side = 40 + (i % 3) * 7
        Image.fromarray(rng.integers(0, 255, (side, side + 5, 3), dtype=np.uint8)).save(path)
    for i in range(bad):
        (folder / f"broken{i}.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def models():
    return tiny_test_models()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 21)


def store_rows(store: FeatureStore, job: StoreJob) -> dict[str, dict[str, torch.Tensor]]:
    return {key: store.read_all(key, "global") for key in job.store_keys}


def assert_same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys() and a[key]
        assert all(torch.equal(a[key][h], b[key][h]) for h in a[key]), key


# ----------------------------------------------------------------------------- the store


def test_shards_round_trip_skip_what_is_there_and_are_seen_by_other_readers(tmp_path):
    store = FeatureStore(tmp_path)
    feats = torch.randn(5, 4)
    assert store.write_shard("m-1", "global", [_sha(i) for i in range(5)], feats) == 5
    # a second writer resuming: only the new hashes become a shard
    assert store.write_shard("m-1", "global", [_sha(i) for i in range(3, 8)],
                             torch.randn(5, 4)) == 3
    assert store.write_shard("m-1", "global", [_sha(0)], torch.randn(1, 4)) == 0
    reader = FeatureStore(tmp_path)  # another process: builds its index from the shards
    found, missing = reader.get_many("m-1", "global", [_sha(2), _sha(9), _sha(2), _sha(6)],
                                     expected_shape=(4,))
    assert torch.equal(found[_sha(2)], feats[2]) and missing == [_sha(9)]
    assert set(found) == {_sha(2), _sha(6)}
    assert reader.get_many("m-1", "global", [_sha(2)], expected_shape=(5,))[0] == {}
    assert reader.contents() == {("m-1", "global"): 8}
    assert len(list((tmp_path / "m-1" / "global").iterdir())) == 2  # shards, nothing else
    store.write_shard("m-1", "global", [_sha(20)], torch.randn(1, 4))
    assert _sha(20) in reader.present("m-1", "global")  # new shards are picked up


def test_a_write_killed_mid_shard_leaves_no_shard_and_no_temp_file(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    store.write_shard("m-1", "global", [_sha(0)], torch.zeros(1, 2))

    def dies_half_way(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 10)  # a partial file, then the worker dies
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard("m-1", "global", [_sha(1), _sha(2)], torch.ones(2, 2))
    folder = tmp_path / "m-1" / "global"
    assert len(os.listdir(folder)) == 1  # the first shard only
    (folder / ".tmp-leftover.safetensors").write_bytes(b"garbage")  # a kill -9 leftover
    fresh = FeatureStore(tmp_path)
    assert fresh.present("m-1", "global") == {_sha(0)}
    with pytest.raises(ValueError, match="sha256"):
        store.write_shard("m-1", "global", ["abc"], torch.zeros(1, 2))


# ----------------------------------------------------------------------------- the local engine


def test_local_engine_matches_extract_bit_for_bit_and_the_local_path_reads_it(
        models, images, tmp_path):
    job = StoreJob.from_keys([models["clip_vit"], models["dinov2"]])
    store = FeatureStore(tmp_path / "store")
    seen = []
    summary = run_local(list_images(images), job, store, root=str(images),
                        progress=lambda d, t, desc: seen.append((d, t)))
    assert summary.files == 22 and [s.name for s in summary.skipped] == ["broken0.png"]
    assert summary.encoded == {key: 21 for key in job.store_keys}
    assert seen[-1] == (22, 22) and [d for d, _ in seen] == sorted(d for d, _ in seen)

    image_set = load_image_set(images)
    settings = ExtractSettings(vlm=models["clip_vit"], vfm=models["dinov2"])
    alone = extract(image_set, ["a", "b"], settings, cache=None)  # the single-process path
    rows = store_rows(store, job)
    for key, feats in zip(job.store_keys, (alone.features.vlm_image, alone.features.vfm_image)):
        stacked = torch.stack([rows[key][it.sha256] for it in alone.items])
        assert torch.equal(stacked, feats)  # bit for bit

    cache = FeatureCache(tmp_path / "cache", store=store)
    again = extract(image_set, ["a", "b"], settings, cache=cache)
    assert again.stats["cache_hits"] == 21 and again.stats["encoded"] == 0
    assert store.n_hits >= 42  # both models' rows came from the store
    assert torch.equal(again.features.vfm_image, alone.features.vfm_image)
    assert not (tmp_path / "cache" / job.store_keys[0] / "global").exists()  # no file entries


def test_a_run_killed_after_a_batch_resumes_to_the_same_store(models, images, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(distributed, "DECODE_BATCH", 8)  # 3 batches of files
    job = StoreJob.from_keys([models["clip_vit"], models["dinov2"]])
    files = list_images(images)
    clean = FeatureStore(tmp_path / "clean")
    run_local(files, job, clean, root=str(images))
    store = FeatureStore(tmp_path / "resumed")
    with pytest.raises(RuntimeError, match="injected failure"):
        run_local(files, job, store, fail_after=(1, "raise"))  # dies in its second batch
    first = store.present(job.store_keys[0], "global")
    assert 0 < len(first) <= 8  # what the first batch wrote survives, nothing partial
    assert store.present(job.store_keys[1], "global") == first  # both models did batch 1
    resumed = run_local(files, job, store)
    assert resumed.stored == len(first)  # skipped before decoding
    assert resumed.encoded == {key: 21 - len(first) for key in job.store_keys}
    assert_same_rows(store_rows(store, job), store_rows(clean, job))


def test_cli_extract_local_and_a_clear_error_without_ray(models, images, tmp_path, capsys,
                                                         monkeypatch):
    args = ["extract", "--images", str(images), "--vlm", models["clip_vit"], "--vfm", "none",
            "--store", str(tmp_path / "store")]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    key = model_key(get_spec(models["clip_vit"]))
    assert "images: 22 files, 0 already in the store, 1 skipped" in out and f"{key}: 21" in out
    assert cli_main(args) == 0
    assert "21 already in the store" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert cli_main([*args, "--engine", "ray"]) == 2
    assert "pip install -r requirements-ray.txt" in capsys.readouterr().err
    monkeypatch.delenv("FUSIONLAB_STORE_DIR", raising=False)
    assert cli_main(["extract", "--images", str(images), "--vlm", models["clip_vit"],
                     "--vfm", "none"]) == 2
    assert "--store: give the store folder" in capsys.readouterr().err


def test_ray_actors_leave_the_decode_tasks_a_cpu():
    from core.config import RAY_ACTOR_CPUS, RAY_DECODE_CPUS
    from core.pipeline.ray_engine import actor_cpus

    assert actor_cpus(64, 16) == RAY_ACTOR_CPUS  # a big node: the configured share
    for cpus, n in ((2, 2), (2, 4), (4, 16), (1, 2)):  # 2 models x 2 workers on 2 cores hung
        assert 0 < actor_cpus(cpus, n) * n <= max(cpus - RAY_DECODE_CPUS, 0.01 * n)
