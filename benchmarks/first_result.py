"""Time to first result at real size: what a user waits for after Run (issue 12).

60 photo-like JPEGs (``benchmarks.fast_paths.natural_images``), the full-size random-weight
CLIP ViT-B/16 and DINOv2-B of ``core.models.realsize`` (nothing is downloaded), an empty feature
cache. Each path reports when each method's result became visible, in seconds after the start:

- ``cli``: ``python -m core run`` in a child process (its imports included), timed by the lines
  it prints as each stage's methods are solved;
- ``app``: the app launched in a child process, ``/run`` submitted through gradio_client, timed
  by the outputs the Run streams (CLIP zero-shot first, then the fused methods, then LaZSL);
  then ``--slider-moves`` lambda changes through ``/resolve`` (median and max), through
  gradio_client (``slider_*``) and, alternating with it on the same session, through the
  browser's protocol (``slider_protocol_*``, ``benchmarks.app_process.ProtocolClient``).

Targets (2-core CPU): CLIP zero-shot <= 15 s, OTFusion and GPUA <= 30 s, LaZSL never blocks them,
slider round trip <= 0.4 s median.

    python benchmarks/first_result.py                      # both paths, 60 images, 16 crops
    python benchmarks/first_result.py --paths app --precision fp32   # the exact path
    python benchmarks/first_result.py --paths app --cold   # Run while the app still warms up
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.app_process import ProtocolClient, free_port, start_app, stop_app  # noqa: E402
from benchmarks.fast_paths import natural_images  # noqa: E402

CLASSES = "sky, tree, car, house, dog, cat, person, boat, flower, mountain"
METHOD_NAMES = {"clip": "CLIP zero-shot", "otfusion": "OTFusion", "gpua": "GPUA", "lazsl": "LaZSL"}
CLI = """
import sys
sys.path.insert(0, {root!r})
from core.models.realsize import realsize_models
realsize_models()
from core.cli import main
sys.exit(main({argv!r}))
"""
# The child runs the app's start-up warm-up (demo.warmup: the default models' one-time setup such
# as the onnx-int8 export, the GPUA and UMAP warm-ups) before it serves, and writes how long that
# took to $FIRST_RESULT_WARM_FILE: the Run is then timed as a visitor of a Space that has started
# meets it. With --cold the app serves at once and warms up in the background, as after a restart.
SERVER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from core.models.realsize import realsize_models
keys = realsize_models()
from demo import ui, warmup
demo = ui.build_app(extra_models=[keys["clip"], keys["dinov2"]])
if os.environ.get("FIRST_RESULT_WARM_FILE"):
    start = time.perf_counter()
    parts = warmup.warm_up(models=demo.default_models)
    with open(os.environ["FIRST_RESULT_WARM_FILE"], "w") as f:
        json.dump(dict(total=time.perf_counter() - start, **parts), f)
    os.environ["FUSIONLAB_WARM_UP"] = "0"  # done: launch must not start it again
ui.launch(demo, server_name="127.0.0.1", server_port={port}, quiet=True)
"""


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` photo-like JPEGs (the generator's images repeated with a different crop each)."""
    base = natural_images(n_generated=max(24, n))
    paths = []
    for i in range(n):
        image = base[i % len(base)]
        w, h = image.size
        image = image.crop((i % 7, i % 5, w - (i % 3), h - (i % 4)))  # distinct content hashes
        path = folder / f"photo_{i:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def time_cli(images: Path, args, env: dict) -> dict[str, float]:
    """Seconds after launch at which the CLI printed each method's result line."""
    from core.models.realsize import realsize_models

    keys = realsize_models()
    argv = ["run", "--images", str(images), "--classes", CLASSES, "--vlm", keys["clip"],
            "--vfm", keys["dinov2"], "--methods", "clip,otfusion,gpua,lazsl",
            "--n-crops", str(args.n_crops), "--precision", args.precision,
            "--out", str(images.parent / "cli-out")]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CLI.format(root=str(ROOT), argv=argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=ROOT)
    seen = {}
    for line in proc.stdout:
        name = line.split(" ", 1)[0]
        if name in METHOD_NAMES and name not in seen:
            seen[name] = time.perf_counter() - start
    proc.wait()
    seen["exit"] = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI exited with code {proc.returncode}")
    return seen


def time_app(paths: list[Path], args, env: dict) -> dict[str, float]:
    """Seconds after submitting ``/run`` at which each method's result was streamed, then the
    slider round trips."""
    from gradio_client import Client, handle_file

    from core.models.realsize import realsize_models

    keys = realsize_models()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="first-result-app-"))
    # start_app puts the feature cache (empty), uploads and temp folders under ``work`` itself
    warm_file = work / "warm-up.json"
    child_env = {"HF_HUB_OFFLINE": env["HF_HUB_OFFLINE"],
                 "FUSIONLAB_WARM_UP": "1" if args.cold else "0",
                 "FIRST_RESULT_WARM_FILE": "" if args.cold else str(warm_file)}
    proc = start_app(port, work, env=child_env, timeout=900, server=SERVER)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        start = time.perf_counter()
        job = client.submit(files=[handle_file(str(p)) for p in paths], classes_text=CLASSES,
                            vlm=[keys["clip"]], vfm=[keys["dinov2"]],
                            methods=["otfusion", "gpua", "lazsl"], n_crops=args.n_crops,
                            precision=args.precision, attributes_file=None, labels_csv=None,
                            api_name="/run")
        seen = {}
        if warm_file.exists():  # before the Run: the app's start-up, not part of the wait
            warm = json.loads(warm_file.read_text())
            seen.update({f"warm-up {k}": v for k, v in warm.items()})
        for output in job:
            now = time.perf_counter() - start
            # the status line says what is ready: "**CLIP zero-shot ready** after ...", then
            # "**CLIP zero-shot, OTFusion, GPUA ready** ...", and "Features ready" at the end
            status = next((str(o) for o in output if isinstance(o, str) and " ready" in o), "")
            ready = status.split(" ready", 1)[0]
            for name, title in METHOD_NAMES.items():
                if name not in seen and (title in ready or "Features ready" in status):
                    seen[name] = now
        job.result()
        seen["done"] = time.perf_counter() - start
        # The same session through the browser's protocol too (benchmarks.app_process), the
        # two clients alternating: gradio_client's own polling adds ~150 ms a call.
        browser = ProtocolClient(f"http://127.0.0.1:{port}/")
        browser.session_hash = client.session_hash
        moves = {"slider": [], "slider_protocol": []}
        for i in range(args.slider_moves + 1):
            for name, caller in (("slider", client), ("slider_protocol", browser)):
                t0 = time.perf_counter()
                caller.predict(lam=round(0.3 + 0.05 * i + (0.01 if caller is browser else 0), 2),
                               eps=0.01, n_iter=10, compare="otfusion", filter_mode="all",
                               page=1, api_name="/resolve")
                if i:  # the first move warms the handler's code paths
                    moves[name].append(time.perf_counter() - t0)
        browser.close()
        for name, times in moves.items():
            if times:
                seen[f"{name}_median"] = statistics.median(times)
                seen[f"{name}_max"] = max(times)
        return seen
    finally:
        stop_app(proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=60)
    parser.add_argument("--n-crops", type=int, default=16)
    parser.add_argument("--paths", default="cli,app")
    parser.add_argument("--slider-moves", type=int, default=20)
    parser.add_argument("--precision", default="auto",
                        help="the encoders' precision (core.config.PRECISIONS); the app's CPU "
                             "default is auto")
    parser.add_argument("--cold", action="store_true",
                        help="app path: submit the Run as soon as the app answers, its start-up "
                             "warm-up still running (default: after the warm-up, reported apart)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-result-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = write_images(folder, args.n_images)
        for path in args.paths.split(","):
            cache = Path(tmp) / f"cache-{path}"  # empty: every feature is computed
            env = dict(os.environ, FUSIONLAB_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
                       GRADIO_ANALYTICS_ENABLED="False")
            load = os.getloadavg()[0]
            seen = time_cli(folder, args, env) if path == "cli" else time_app(paths, args, env)
            cells = ", ".join(f"{k} {v:.2f} s" for k, v in seen.items())
            print(f"{path}: {args.n_images} images, {args.n_crops} crops, {args.precision}, "
                  f"load {load:.1f}: {cells}", flush=True)


if __name__ == "__main__":
    main()
