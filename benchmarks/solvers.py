"""Solver speed and memory on synthetic features (numbers, not timed tests).

For each size (N, K, d) it measures, in one run:
- OTFusion total time and time per outer iteration: the marginal cost of one more iteration,
  (T(10 iterations) - T(1 iteration)) / 9, and the amortised T(10) / 10 (which also carries the
  one-off set-up: validation, normalisation, centring, the initial M-step);
- the time of OTFusion's unavoidable matrix products at that size (the E-step GEMM V @ (mu w)^T and
  the M-step GEMM (N Q)^T @ V, same dtype and threads), and the ratio per-iteration / GEMMs
  (target <= 1.5). The three timings are interleaved, repeat by repeat, so that a burst of load on
  the machine hits all of them, and medians are taken;
- GPUA fit time (target < 2 s at (1k, 100)): the median of warm fits, and the first fit in the
  process separately (it pays torch.optim's one-off import of torch._dynamo, about 0.7 s);
- peak resident memory after each stage;
and LaZSL scoring at N=100 images, M=90 crops, K=100 classes, A=8 attributes.

    python benchmarks/solvers.py                  # all sizes (the 50k size needs ~6 GB, minutes)
    python benchmarks/solvers.py --sizes 1k       # quick
    python benchmarks/solvers.py --json out.json  # also write the numbers
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.methods.gpua.fit import fit_gpua  # noqa: E402
from core.methods.lazsl import lazsl_scores  # noqa: E402
from core.methods.otfusion import otfusion  # noqa: E402
from core.methods.zeroshot import zeroshot_probs  # noqa: E402
from core.synthetic.features import make_synthetic  # noqa: E402

SIZES = {"1k": (1_000, 100, 768), "10k": (10_000, 1_000, 768), "50k": (50_000, 1_000, 1_024)}
D_TEXT = 512  # CLIP ViT-B joint space


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def best_of(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns, repeats: int) -> list[float]:
    """Median wall time of each function, timed in turn within every repeat (after a warm-up)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_size(label: str, n: int, k: int, d: int, *, repeats: int, gpua: bool) -> dict:
    # Noise raised for these dimensions so that CLIP zero-shot stays mediocre (about 50%).
    data = make_synthetic(
        n, k, seed=0, d_vlm=D_TEXT, d_vfm=d, difficulty="hard", vlm_noise=6.0, vfm_noise=3.0
    )
    y = zeroshot_probs(data.vlm_image, data.vlm_text)
    row = {"size": label, "N": n, "K": k, "d": d}

    def solve_fixed():  # exactly 10 outer iterations: the per-iteration figure
        return otfusion([data.vfm_image], [y], n_iter=10, tol=0.0)

    def solve_default():  # what a user gets: paper defaults, stops on the objective's tolerance
        return otfusion([data.vfm_image], [y])

    def solve_one():  # one outer iteration: set-up + 1 iteration
        return otfusion([data.vfm_image], [y], n_iter=1, tol=0.0)

    g = torch.Generator().manual_seed(0)
    v, b = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    q = torch.rand(n, k, generator=g)

    def gemms():  # E-step + M-step GEMMs of one OTFusion iteration with one VFM, float32
        return v @ b.T, q.T @ v

    res = solve_fixed()
    assert res.n_iter == 10
    t10, t1, tg = interleaved([solve_fixed, solve_one, gemms], repeats)
    per_iter = (t10 - t1) / 9
    row.update(
        otfusion_default_s=best_of(solve_default, repeats),
        otfusion_default_iters=solve_default().n_iter,
        otfusion_total_s=t10,
        otfusion_iters=10,
        otfusion_per_iter_s=per_iter,
        otfusion_amortised_iter_s=t10 / 10,
        gemm_s=tg,
        ratio_per_iter_to_gemm=per_iter / tg,
        ratio_amortised_to_gemm=t10 / 10 / tg,
        otfusion_acc=float((res.pred == data.labels).float().mean()),
        clip_acc=float((y.argmax(1) == data.labels).float().mean()),
        peak_rss_gb_after_otfusion=peak_rss_gb(),
    )
    if gpua:
        z = torch.nn.functional.normalize(torch.cat([data.vfm_image, data.vlm_image], 1), dim=1)

        def fit():
            return fit_gpua(
                vfm_features=data.vfm_image,
                vlm_features=data.vlm_image,
                text_features=data.vlm_text,
            )

        start = time.perf_counter()
        align = fit()
        row["gpua_first_fit_s"] = time.perf_counter() - start
        row["gpua_fit_s"] = best_of(fit, repeats)
        row["gpua_acc"] = float(
            (align.predict(data.vfm_image, data.vlm_text) == data.labels).float().mean()
        )
        row["gpua_fit_concat_s"] = best_of(
            lambda: fit_gpua(vfm_features=z, vlm_features=data.vlm_image,
                             text_features=data.vlm_text), repeats)
        row["peak_rss_gb_after_gpua"] = peak_rss_gb()
    return row


