"""The app in a child process, as a user runs it, for the memory benchmarks (not a benchmark).

``start_app(port, work)`` launches ``demo.ui`` on 127.0.0.1 with its feature cache, Gradio's upload
folder and the system temp folder (session work folders) under ``work``, so a benchmark can
measure the disk they use; ``rss_kib`` reads the child's memory from ``/proc``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = """
import sys
sys.path.insert(0, {root!r})
from demo import ui
demo = ui.build_app()
ui.launch(demo, server_name="127.0.0.1", server_port={port}, quiet=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, work: Path, *, env: dict | None = None, timeout: float = 180.0,
              server: str = SERVER) -> subprocess.Popen:
    """Launch the app and wait until it answers; its temp, upload and cache folders in ``work``.
    ``env`` adds or overrides environment variables; ``server`` is the child's script (with
    ``{root}`` and ``{port}``)."""
    tmp = work / "tmp"
    for sub in ("tmp", "gradio", "features"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp),
                 "GRADIO_TEMP_DIR": str(work / "gradio"),
                 "FUSIONLAB_CACHE_DIR": str(work / "features"),
                 "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", server.format(root=str(ROOT), port=port)],
                            env=child_env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/config"
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise TimeoutError(f"the app did not answer on port {port} within {timeout:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def disk_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
