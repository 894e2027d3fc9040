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


class ProtocolClient:
    """Calls an app's named endpoints over Gradio's own HTTP + server-sent-events protocol, as
    the page's JavaScript client does: POST ``queue/join``, then read ``queue/data`` until the
    event completes, on one kept-alive connection.

    Why, next to gradio_client: gradio_client's own machinery (a thread per call, a new
    connection per request, 50 ms polling of its message queue) adds ~130 ms to every round
    trip on this 2-core machine (an echo endpoint: 156 ms through gradio_client, 21 ms this way),
    which a visitor's browser never pays. The endpoints' parameters are read with gradio_client
    (``construct_args``, its state-slot filling), so a call takes the same keyword arguments.
    Only values, no file uploads. Its own session (``session_hash``), as a browser tab has.
    """

    def __init__(self, url: str):
        import uuid

        import httpx
        from gradio_client import Client

        self._info = Client(url, verbose=False, download_files=False)
        self._http = httpx.Client(base_url=url.rstrip("/") + "/gradio_api", timeout=600)
        self.session_hash = uuid.uuid4().hex

    def predict(self, *args, api_name: str, **kwargs):
        """The endpoint's outputs (a list), like ``gradio_client.Client.predict``; RuntimeError
        with the server's message when the event fails."""
        import json

        from gradio_client import utils

        endpoint = self._info.endpoints[self._info._infer_fn_index(api_name, None)]
        data = endpoint.insert_empty_state(
            *utils.construct_args(endpoint.parameters_info, args, kwargs))
        ids = {"fn_index": endpoint.fn_index, "session_hash": self.session_hash}
        join = self._http.post("/queue/join", json={"data": list(data), "event_data": None,
                                                    "trigger_id": None, **ids})
        join.raise_for_status()
        with self._http.stream("GET", "/queue/data",
                               params={"session_hash": self.session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if not message.get("success", False):
                        raise RuntimeError(f"{api_name} failed: {output.get('error')}")
                    return output.get("data")
        raise RuntimeError(f"{api_name}: the event stream ended without a result")

    def close(self) -> None:
        self._http.close()
