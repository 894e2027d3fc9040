"""The Ray Data engine on a local Ray instance (2 CPUs, actors on fractional CPUs) with the tiny
models: the store equals the single-process path's features bit for bit, a run whose worker
fails (raises, or its process dies) resumes to the same store, progress is reported, and
``eval --engine ray`` gives the local path's report. One Ray session for the module."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from benchmarks.ray_extract import comparable, write_dataset
from core.cli import main as cli_main
from core.data import load_image_set
from core.models.tiny import tiny_test_models
from core.pipeline.distributed import StoreJob, list_images, run_local
from core.pipeline.extraction import ExtractSettings, extract
from core.pipeline.store import FeatureStore

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models():
    return tiny_test_models()


@pytest.fixture(scope="module")
def job(models):
    return StoreJob.from_keys([models["clip_vit"], models["dinov2"]])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # 40 images: each model's actors see batches of 16 (the tiny entries' registry batch size)
    return write_dataset(tmp_path_factory.mktemp("ray-images"), n_classes=4, n_train=4,
                         n_test=6, bad=1)


@pytest.fixture(scope="module")
def clean(job, images, tmp_path_factory):
    """The same features by the local engine (itself equal to ``extract``: test_store.py)."""
    store = FeatureStore(tmp_path_factory.mktemp("clean"))
    run_local(list_images(images), job, store, root=str(images))
    return {key: store.read_all(key, "global") for key in job.store_keys}


def _rows(store: FeatureStore, job: StoreJob) -> dict:
    return {key: store.read_all(key, "global") for key in job.store_keys}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys() and len(a[key]) == 40
        assert all(torch.equal(a[key][h], b[key][h]) for h in a[key]), key


def test_ray_store_equals_the_single_process_path_bit_for_bit(models, job, images, tmp_path):
    from core.pipeline.ray_engine import run_ray

    seen = []
    store = FeatureStore(tmp_path / "store")
    summary = run_ray(str(images), job, store, progress=lambda d, t, desc: seen.append((d, t)))
    assert summary.files == 41 and [s.name for s in summary.skipped] == [
        "test/class_0/broken0.png"]
    assert summary.encoded == {key: 40 for key in job.store_keys}
    assert seen and seen[-1] == (41, 41)  # progress reported, ending at the total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    image_set = load_image_set(images)
    alone = extract(image_set, ["x", "y"],
                    ExtractSettings(vlm=models["clip_vit"], vfm=models["dinov2"]), cache=None)
    rows = _rows(store, job)
    for key, feats in zip(job.store_keys, (alone.features.vlm_image, alone.features.vfm_image)):
        assert torch.equal(torch.stack([rows[key][it.sha256] for it in alone.items]), feats)


def _wait_for_cpus(n: float = 2.0, seconds: float = 60.0) -> None:
    """Until a failed run's actors have been torn down (their CPUs are free again)."""
    end = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < n and time.monotonic() < end:
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failed_worker_costs_only_its_batch_and_a_rerun_resumes(models, images, clean,
                                                                  tmp_path, how):
    from core.pipeline.ray_engine import run_ray

    job = StoreJob.from_keys([models["clip_vit"]])  # one actor pool: a shorter test
    store = FeatureStore(tmp_path / "store")
    marker = tmp_path / "killed"
    fail = (1, "raise") if how == "raise" else (1, f"exit:{marker}")
    try:  # after one batch each actor raises, or the first actor's process dies
        run_ray(str(images), job, store, fail_after=fail)
    except Exception as exc:  # Ray wraps the worker's error
        assert how == "raise" and "injected failure" in str(exc)
    else:
        assert how == "exit"  # Ray restarted the actor and retried its batch
    assert how == "raise" or marker.exists()
    partial = {key: store.present(key, "global") for key in job.store_keys}
    if how == "raise":
        assert 0 < len(partial[job.store_keys[0]]) < 40  # the first batch survived
    _wait_for_cpus()
    resumed = run_ray(str(images), job, store)
    for key in job.store_keys:
        assert resumed.encoded[key] == 40 - len(partial[key])
    _assert_same(_rows(store, job), {key: clean[key] for key in job.store_keys})


def test_eval_through_ray_gives_the_local_report(models, tmp_path):
    folder = write_dataset(tmp_path / "generated", n_classes=3, n_train=4, n_test=4, bad=1)
    reports = {}
    for engine in ("ray", "local"):
        extra = ["--engine", "ray", "--store", str(tmp_path / "store")] if engine == "ray" else []
        out = tmp_path / f"out-{engine}"
        assert cli_main(["eval", "--dataset", str(folder), "--vlm", models["clip_vit"],
                         "--vfm", models["dinov2"], "--methods", "clip,otfusion,gpua",
                         "--ths-steps", "5", "--cache-dir", str(tmp_path / f"cache-{engine}"),
                         "--out", str(out), *extra]) == 0
        reports[engine] = json.loads(next(out.glob("*.json")).read_text())
    assert comparable(reports["ray"]) == comparable(reports["local"])
    assert reports["ray"]["n_test"] == 12 and reports["ray"]["n_gpua_pool"] == 12
    # the Ray path encoded every image: the evaluation only read them (through the store)
    assert reports["ray"]["settings"]["extraction"]["test"].endswith("(12 cached, 0 encoded)")
    assert reports["local"]["settings"]["extraction"]["test"].endswith("(0 cached, 12 encoded)")
