"""Sinkhorn speed: the log-domain loop (``method="log"``) against the default scaling form.

Three shapes the project solves, each timed for both methods on the same inputs (median of
``--repeats`` runs after one warm-up, the two methods interleaved so that load from other
processes hits both alike):

- (a) OTFusion: (N, K) = (10k, 1000), 3 iterations, eps 0.01, S = posteriors + 0.8 zero-shot
  probabilities; also OTFusion's own call (kernel written into a reused (N, K) buffer);
- (b) LaZSL: the (100, 100, 90, 8) masked batch that ``lazsl_scores`` hands to Sinkhorn for 100
  images, 100 classes, 90 crops, 8 attributes (captured from a real call), eps 0.1, tol 1e-6;
  plus ``lazsl_scores`` end to end with either method;
- (c) GPUA's UCM: (1000, 100), eps 0.01, tol 1e-3, the first (cold) round's cost on synthetic
  CLIP/DINO-like features;
- (d) kernels: the CPU primitives behind choices in ``core.solvers.sinkhorn_scaling`` (exp2 vs
  exp, a multiply vs ``masked_fill_``, a row vector times a matrix vs a matrix times a column
  vector, log of exact zeros vs a guarded log), each pair on the same tensors.

    python benchmarks/sinkhorn.py                      # all cases
    python benchmarks/sinkhorn.py --cases kernels      # (d) only
    python benchmarks/sinkhorn.py --repeats 15 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core.methods.lazsl  # noqa: E402
from core.methods.otfusion import LOG2E, _sinkhorn_into  # noqa: E402
from core.methods.zeroshot import zeroshot_probs  # noqa: E402
from core.solvers.sinkhorn import sinkhorn  # noqa: E402
from core.synthetic.features import make_synthetic  # noqa: E402


def paired_medians(old, new, repeats: int) -> tuple[float, float]:
    """Median wall times of ``old`` and ``new``, called alternately after one warm-up each."""
    old(), new()
    t_old, t_new = [], []
    for _ in range(repeats):
        for fn, times in ((old, t_old), (new, t_new)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_old), statistics.median(t_new)


def compare(name: str, cost, kwargs: dict, repeats: int) -> dict:
    """Time sinkhorn(cost, **kwargs) with method="log" and the default; check they agree."""
    ref = sinkhorn(cost, method="log", **kwargs)
    res = sinkhorn(cost, **kwargs)
    t_old, t_new = paired_medians(
        lambda: sinkhorn(cost, method="log", **kwargs), lambda: sinkhorn(cost, **kwargs), repeats
    )
    return {
        "case": name,
        "shape": list(cost.shape),
        "dtype": str(cost.dtype).replace("torch.", ""),
        "eps": kwargs["eps"],
        "tol": kwargs.get("tol"),
        "log_s": t_old,
        "auto_s": t_new,
        "speedup": t_old / t_new,
        "n_iter_log": ref.n_iter,
        "n_iter_auto": res.n_iter,
        "method_auto": res.method,
        "absorptions": res.n_absorptions,
        "max_plan_diff": float((res.plan - ref.plan).abs().max()),
        "marginal_error_auto": res.marginal_error,
    }


def otfusion_case(repeats: int) -> list[dict]:
    n, k, eps = 10_000, 1_000, 0.01
    g = torch.Generator().manual_seed(0)
    post = torch.softmax(8 * torch.randn(n, k, generator=g), 1)  # sharp GMM posteriors
    zs = torch.softmax(2 * torch.randn(n, k, generator=g), 1)  # flatter zero-shot probabilities
    s = post + 0.8 * zs  # (N, K)
    rows = [compare("otfusion (public call)", -s, dict(eps=eps, max_iter=3, tol=0), repeats)]
    # OTFusion itself: S log2(e)/eps and a reused buffer (no 40 MB allocation per call).
    m2, buf = s * (LOG2E / eps), torch.empty_like(s)
    t_old, t_new = paired_medians(
        lambda: sinkhorn(-s, eps=eps, max_iter=3, tol=0, method="log"),
        lambda: _sinkhorn_into(m2, buf, n_iter=3),
        repeats,
    )
    ref = sinkhorn(-s, eps=eps, max_iter=3, tol=0, method="log")
    rows.append({
        "case": "otfusion (in-place, as otfusion() calls it)", "shape": [n, k], "dtype": "float32",
        "eps": eps, "tol": 0.0, "log_s": t_old, "auto_s": t_new, "speedup": t_old / t_new,
        "n_iter_log": 3, "n_iter_auto": 3, "method_auto": "scaling", "absorptions": 0,
        "max_plan_diff": float((buf - ref.plan).abs().max()), "marginal_error_auto": None,
    })
    return rows


def lazsl_inputs(n=100, m=90, k=100, a=8, d=512):
    """Features as in benchmarks/solvers.py and the (cost, mask) lazsl_scores passes on."""
    g = torch.Generator().manual_seed(0)
    glob = torch.randn(n, d, generator=g)
    crops = glob[:, None, :] + 0.5 * torch.randn(n, m, d, generator=g)
    attrs = torch.randn(k, a, d, generator=g)
    attrs = attrs + 2.0 * torch.randn(k, 1, d, generator=g)  # attributes of a class share a topic
    mask = torch.rand(k, a, generator=g) < 0.8
    mask[:, 0] = True
    calls = []
    real = core.methods.lazsl.sinkhorn

    def record(cost, **kwargs):
        calls.append((cost, kwargs))
        return real(cost, **kwargs)

    core.methods.lazsl.sinkhorn = record
    try:
        core.methods.lazsl.lazsl_scores(glob, crops, attrs, mask)
    finally:
        core.methods.lazsl.sinkhorn = real
    assert len(calls) == 1, "expected one batched Sinkhorn call (one block)"
    return (glob, crops, attrs, mask), calls[0]


def lazsl_case(repeats: int) -> list[dict]:
    features, (cost, kwargs) = lazsl_inputs()
    rows = [compare("lazsl (one batched call)", cost, kwargs, repeats)]
    real = core.methods.lazsl.sinkhorn

    def scores(method: str):
        core.methods.lazsl.sinkhorn = lambda c, **kw: real(c, method=method, **kw)
        try:
            return core.methods.lazsl.lazsl_scores(*features)
        finally:
            core.methods.lazsl.sinkhorn = real

    t_old, t_new = paired_medians(lambda: scores("log"), lambda: scores("auto"), repeats)
    old, new = scores("log"), scores("auto")
    rows.append({
        "case": "lazsl_scores end to end", "shape": [100, 100, 90, 8], "dtype": "float32",
        "eps": 0.1, "tol": 1e-6, "log_s": t_old, "auto_s": t_new, "speedup": t_old / t_new,
        "n_iter_log": old.n_iter, "n_iter_auto": new.n_iter, "method_auto": "scaling",
        "absorptions": None, "max_plan_diff": float((new.scores - old.scores).abs().max()),
        "marginal_error_auto": new.marginal_error,
    })
    return rows


def ucm_case(repeats: int) -> list[dict]:
    data = make_synthetic(1_000, 100, seed=0, difficulty="hard")
    norm = torch.nn.functional.normalize
    z, x, text = (norm(t, dim=1) for t in (data.vfm_image, data.vlm_image, data.vlm_text))
    semantic = x @ text.T  # (n, K)
    centres = norm(zeroshot_probs(x, text).T @ z, dim=1)  # barycentres of P0, (K, d_v)
    score = 0.1 * (z @ centres.T) + 0.9 * semantic  # Eq. 10 of GPUA, lam = 0.9
    return [compare("gpua ucm (first round)", -score, dict(eps=0.01, max_iter=1000, tol=1e-3),
                    repeats)]


def kernel_case(repeats: int) -> list[dict]:
    """(d): "old" is the plain primitive, "new" the one the scaling path uses instead."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(10_000, 1_000, generator=g)  # OTFusion's (N, K) kernel
    out = torch.empty_like(big)
    batch = torch.rand(10_000, 90, 8, generator=g)  # LaZSL's (N K, M, A) batch
    batch_t = batch.transpose(1, 2).contiguous()
    mask = torch.rand(batch.shape, generator=g) < 0.8
    scratch = torch.empty_like(batch)
    vec = torch.rand(10_000, 8, generator=g)
    with_zeros = torch.where(torch.rand(10_000, 100, generator=g) < 0.5, 0.0, 1.0)
    guard = (with_zeros == 0).float()
    pairs = [
        ("exp vs exp2 (10k x 1000)", lambda: torch.exp(big, out=out),
         lambda: torch.exp2(big, out=out)),
        # Both are idempotent on batch, so repeats time the same work.
        ("masked_fill_ vs multiply (10k x 90 x 8)", lambda: batch.masked_fill_(~mask, 0.0),
         lambda: batch.mul_(scratch.copy_(mask))),
        ("bmm K v: column vs row vector (10k x 90 x 8)",
         lambda: torch.bmm(batch, vec.unsqueeze(2)),
         lambda: torch.bmm(vec.unsqueeze(1), batch_t)),
        ("log: 50% exact zeros vs none (10k x 100)", lambda: torch.log(with_zeros),
         lambda: torch.log(with_zeros + guard)),
        ("log: 50% exact zeros vs guarded (10k x 100)", lambda: torch.log(with_zeros),
         lambda: torch.log(with_zeros + guard).masked_fill_(guard > 0, float("-inf"))),
    ]
    rows = []
    for name, old, new in pairs:
        t_old, t_new = paired_medians(old, new, repeats)
        rows.append({
            "case": name, "shape": [], "dtype": "float32", "eps": None, "tol": None,
            "log_s": t_old, "auto_s": t_new, "speedup": t_old / t_new, "n_iter_log": "-",
            "n_iter_auto": "-", "method_auto": None, "absorptions": None, "max_plan_diff": 0.0,
            "marginal_error_auto": None,
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--cases", default="otfusion,lazsl,ucm,kernels")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {"otfusion": otfusion_case, "lazsl": lazsl_case, "ucm": ucm_case,
             "kernels": kernel_case}
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"median of {args.repeats}")
    print(f"{'case':44s} {'shape':>20s} {'log ms':>9s} {'auto ms':>9s} {'speedup':>8s} "
          f"{'iters':>9s} {'max |diff|':>10s}")
    for name in args.cases.split(","):
        for row in cases[name](args.repeats):
            rows.append(row)
            shape = "x".join(map(str, row["shape"]))
            print(f"{row['case']:44s} {shape:>20s} {1e3 * row['log_s']:9.1f} "
                  f"{1e3 * row['auto_s']:9.1f} {row['speedup']:7.1f}x "
                  f"{row['n_iter_log']:>4}/{row['n_iter_auto']:<4} {row['max_plan_diff']:10.1e}")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "repeats": args.repeats, "machine": platform.machine()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
