"""Feature store vs the per-file cache at dataset size: writes, lookups, files on disk.

    python benchmarks/store.py                     # 100k entries of 512-d (CLIP ViT-B/16)
    python benchmarks/store.py --n 10000 --dim 1024

Writes: the per-file cache (``FeatureCache.put_many``: one safetensors file per entry, each
atomic) vs the store (``FeatureStore.write_shard``: one shard per ``--shard`` rows, the registry
batch size of a B/16 model on the Ray path). Lookups, each from a fresh object (a new process):
every entry, 2,048 at a time as the eval harness asks, and 1,000 random ones (a small eval
against a big store). The load average is printed with the timings (the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.pipeline.cache import FeatureCache  # noqa: E402
from core.pipeline.store import FeatureStore  # noqa: E402

MODEL, KIND = "bench-0123456789abcdef", "global"
CHUNK = 2048  # core.config.EVAL_CHUNK_SIZE: what one extract() call of the harness looks up


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _read_all(layout, hashes: list[str]) -> int:
    """Every entry, ``CHUNK`` at a time as the eval harness reads a split; rows found. (At once,
    100k per-file entries fail: each read tensor keeps its file's memory map, and 100k maps pass
    the kernel's vm.max_map_count of 65,530.)"""
    return sum(len(layout.get_many(MODEL, KIND, hashes[i:i + CHUNK])[0])
               for i in range(0, len(hashes), CHUNK))


def _files(root: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, _, names in os.walk(root):
        n += len(names)
        size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in names)
    return n, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard", type=int, default=256, help="rows per store shard")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.n)]
    feats = torch.randn(args.n, args.dim)
    sample = [hashes[i] for i in torch.randperm(args.n)[:1000].tolist()]
    step = args.shard
    results = {}
    try:
        cache = FeatureCache(work / "cache", max_bytes=0, store=False)
        _, write = _timed(lambda: [cache.put_many(MODEL, KIND, {h: feats[i + j] for j, h in
                                                              enumerate(hashes[i:i + step])})
                                   for i in range(0, args.n, step)])
        found, read_all = _timed(lambda: _read_all(
            FeatureCache(work / "cache", max_bytes=0, store=False), hashes))
        assert found == args.n
        _, read_some = _timed(lambda: FeatureCache(work / "cache", max_bytes=0, store=False)
                              .get_many(MODEL, KIND, sample))
        results["per-file cache"] = (write, read_all, read_some, *_files(work / "cache"))

        store = FeatureStore(work / "store")
        _, write = _timed(lambda: [store.write_shard(MODEL, KIND, hashes[i:i + step],
                                                     feats[i:i + step])
                                   for i in range(0, args.n, step)])
        found, read_all = _timed(lambda: _read_all(FeatureStore(work / "store"), hashes))
        assert found == args.n
        assert torch.equal(FeatureStore(work / "store").get_many(MODEL, KIND, hashes[7:8])[0][
            hashes[7]], feats[7])
        _, read_some = _timed(lambda: FeatureStore(work / "store").get_many(MODEL, KIND, sample))
        results["sharded store"] = (write, read_all, read_some, *_files(work / "store"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.n:,} entries of {args.dim}-d float32, shards of {args.shard}; "
          f"{os.cpu_count()} CPUs, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"{'layout':16s} {'write':>9s} {'read all':>9s} {'read 1k':>9s} {'files':>8s} "
          f"{'MiB':>7s}")
    for name, (w, ra, rs, n_files, size) in results.items():
        print(f"{name:16s} {w:8.1f}s {ra:8.2f}s {rs:8.2f}s {n_files:8,d} {size / 2**20:7.1f}")


if __name__ == "__main__":
    main()