def bench_lazsl(repeats: int, *, n=100, m=90, k=100, a=8, d=D_TEXT) -> dict:
    g = torch.Generator().manual_seed(0)
    glob = torch.randn(n, d, generator=g)
    crops = glob[:, None, :] + 0.5 * torch.randn(n, m, d, generator=g)
    attrs = torch.randn(k, a, d, generator=g)
    mask = torch.rand(k, a, generator=g) < 0.8
    mask[:, 0] = True
    seconds = best_of(lambda: lazsl_scores(glob, crops, attrs, mask), repeats)
    res = lazsl_scores(glob, crops, attrs, mask)
    return {
        "N": n,
        "M": m,
        "K": k,
        "A": a,
        "d": d,
        "lazsl_s": seconds,
        "n_iter": res.n_iter,
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1k,10k,50k", help="comma list of " + ",".join(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpua-sizes", default="1k,10k", help="sizes at which to fit GPUA")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    rows = []
    for label in args.sizes.split(","):
        n, k, d = SIZES[label]
        reps = args.repeats if n <= 10_000 else max(1, args.repeats // 2)
        row = bench_size(label, n, k, d, repeats=reps, gpua=label in args.gpua_sizes.split(","))
        rows.append(row)
        gp = (
            f" | GPUA fit {row['gpua_fit_s']:.2f} s (concat Z {row['gpua_fit_concat_s']:.2f} s;"
            f" first in process {row['gpua_first_fit_s']:.2f} s) acc {row['gpua_acc']:.3f}"
            if "gpua_fit_s" in row
            else ""
        )
        print(
            f"{label:>4} N={n} K={k} d={d}: OTFusion default solve "
            f"{1000 * row['otfusion_default_s']:.0f} ms ({row['otfusion_default_iters']} iters), "
            f"10 iters {1000 * row['otfusion_total_s']:.0f} ms, "
            f"{1000 * row['otfusion_per_iter_s']:.1f} ms/iter vs GEMMs "
            f"{1000 * row['gemm_s']:.1f} ms -> ratio {row['ratio_per_iter_to_gemm']:.2f} "
            f"(amortised with set-up {row['ratio_amortised_to_gemm']:.2f})"
            f"{gp} | acc CLIP {row['clip_acc']:.3f} -> OTFusion {row['otfusion_acc']:.3f}"
            f" | peak RSS {peak_rss_gb():.2f} GB",
            flush=True,
        )
    lz = bench_lazsl(args.repeats)
    print(
        f"LaZSL N={lz['N']} M={lz['M']} K={lz['K']} A={lz['A']}: {lz['lazsl_s']:.2f} s "
        f"({lz['n_iter']} Sinkhorn iterations), peak RSS {lz['peak_rss_gb']:.2f} GB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": rows, "lazsl": lz}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
