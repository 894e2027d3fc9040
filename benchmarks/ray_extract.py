"""Store extraction throughput (images/s) with the local engine and Ray (1 and 2 workers), and
``eval`` over a generated folder dataset through both paths, reports compared.

    python benchmarks/ray_extract.py speed --images 512               # tiny models
    python benchmarks/ray_extract.py speed --images 64 --real         # CLIP ViT-B/16 size
    python benchmarks/ray_extract.py eval --classes 10 --train 100 --test 200   # 3000 images

``speed`` runs each configuration on a fresh store, interleaved (local, ray 1, ray 2, repeated),
and prints images/s with the load average. ``--real`` uses the real-size random-weight CLIP
ViT-B/16 and DINOv2-B (``core.models.realsize``: same architectures and preprocessing, no
download). ``eval`` writes
a folder-per-class dataset of noisy coloured PNGs, evaluates it with ``--engine local`` and
``--engine ray`` and checks the reports are equal but for timings and cache counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_dataset(folder: Path, *, n_classes: int = 3, n_train: int = 2, n_test: int = 2,
                  side: int = 48, seed: int = 0, bad: int = 0) -> Path:
    """A folder-per-class dataset: ``folder/{train,test}/class_<k>/<i>.png`` (noisy images of
    one colour per class, sizes varying so decoding and resizing are exercised), plus ``bad``
    unreadable files in the test split's first class. Returns ``folder``."""
    rng = np.random.default_rng(seed)
    for k in range(n_classes):
        base = rng.integers(0, 255, 3)
        for split, n in (("train", n_train), ("test", n_test)):
            target = folder / split / f"class_{k}"
            target.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h = side + int(rng.integers(0, 16))
                pixels = np.clip(base + rng.normal(0, 40, (h, side, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(target / f"{i}.png")
    for i in range(bad):
        (folder / "test" / "class_0" / f"broken{i}.png").write_bytes(b"not an image")
    return folder


def comparable(report: dict) -> dict:
    """A report's JSON without what differs between runs: timings and cache-hit counts."""
    out = {k: v for k, v in report.items() if k != "extract_seconds"}
    out["settings"] = {k: v for k, v in report["settings"].items() if k != "extraction"}
    out["rows"] = [{k: v for k, v in r.items() if k != "seconds"} for r in report["rows"]]
    return out


def _models(real: bool) -> list[str]:
    from core.models.realsize import realsize_models
    from core.models.tiny import tiny_test_models

    keys = realsize_models() if real else tiny_test_models()
    return [keys["clip" if real else "clip_vit"], keys["dinov2"]]


def speed(args) -> None:
    import ray

    from core.pipeline.distributed import StoreJob, list_images, run_local
    from core.pipeline.ray_engine import run_ray
    from core.pipeline.store import FeatureStore

    work = Path(tempfile.mkdtemp(prefix="ray-speed-"))
    folder = write_dataset(work / "data", n_classes=4, n_train=0, n_test=args.images // 4,
                           side=args.side)
    job = StoreJob.from_keys(_models(args.real))
    files = list_images(folder)
    here = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    run_ray(files[:8], job, FeatureStore(work / "warm"), workers=2)  # start and import once
    rates: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for name in ("local", "ray 1 worker", "ray 2 workers"):
            store = FeatureStore(work / f"store-{rep}-{name.replace(' ', '-')}")
            start = time.perf_counter()
            if name == "local":
                run_local(files, job, store)
            else:
                run_ray(str(folder), job, store, workers=int(name.split()[1]))
            rates.setdefault(name, []).append(len(files) / (time.perf_counter() - start))
    ray.shutdown()
    load = os.getloadavg()
    models = ", ".join(s.key for s in job.models)
    print(f"{len(files)} images ({args.side} px and up), models {models}, "
          f"{os.cpu_count()} CPUs, load {load[0]:.1f} / {load[1]:.1f}")
    for name, values in rates.items():
        print(f"{name:14s} {np.median(values):7.1f} images/s (runs: "
              + ", ".join(f"{v:.1f}" for v in values) + ")")
    shutil.rmtree(work, ignore_errors=True)


def evaluate(args) -> None:
    from core.cli import main as cli_main

    keys = _models(False)
    work = Path(tempfile.mkdtemp(prefix="ray-eval-"))
    folder = write_dataset(work / "generated", n_classes=args.classes, n_train=args.train,
                           n_test=args.test, bad=1)
    n = args.classes * (args.train + args.test)
    reports, seconds = {}, {}
    for engine in ("ray", "local"):
        out, start = work / f"out-{engine}", time.perf_counter()
        extra = ["--engine", "ray", "--store", str(work / "store")] if engine == "ray" else []
        rc = cli_main(["eval", "--dataset", str(folder), "--vlm", keys[0], "--vfm", keys[1],
                       "--methods", "clip,otfusion,gpua", "--cache-dir",
                       str(work / f"cache-{engine}"), "--out", str(out), *extra])
        seconds[engine] = time.perf_counter() - start
        assert rc == 0, f"eval --engine {engine} exited {rc}"
        reports[engine] = json.loads(next(out.glob("*.json")).read_text())
    same = comparable(reports["ray"]) == comparable(reports["local"])
    load = os.getloadavg()
    print(f"\n{n + 1} files ({n} images + 1 broken), {args.classes} classes; load "
          f"{load[0]:.1f} / {load[1]:.1f}")
    for engine in ("ray", "local"):
        r = reports[engine]
        accs = ", ".join(f"{row['method']} {row['accuracy']:.2f}%" for row in r["rows"])
        print(f"{engine:5s} {seconds[engine]:6.1f} s  {accs}  extraction: "
              f"{r['settings']['extraction']}")
    print("reports identical (but timings and cache counts):", same)
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--side", type=int, default=256, help="image height and width, pixels")
    p.add_argument("--real", action="store_true",
                   help="CLIP ViT-B/16 + DINOv2-B at real size (random weights)")
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("eval")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=100)
    p.add_argument("--test", type=int, default=200)
    args = parser.parse_args()
    speed(args) if args.what == "speed" else evaluate(args)


if __name__ == "__main__":
    main()
