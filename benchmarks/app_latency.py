"""Slider-to-new-predictions latency of the app, through its API (DESIGN.md "Performance").

Target: with features cached, moving λ on 1,000 images x 100 classes gives new predictions in
under 0.5 s through the app's API on a 2-core CPU.

How: the app is launched in a child process (as a user would run it) with FUSIONLAB_DEV_API=1,
which adds the undocumented ``/load_synthetic`` endpoint: it fills this client's session with
synthetic features of real size (CLIP 512-d, DINO 768-d) and runs CLIP, OTFusion and GPUA once.
Then ``/resolve`` (the handler the λ / ε / iteration sliders call) is timed through gradio_client
for a sequence of λ values: OTFusion re-solved from the cached features, captions, the gallery
page, metrics figures, convergence curve and the CSV / JSON downloads rewritten, all returned.
The client does not download the returned files (``download_files=False``): a browser fetches
gallery thumbnails lazily and the CSV only on click. The median of the repeats is the result.

    python benchmarks/app_latency.py                       # 1,000 x 100, 10 repeats
    python benchmarks/app_latency.py --n-images 5000 --n-classes 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5

SERVER = """
import sys
sys.path.insert(0, {root!r})
from demo import ui
demo = ui.build_app(dev_api=True)
ui.launch(demo, server_name="127.0.0.1", server_port={port}, quiet=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--n-classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    from gradio_client import Client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, FUSIONLAB_DEV_API="1", GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), port=port)],
                            env=env, cwd=ROOT)
    try:
        _wait(url, proc)
        client = Client(url, verbose=False, download_files=False)
        start = time.perf_counter()
        client.predict(args.n_images, args.n_classes, 0, "otfusion", "all",
                       api_name="/load_synthetic")
        setup = time.perf_counter() - start
        lams = [0.3 + 0.1 * (i % 12) for i in range(args.repeats + 1)]
        times = []
        for i, lam in enumerate(lams):
            start = time.perf_counter()
            out = client.predict(lam=lam, eps=0.01, n_iter=10, compare="otfusion",
                                 filter_mode="all", page=1, api_name="/resolve")
            elapsed = time.perf_counter() - start
            if i > 0:  # the first call warms the server's code paths
                times.append(elapsed)
            assert "OTFusion" in out[0], "the re-solve returned no summary"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    median = statistics.median(times)
    result = {
        "n_images": args.n_images,
        "n_classes": args.n_classes,
        "repeats": len(times),
        "setup_s": round(setup, 3),
        "resolve_median_s": round(median, 4),
        "resolve_min_s": round(min(times), 4),
        "resolve_max_s": round(max(times), 4),
        "target_s": TARGET_S,
        "ok": median < TARGET_S,
        "cpus": os.cpu_count(),
    }
    print(f"app slider re-solve through gradio_client, {args.n_images} images x "
          f"{args.n_classes} classes (features cached; session set up in {setup:.1f} s):")
    print(f"  median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {len(times)} λ changes "
          f"(target < {TARGET_S * 1000:.0f} ms: {'OK' if result['ok'] else 'TOO SLOW'})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
