"""Soak: many API sessions opened and abandoned; the server's memory must come back (issue 13).

The app runs in a child process on 127.0.0.1 with the tiny test models
(``FUSIONLAB_TEST_MODELS=1``), a short session time-to-live (``--ttl``, 30 s) and otherwise its
default limits. Each session is a new gradio_client ``Client`` that uploads a zip of ``--images``
noise PNGs (about 1 MB each, so a session holds a few MB of image bytes), presses Run, moves λ
once and leaves without a goodbye (as an API client always does; a browser tab at least closes).
``--clients`` sessions run at once.

Measured (server RSS from /proc):

- post-warm-up: after ``--warmup`` sessions ran and expired (models loaded, code paths warm);
- peak: the highest RSS while the ``--sessions`` sessions ran (``VmHWM``, reset after warm-up);
- final: after the last session expired (TTL plus one sweep); target within 10% of post-warm-up;
- disk: session work folders, Gradio's upload / file cache folder and the feature cache, at the
  end of the sessions and at the end.

    python benchmarks/soak.py                          # 200 sessions, 4 at a time, TTL 30 s
    python benchmarks/soak.py --sessions 50 --ttl 15   # quicker
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.app_process import disk_bytes, free_port, rss_kib, start_app, stop_app  # noqa: E402

TARGET = 0.10  # final RSS within 10% of the post-warm-up RSS


def make_upload(path: Path, n_images: int, side: int = 600) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n_images):
            cls = ("sky", "grass")[i % 2]
            buf = io.BytesIO()
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
            zf.writestr(f"{cls}/{i}.png", buf.getvalue())
    return path


def one_session(url: str, upload: Path) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    client.predict(files=[handle_file(str(upload))], classes_text="", attributes_file=None,
                   labels_csv=None, methods=["otfusion"], api_name="/run")
    client.predict(lam=0.5, eps=0.01, n_iter=5, api_name="/resolve")
    # abandoned: no close, no further call


def settle(pid: int, seconds: float) -> int:
    """RSS (KiB) after waiting ``seconds`` (sessions expire and are swept meanwhile)."""
    time.sleep(seconds)
    return rss_kib(pid)


def disks(work: Path) -> dict:
    tmp = work / "tmp"
    return {"work folders": disk_bytes(tmp / "fusionlab-sessions"),
            "gradio cache": disk_bytes(work / "gradio"),
            "feature cache": disk_bytes(work / "features")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4, help="sessions running at once")
    parser.add_argument("--images", type=int, default=4, help="PNGs per upload")
    parser.add_argument("--ttl", type=float, default=30.0, help="session time-to-live, seconds")
    parser.add_argument("--max-seconds", type=float, default=1500.0,
                        help="stop starting sessions after this long")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        upload = make_upload(work / "upload.zip", args.images)
        port = free_port()
        env = {"FUSIONLAB_TEST_MODELS": "1", "FUSIONLAB_SESSION_TTL_S": str(args.ttl)}
        start = time.monotonic()
        proc = start_app(port, work, env=env)
        url = f"http://127.0.0.1:{port}/"
        try:
            print(f"upload: {args.images} PNGs, {upload.stat().st_size / 1e6:.1f} MB; TTL "
                  f"{args.ttl:.0f} s; {args.clients} clients at once", flush=True)
            started = rss_kib(proc.pid)
            for _ in range(args.warmup):
                one_session(url, upload)
            warm_live = rss_kib(proc.pid)
            post_warmup = settle(proc.pid, args.ttl + min(60.0, args.ttl / 4) + 5)
            print(f"RSS at start {started / 1024:.0f} MiB; after {args.warmup} warm-up sessions "
                  f"{warm_live / 1024:.0f} MiB live, {post_warmup / 1024:.0f} MiB once they "
                  "expired (post-warm-up)", flush=True)

            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak
            done, failed = 0, 0
            lock = threading.Lock()
            samples: list[int] = []
            t0 = time.monotonic()

            def job(_):
                nonlocal done, failed
                if time.monotonic() - t0 > args.max_seconds:
                    return
                try:
                    one_session(url, upload)
                    ok = True
                except Exception as exc:  # count and go on: the soak measures the server
                    ok = False
                    print(f"session failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                with lock:
                    done += ok
                    failed += not ok
                    samples.append(rss_kib(proc.pid))
                    if (done + failed) % 25 == 0:
                        print(f"  {done + failed} sessions, RSS {samples[-1] / 1024:.0f} MiB, "
                              f"{time.monotonic() - t0:.0f} s", flush=True)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(job, range(args.sessions)))
            seconds = time.monotonic() - t0
            peak = rss_kib(proc.pid, "VmHWM")
            end_rss = rss_kib(proc.pid)
            disk_end = disks(work)
            final = settle(proc.pid, args.ttl + min(60.0, args.ttl / 4) + 5)
            disk_final = disks(work)
        finally:
            stop_app(proc)

    ratio = final / post_warmup - 1
    print(f"\n{done} sessions ({failed} failed) in {seconds:.0f} s; total run "
          f"{time.monotonic() - start:.0f} s")
    print(f"RSS: post-warm-up {post_warmup / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, at the "
          f"end of the sessions {end_rss / 1024:.0f} MiB, final {final / 1024:.0f} MiB "
          f"({ratio:+.1%} vs post-warm-up; target within {TARGET:.0%}: "
          f"{'OK' if abs(ratio) <= TARGET else 'NOT MET'})")
    for label, disk in (("at the end of the sessions", disk_end), ("final", disk_final)):
        print(f"disk {label}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in disk.items()))
    if os.environ.get("SOAK_SAMPLES"):
        print("RSS samples (MiB):", [round(s / 1024) for s in samples])


if __name__ == "__main__":
    main()
