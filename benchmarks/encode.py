"""Feature extraction throughput: end to end (JPEG bytes -> features) vs the raw forward pass.

DESIGN.md, "Performance": extraction end to end (decode, preprocess, forward) must reach >= 0.9x the
raw forward throughput of the same model and batch size, and a cached rerun of 1,000 images must
take under 2 s. Both are measured here in one run, as ratios and times. Raw and end-to-end runs
alternate, so a busy machine slows both alike; the table gives the ratio of the best times and
the median ratio of adjacent pairs.

- raw forward: ``encoder.encode_pixels`` on pre-made, preprocessed tensors;
- end to end: ``encoder.encode_images`` on a lazy sequence whose items decode JPEG bytes with
  Pillow when read, so decoding and preprocessing run on the encoder's worker threads while the
  model computes the previous batch;
- cached rerun: `core.pipeline.features.cached_features` (the pipeline's cache-or-compute) over
  1,000 images already in a fresh on-disk cache (a new `FeatureCache` object, as a new process
  would have), asserting zero forward passes.

Weights are random (timing does not depend on them): a real-size architecture through
`core.models.tiny.random_init_copy` and a tiny test model. Nothing is downloaded.

    python benchmarks/encode.py                                   # ViT-B/16 + tiny, defaults
    python benchmarks/encode.py --model clip-vit-b32 --n-images 128 --batch-size 32
    python benchmarks/encode.py --fast-paths --batch-size 16 --repeats 3   # CPU candidates
    python benchmarks/encode.py --fast-paths --threads 2 --candidates "int8 dynamic,onnx"
    python benchmarks/encode.py --fast-paths --threads 2 --candidates openvino
    python benchmarks/encode.py --fast-paths --threads 2 --batch-size 16 --candidates bf16
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models import get_spec, load_encoder  # noqa: E402
from core.models.tiny import random_init_copy, tiny_test_models  # noqa: E402
from core.pipeline.cache import FeatureCache, model_key  # noqa: E402
from core.pipeline.features import cached_features  # noqa: E402


class LazyJpegs:
    """A sequence of JPEG bytes that decodes item i with Pillow when it is read."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> Image.Image:
        image = Image.open(io.BytesIO(self.blobs[i]))
        image.load()
        return image


def make_jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain), quality 90."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 12, base.shape)
        pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(key: str, blobs: list[bytes], batch_size: int, repeats: int) -> dict:
    """Raw and end-to-end timings, interleaved so both see the same machine load."""
    encoder = load_encoder(key, device="cpu")
    lazy = LazyJpegs(blobs)
    start = time.perf_counter()
    pixels = torch.stack([encoder.preprocess(lazy[i]) for i in range(len(lazy))])
    prep_s = time.perf_counter() - start
    encoder.encode_pixels(pixels[:batch_size], batch_size=batch_size)  # warm-up both paths
    encoder.encode_images(LazyJpegs(blobs[:batch_size]), batch_size=batch_size)
    raw, e2e = [], []
    for _ in range(repeats):
        raw.append(timed(lambda: encoder.encode_pixels(pixels, batch_size=batch_size)))
        e2e.append(timed(lambda: encoder.encode_images(lazy, batch_size=batch_size)))
    n = len(blobs)
    return {
        "model": key, "n": n, "batch": batch_size, "raw_ips": n / min(raw),
        "e2e_ips": n / min(e2e), "ratio_best": min(raw) / min(e2e),
        "ratio_median": float(np.median([r / e for r, e in zip(raw, e2e)])),
        "serial_prep_ms": 1000 * prep_s / n,
    }


