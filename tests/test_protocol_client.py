"""benchmarks.app_process.ProtocolClient (the latency benchmark's browser-protocol client) against
the app with its dev API: the floor endpoint, a synthetic session and a re-solve in that session,
and a failing call reported with the server's message."""

import socket

import pytest

from benchmarks.app_process import ProtocolClient
from demo import ui


@pytest.fixture(scope="module")
def dev_app():
    pytest.importorskip("gradio_client")
    demo = ui.build_app(dev_api=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
              quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        demo.session_store.clear()


def test_protocol_client_runs_a_session_like_a_browser_tab(dev_app):
    client = ProtocolClient(dev_app)
    try:
        assert client.predict(api_name="/ping") == []  # no outputs: the round trip's floor
        client.predict(60, 5, 0, "otfusion", "all", api_name="/load_synthetic")
        out = client.predict(lam=0.45, eps=0.01, n_iter=5, compare="otfusion",
                             filter_mode="all", page=1, api_name="/resolve")
        summary = next(o for o in out if isinstance(o, str) and "OTFusion" in o)
        assert "λ 0.45" in summary  # this session's record, re-solved
        other = ProtocolClient(dev_app)  # another tab: no record of its own yet
        with pytest.raises(RuntimeError, match="/resolve failed"):
            other.predict(lam=5.0, eps=0.01, n_iter=5, api_name="/resolve")  # out of range
        other.close()
    finally:
        client.close()
