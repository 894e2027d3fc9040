"""Slider-to-new-results latency of the app, through its API (DESIGN.md "Performance").

Targets, on a 2-core CPU:
- the main app: with features cached, moving λ on 1,000 images x 100 classes gives new
  predictions in under 0.5 s;
- the Playground: moving its λ slider at 3,000 synthetic samples gives new plots in under 0.3 s.

How: the app is launched in a child process (as a user would run it) with FUSIONLAB_DEV_API=1,
which adds two undocumented endpoints: ``/load_synthetic`` fills the caller's session with
synthetic features of real size (CLIP 512-d, DINO 768-d) and runs CLIP, OTFusion and GPUA once;
``/ping`` does nothing (the floor: queue, events and client alone). The server runs
``demo.warmup`` before it opens and not again in the background, so it does not compete with the
timed moves.

Two clients, each its own session, alternating call by call (a busy spell of this shared machine
hits both): the browser protocol (``benchmarks.app_process.ProtocolClient``: Gradio's HTTP +
server-sent-events protocol on one connection, what the page's JavaScript does) and
gradio_client, whose own threads and 50 ms polling add ~130 ms to every call here (its floor).
The targets are a user's wait, so they are judged on the browser protocol; gradio_client's
figures are reported beside them.

- Main app: ``/resolve`` (the handler the λ / ε / iteration sliders call) for a sequence of
  distinct λ values: OTFusion re-solved from the cached features, the summary, the gallery page
  (captions) and the CSV / JSON downloads rewritten, as the page gets them with its Predictions
  tab open (a session starts with the page's tab state; Metrics and Dynamics figures are drawn
  when their tab is open, ``/refresh`` returns every view). Returned files are not downloaded: a
  browser fetches gallery thumbnails lazily (static files, cached) and the CSV only on click.
- Playground: ``/playground`` at ``--play-samples`` samples, once to generate (untimed: the
  setup), then a sequence of λ values (what the page's λ slider sends: every input, the
  session's ``play_shown`` state on the server): OTFusion re-solved, the accuracy and source-weight
  charts redrawn, the maps and gap chart skipped. A few moves of the DINO-noise slider
  (``--data-moves``), which regenerate the data, refit GPUA and redraw every chart, are timed
  too and reported apart.

The first move of each sequence warms the server's code paths and is not counted; median and max
of the rest are the results.

    python benchmarks/app_latency.py                       # 20 moves of each
    python benchmarks/app_latency.py --n-images 5000 --n-classes 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.app_process import ProtocolClient, free_port, start_app, stop_app  # noqa: E402

TARGET_S = {"resolve": 0.5, "playground": 0.3}
CLIENTS = {"protocol": "browser protocol (HTTP + server-sent events, as the page's JS client)",
           "gradio_client": "gradio_client (Python; adds its own ~130 ms per call here)"}

SERVER = """
import sys
sys.path.insert(0, {root!r})
import os
from demo import ui, warmup
warmup.warm_up()
os.environ["FUSIONLAB_WARM_UP"] = "0"  # done: launch must not start it again
demo = ui.build_app(dev_api=True)
ui.launch(demo, server_name="127.0.0.1", server_port={port}, quiet=True)
"""


def _timed(call, values, check) -> list[float]:
    """Seconds per ``call(value)`` after the first (which warms the server's code paths)."""
    times = []
    for i, value in enumerate(values):
        start = time.perf_counter()
        out = call(value)
        elapsed = time.perf_counter() - start
        if i > 0:
            times.append(elapsed)
        check(out)
    return times


def _says_otfusion(out) -> bool:
    """A re-solve's outputs carry the summary / note naming OTFusion (wherever the client puts
    it: the protocol's outputs keep the state slots, gradio_client's drop them)."""
    return any(isinstance(o, str) and "OTFusion" in o for o in out)


def _stats(times: list[float], target: float | None = None) -> dict:
    row = {"moves": len(times), "median_s": round(statistics.median(times), 4),
           "min_s": round(min(times), 4), "max_s": round(max(times), 4)}
    if target is not None:
        row.update(target_s=target, ok=row["median_s"] < target and row["max_s"] < target)
    return row


def _report(name: str, row: dict) -> str:
    verdict = "" if "ok" not in row else (
        f" (target < {row['target_s'] * 1000:.0f} ms: {'OK' if row['ok'] else 'TOO SLOW'})")
    return (f"  {name}: median {row['median_s'] * 1000:.0f} ms, min {row['min_s'] * 1000:.0f} ms, "
            f"max {row['max_s'] * 1000:.0f} ms over {row['moves']} moves{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--n-classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="timed λ moves of each slider")
    parser.add_argument("--play-samples", type=int, default=3000)
    parser.add_argument("--data-moves", type=int, default=5,
                        help="timed DINO-noise moves of the Playground (data regenerated)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    from gradio_client import Client

    # Distinct λ values on the slider's 0.05 grid: no move reuses a solve cached by an earlier one.
    lams = [round(0.3 + 0.05 * i, 2) for i in range(args.repeats + 1)]
    knobs = dict(n_classes=10, n_samples=args.play_samples, gap=0.8, vlm_noise=2.95, seed=0,
                 projection="pca", recipe="paper", preset="hard")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    times = {kind: {"ping": [], "resolve": [], "playground": []} for kind in CLIENTS}
    with tempfile.TemporaryDirectory() as work:
        proc = start_app(port, Path(work), env={"FUSIONLAB_DEV_API": "1"}, server=SERVER,
                         timeout=600.0)
        try:
            # Each client is its own session (a browser tab): its own record and Playground.
            clients = {"protocol": ProtocolClient(url),
                       "gradio_client": Client(url, verbose=False, download_files=False)}
            setup = {}
            for kind, client in clients.items():
                start = time.perf_counter()
                client.predict(args.n_images, args.n_classes, 0, "otfusion", "all",
                               api_name="/load_synthetic")
                client.predict(**knobs, lam=0.8, vfm_noise=2.0, api_name="/playground")
                setup[kind] = time.perf_counter() - start
            calls = {
                "ping": lambda c, lam: c.predict(api_name="/ping"),
                "resolve": lambda c, lam: c.predict(lam=lam, eps=0.01, n_iter=10,
                                                    compare="otfusion", filter_mode="all",
                                                    page=1, api_name="/resolve"),
                "playground": lambda c, lam: c.predict(**knobs, lam=lam, vfm_noise=2.0,
                                                       api_name="/playground"),
            }
            for what, call in calls.items():
                for i, lam in enumerate(lams):  # the clients alternate: a busy spell hits both
                    for kind, client in clients.items():
                        start = time.perf_counter()
                        out = call(client, lam)
                        elapsed = time.perf_counter() - start
                        if what != "ping":
                            assert _says_otfusion(out), f"{what} ({kind}) returned no summary"
                        if i > 0:  # the first call warms the server's code paths
                            times[kind][what].append(elapsed)
            play = clients["protocol"]
            noises = [2.0 + 0.1 * (i + 1) for i in range(args.data_moves + 1)]
            data_times = _timed(lambda v: play.predict(**knobs, lam=lams[-1], vfm_noise=v,
                                                       api_name="/playground"),
                                noises, lambda out: None)
            clients["protocol"].close()
        finally:
            stop_app(proc)

    result = {kind: {"ping": _stats(t["ping"]),
                     "resolve": {"n_images": args.n_images, "n_classes": args.n_classes,
                                 **_stats(t["resolve"], TARGET_S["resolve"])},
                     "playground_lam": {"n_samples": args.play_samples,
                                        **_stats(t["playground"], TARGET_S["playground"])},
                     "setup_s": round(setup[kind], 3)}
              for kind, t in times.items()}
    result.update(playground_data={"n_samples": args.play_samples, **_stats(data_times)},
                  cpus=os.cpu_count(), load_after=os.getloadavg())
    print(f"app slider round trips (load after: "
          f"{', '.join(f'{x:.2f}' for x in result['load_after'])}):")
    for kind, title in CLIENTS.items():
        row = result[kind]
        print(f" {title}:")
        print(_report("floor (/ping, no work)", row["ping"]))
        print(_report(f"main app λ, {args.n_images} images x {args.n_classes} classes",
                      row["resolve"]))
        print(_report(f"Playground λ, {args.play_samples} samples", row["playground_lam"]))
    print(_report(f"Playground DINO noise, {args.play_samples} samples (new data, GPUA refit, "
                  "every chart; browser protocol)", result["playground_data"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