def bench_cache(key: str, n_images: int) -> dict:
    encoder = load_encoder(key, device="cpu")
    dim = encoder.spec.output_dim
    hashes = [hashlib.sha256(f"image-{i}".encode()).hexdigest() for i in range(n_images)]
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        def fake_compute(rows):  # stands in for the forward pass of the first run
            return torch.nn.functional.normalize(torch.randn(len(rows), dim,
                                                             generator=generator), dim=-1)

        start = time.perf_counter()
        cached_features(FeatureCache(root), encoder, "global", hashes, fake_compute)
        write_s = time.perf_counter() - start
        forward_before = encoder.n_forward
        cache = FeatureCache(root)
        start = time.perf_counter()
        cached_features(cache, encoder, "global", hashes, fake_compute)
        read_s = time.perf_counter() - start
        assert cache.n_hits == n_images and encoder.n_forward == forward_before
        size_mb = sum(p.stat().st_size for p in Path(root).rglob("*.safetensors")) / 1e6
    return {"model": model_key(encoder.spec), "n": n_images, "write_s": write_s,
            "rerun_s": read_s, "size_mb": size_mb}


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        print(", ".join(f"{k}={v:.{6 if 'cos' in k else 4}f}" if isinstance(v, float)
                        else f"{k}={v}" for k, v in row.items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["clip-vit-b16", "test-tiny-clip-vit"],
                        help="registry keys; real entries get random weights (nothing downloads)")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", default="500x375", help="JPEG size WxH")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved raw / end-to-end timing pairs")
    parser.add_argument("--cache-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--fast-paths", action="store_true",
                        help="instead: fp32 eager vs int8 / bf16 / channels-last / torch.compile / "
                             "ONNX Runtime (fp32, int8) / OpenVINO at --threads (default 2 and 1), "
                             "interleaved, with worst cosine to fp32 on natural images")
    parser.add_argument("--candidates",
                        default="int8 dynamic,bf16,fp32 channels-last,torch.compile,onnx",
                        help="--fast-paths candidates, a comma list; also 'openvino' (all of "
                             "'openvino fp32', 'openvino bf16', 'openvino int8 weights', "
                             "'openvino int8'; needs the optional openvino and nncf)")
    parser.add_argument("--onnx-dir", default=None,
                        help="--fast-paths: where ONNX exports are kept between runs "
                             "(default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.fast_paths:
        from benchmarks.fast_paths import bench_fast_paths
        from core.models.realsize import realsize_models

        names = {n.strip() for n in args.candidates.split(",") if n.strip()}
        with tempfile.TemporaryDirectory() as scratch:
            for role, key in realsize_models().items():
                folder = Path(args.onnx_dir or scratch) / role
                folder.mkdir(parents=True, exist_ok=True)
                rows = bench_fast_paths(key, batch_size=args.batch_size, repeats=args.repeats,
                                        threads=[args.threads] if args.threads else [2, 1],
                                        names=names, onnx_folder=folder)
                _print_rows(rows)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    tiny_test_models()
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    blobs = make_jpegs(args.n_images, width, height)
    keys = [k if get_spec(k).random_init else random_init_copy(k) for k in args.model]
    mean_kb = np.mean([len(b) for b in blobs]) / 1e3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
          f"{args.n_images} JPEGs {width}x{height}, mean {mean_kb:.0f} kB; best of / median "
          f"over {args.repeats} interleaved pairs")

    print(f"\n{'model':24s} {'batch':>5s} {'raw img/s':>10s} {'e2e img/s':>10s} "
          f"{'e2e/raw best':>13s} {'e2e/raw median':>15s} {'serial prep ms/img':>19s}")
    for key in keys:
        row = bench_model(key, blobs, args.batch_size, args.repeats)
        print(f"{row['model']:24s} {row['batch']:5d} {row['raw_ips']:10.1f} "
              f"{row['e2e_ips']:10.1f} {row['ratio_best']:13.3f} {row['ratio_median']:15.3f} "
              f"{row['serial_prep_ms']:19.2f}")
        if 1000 / row["raw_ips"] < row["serial_prep_ms"]:
            print(f"{'':24s} (its forward is cheaper than decoding a JPEG: the ratio measures "
                  "decoding, not the overlap)")

    print(f"\n{'cache (global features)':40s} {'images':>6s} {'first write s':>14s} "
          f"{'cached rerun s':>15s} {'MB':>6s}")
    for key in keys:
        row = bench_cache(key, args.cache_images)
        print(f"{row['model']:40s} {row['n']:6d} {row['write_s']:14.3f} {row['rerun_s']:15.3f} "
              f"{row['size_mb']:6.1f}")


if __name__ == "__main__":
    main()
