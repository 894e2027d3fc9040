"""First vs second UMAP map and GPUA fit in a fresh process, with and without ``demo.warmup``.

Each measurement runs in its own child process (a fresh interpreter, as a newly started app):

- "cold": the first GPUA fit (20 synthetic samples at real widths, CLIP 512-d / DINO 768-d, the
  paper recipe) and a second one on other samples; then the first UMAP map (1,000 images + 10
  class prototypes, 512-d, as ``demo.maps.project_2d`` draws it) and a second one;
- "warm": the same after ``demo.warmup.warm_up()`` (what ``demo.ui.launch`` runs in the
  background while the server starts), whose own time is reported too.

Modes alternate (cold, warm, cold, warm...) so load on a shared machine hits both alike.

    python benchmarks/warmup.py              # 1 round
    python benchmarks/warmup.py --rounds 2
    python benchmarks/warmup.py --rounds 3 --parts gpua --threads 1   # GPUA alone, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import torch
if {threads}:
    torch.set_num_threads({threads})
import core.synthetic as synthetic
from core.methods import FeatureSet, run_method
from demo.maps import project_2d
from demo import warmup

out = {{}}
if {warm!r}:
    out["warm_up_s"] = sum(warmup.warm_up().values())

def gpua(seed):
    d = synthetic.make_synthetic(20, 5, seed=seed, difficulty="clip-b16-dinov2-b")
    start = time.perf_counter()
    run_method("gpua", FeatureSet(vlm_image=d.vlm_image, text=d.vlm_text, vfm_image=d.vfm_image))
    return time.perf_counter() - start

def umap_map(seed):
    d = synthetic.make_synthetic(1000, 10, seed=seed, difficulty="clip-b16-dinov2-b")
    x = np.concatenate([d.vlm_image.numpy(), d.vlm_text.numpy()])
    start = time.perf_counter()
    project_2d(x, method="umap")
    return time.perf_counter() - start

if "gpua" in {parts!r}:
    out["gpua_first_s"], out["gpua_second_s"] = gpua(1), gpua(2)
if "umap" in {parts!r}:
    out["umap_first_s"], out["umap_second_s"] = umap_map(1), umap_map(2)
print("RESULT " + json.dumps(out))
"""


def _child(warm: bool, parts: tuple[str, ...], threads: int) -> dict:
    code = CHILD.format(root=str(ROOT), warm=warm, parts=parts, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parts", nargs="+", default=["gpua", "umap"], choices=["gpua", "umap"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the children (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    runs = {"cold": [], "warm": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(_child(mode == "warm", tuple(args.parts), args.threads))
            print(mode, runs[mode][-1], flush=True)
    summary = {mode: {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
               for mode, rows in runs.items()}
    print(f"fresh process, median of {args.rounds} round(s) (seconds):")
    for mode, row in summary.items():
        print(f"  {mode}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rounds": args.rounds, "runs": runs,
                                        "median": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
