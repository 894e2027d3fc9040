"""Peak memory of a small-member zip bomb in the CLI and in the app server (issue 13).

The bomb: ``--members`` members (2,000) of ``--member-bytes`` (1,000,000) zero bytes each, deflated
into a zip of about 2.2 MB; no member is an image. Target: it costs under 200 MB of peak memory in
the CLI and in the server.

- CLI: ``python -m core run --images bomb.zip ...`` in a child process that reports its own peak
  RSS (``getrusage`` at exit); the cost is that peak minus the peak of the same command on a zip
  with one small text member (same imports, same error path).
- Server: the app (tiny test models, ``FUSIONLAB_TEST_MODELS=1``) in a child process; one small
  valid Run warms it up, its peak RSS counter is reset (``/proc/PID/clear_refs``), the bomb is sent
  to ``/run`` through gradio_client, and the cost is the new peak minus the RSS before the upload.

It also loads a legitimate zip (``--legit-images`` noise PNGs of about 1 MB) in this process and
reports what the ``ImageSet`` holds (the image files' bytes, kept so that views can decode them
again) against the peak of Python allocations while loading (tracemalloc).

    python benchmarks/zip_bomb.py                      # both, 2,000 x 1,000,000 bytes
    python benchmarks/zip_bomb.py --skip-server
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.app_process import free_port, rss_kib, start_app, stop_app  # noqa: E402

TARGET_MB = 200
RUN_ARGS = dict(classes_text="", attributes_file=None, labels_csv=None, methods=["otfusion"])

CLI = """
import atexit, resource, sys
sys.path.insert(0, {root!r})
atexit.register(lambda: sys.stderr.write(
    "PEAK_KIB %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
from core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def small_png() -> bytes:
    """A real 16 x 16 PNG: a member that starts with it passes every header check."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_bomb(path: Path, members: int, member_bytes: int, header: bool = False) -> Path:
    zeros = b"\x00" * member_bytes
    if header:  # members that look like PNG images, so only the size checks can stop them
        zeros = small_png() + zeros[len(small_png()):]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"z/{i:05d}.bin", zeros)
    return path


def make_small(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "not an image")
    return path


def cli_peak(zip_path: Path, out: Path) -> tuple[float, float, int, str]:
    """(peak MiB, seconds, exit code, last stderr line) of the CLI on ``zip_path``."""
    cmd = [sys.executable, "-c", CLI.format(root=str(ROOT)), "run", "--images", str(zip_path),
           "--classes", "cat, dog", "--no-cache", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    seconds = time.perf_counter() - start
    peak = re.search(r"PEAK_KIB (\d+)", proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith("PEAK_KIB")]
    return int(peak.group(1)) / 1024, seconds, proc.returncode, (lines[-1] if lines else "")


def server_cost(bomb: Path, work: Path) -> dict:
    from gradio_client import Client, handle_file
    from PIL import Image

    port = free_port()
    proc = start_app(port, work, env={"FUSIONLAB_TEST_MODELS": "1"})
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        good = work / "good.zip"
        with zipfile.ZipFile(good, "w") as zf:
            for name, color in (("sky", (70, 130, 230)), ("grass", (40, 160, 60))):
                for i in range(2):
                    buf = io.BytesIO()
                    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
                    zf.writestr(f"{name}/{i}.png", buf.getvalue())
        client.predict(files=[handle_file(str(good))], **RUN_ARGS, api_name="/run")
        time.sleep(1.0)
        before = rss_kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = time.perf_counter()
        try:
            client.predict(files=[handle_file(str(bomb))], **RUN_ARGS, api_name="/run")
            message = "no error (unexpected)"
        except Exception as exc:  # the app answers with a gr.Error: no usable images
            message = str(exc).splitlines()[0][:160]
        seconds = time.perf_counter() - start
        peak = rss_kib(proc.pid, "VmHWM")
    finally:
        stop_app(proc)
    return {"before_mib": before / 1024, "peak_mib": peak / 1024,
            "cost_mib": (peak - before) / 1024, "seconds": seconds, "message": message}


def imageset_memory(work: Path, n_images: int) -> dict:
    """Bytes an ImageSet holds for a legitimate zip, and the peak while loading it."""
    import tracemalloc

    import numpy as np
    from PIL import Image

    from core.data import load_image_set

    rng = np.random.default_rng(0)
    path = work / "legit.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n_images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(
                buf, format="PNG", compress_level=1)
            zf.writestr(f"c{i % 2}/{i}.png", buf.getvalue())
    load_image_set(path)  # warm-up: first-use imports are not the loader's memory
    tracemalloc.start()
    image_set = load_image_set(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(len(it.data) for it in image_set.items)
    return {"zip_mb": path.stat().st_size / 1e6, "held_mb": held / 1e6, "peak_mb": peak / 1e6,
            "n": len(image_set.items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--member-bytes", type=int, default=1_000_000)
    parser.add_argument("--png-header", action="store_true",
                        help="start each member with a valid PNG (zero padding after it)")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--legit-images", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="zipbomb-") as tmp:
        work = Path(tmp)
        bomb = make_bomb(work / "bomb.zip", args.members, args.member_bytes,
                         args.png_header)
        small = make_small(work / "small.zip")
        print(f"bomb: {args.members:,} members x {args.member_bytes:,} zero bytes"
              f"{' after a PNG header' if args.png_header else ''} = "
              f"{args.members * args.member_bytes / 1e9:.2f} GB expanded, "
              f"{bomb.stat().st_size / 1e6:.2f} MB zipped")
        if not args.skip_cli:
            base, base_s, _, _ = cli_peak(small, work / "out-small")
            peak, secs, code, last = cli_peak(bomb, work / "out-bomb")
            cost = peak - base
            print(f"CLI: peak {peak:.0f} MiB vs {base:.0f} MiB on a one-member zip: cost "
                  f"{cost:.0f} MiB in {secs:.1f} s ({base_s:.1f} s on the one-member zip; exit "
                  f"{code}; target < {TARGET_MB} MB: "
                  f"{'OK' if cost * 1.048576 < TARGET_MB else 'TOO MUCH'})")
            print(f"     last stderr line: {last[:160]}")
        legit = imageset_memory(work, args.legit_images)
        print(f"legitimate zip: {legit['n']} PNGs, {legit['zip_mb']:.1f} MB; the ImageSet holds "
              f"{legit['held_mb']:.1f} MB of image bytes; peak Python allocations while loading "
              f"{legit['peak_mb']:.1f} MB")
        if not args.skip_server:
            res = server_cost(bomb, work)
            print(f"server: RSS {res['before_mib']:.0f} MiB before the upload, peak "
                  f"{res['peak_mib']:.0f} MiB during it: cost {res['cost_mib']:.0f} MiB in "
                  f"{res['seconds']:.1f} s (target < {TARGET_MB} MB: "
                  f"{'OK' if res['cost_mib'] * 1.048576 < TARGET_MB else 'TOO MUCH'})")
            print(f"        answer: {res['message']}")


if __name__ == "__main__":
    main()
