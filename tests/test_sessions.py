"""Session lifecycle and what users are told (issue 13): the server-side session store (time to
live, caps, least recently used eviction, work folders removed, a message for users who come
back), messages without server paths, names escaped exactly once, controls named in input
errors. Unit tests on the store with a fake clock, handler tests with the tiny test models, and
the launched app through gradio_client."""

from __future__ import annotations

import io
import socket
import tempfile
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import gradio as gr
import pytest
import torch
from markdown_it import MarkdownIt
from PIL import Image

from core.config import MethodSettings
from core.data import ImageItem, SkippedFile
from core.methods import FeatureSet
from core.models.tiny import tiny_test_models
from core.pipeline import Extraction, ExtractSettings
from demo import run as cb
from demo import ui
from demo.memory import estimate_bytes
from demo.messages import md_code, md_text, scrub_paths
from demo.state import Session
from demo.store import SessionStore, StoreLimits

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)")]
EVIL = "<img src=x onerror=alert(1)>.png"
AMP = "it's & co.png"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(tmp_path: Path, name: str, nbytes: int = 1000) -> Session:
    workdir = tmp_path / f"work-{name}"
    workdir.mkdir()
    (workdir / "thumb.jpg").write_bytes(b"jpeg")
    item = ImageItem(name=f"{name}.png", data=b"\0" * nbytes, sha256="0" * 64, label=None,
                     format="PNG", size=(1, 1))
    extraction = Extraction(features=FeatureSet(vlm_image=torch.zeros(1, 4),
                                                text=torch.zeros(2, 4)),
                            items=(item,), class_names=("a", "b"),
                            settings=ExtractSettings(vlm="x", vfm=None))
    return Session(extraction=extraction, methods=("clip",), settings=MethodSettings(),
                   results={}, workdir=str(workdir), thumbs=())


def store(**limits) -> tuple[SessionStore, Clock]:
    clock = Clock()
    return SessionStore(StoreLimits(**limits), clock=clock, sweep_every_s=0), clock


def expired_message(st: SessionStore, key: str) -> str:
    with pytest.raises(gr.Error) as excinfo:
        st.get(key)
    return str(excinfo.value.message)


# ----------------------------------------------------------------------------- the store


def test_sessions_expire_after_the_ttl_and_their_folder_goes(tmp_path):
    st, clock = store(ttl_s=60)
    a = session(tmp_path, "a")
    st.put("A", a)
    clock.now += 59
    assert st.get("A") is a  # a use restarts the clock
    clock.now += 59
    assert st.get("A") is a
    clock.now += 61
    assert "unused for more than 60 seconds" in expired_message(st, "A")
    assert not Path(a.workdir).exists() and len(st) == 0
    assert "Press Run again" in expired_message(st, "A")


def test_the_least_recently_used_session_goes_past_the_count_cap(tmp_path):
    st, clock = store(max_sessions=2)
    a, b, c = (session(tmp_path, n) for n in "abc")
    st.put("A", a)
    clock.now += 1
    st.put("B", b)
    clock.now += 1
    st.get("A")  # A is now more recent than B
    st.put("C", c)
    assert st.get("A") is a and st.get("C") is c and len(st) == 2
    message = expired_message(st, "B")
    assert "at most 2 sessions" in message and "least recently used" in message
    assert not Path(b.workdir).exists() and Path(a.workdir).exists()


def test_the_byte_cap_evicts_others_never_the_arriving_session(tmp_path):
    one = estimate_bytes(session(tmp_path, "probe", 100_000))
    st, _ = store(max_bytes=int(2.5 * one))
    a, b, c = (session(tmp_path, n, 100_000) for n in "abc")
    for key, s in (("A", a), ("B", b), ("C", c)):
        st.put(key, s)
    assert len(st) == 2 and st.nbytes <= 2.5 * one
    assert "MB of sessions" in expired_message(st, "A")
    huge = session(tmp_path, "huge", 10 * one)
    st.put("H", huge)
    assert st.get("H") is huge and len(st) == 1  # alone over the cap: kept, the rest evicted


def test_a_new_run_removes_the_previous_runs_folder(tmp_path):
    st, _ = store()
    first, second = session(tmp_path, "first"), session(tmp_path, "second")
    st.put("A", first)
    st.put("A", second)
    assert not Path(first.workdir).exists() and Path(second.workdir).exists()
    st.put("A", second)  # the same session again (a re-solve): its folder stays
    assert Path(second.workdir).exists() and st.get("A") is second


def test_a_handler_never_revives_a_session_dropped_while_it_ran(tmp_path):
    st, _ = store(max_sessions=1)
    a, b = session(tmp_path, "a"), session(tmp_path, "b")
    st.put("A", a)
    st.put("B", b)  # A dropped (its folder too) while a slow handler of A was still running
    assert st.update("A", a, a) is False and len(st) == 1
    assert "no longer on the server" in expired_message(st, "A")
    b2 = session(tmp_path, "b2")
    assert st.update("B", b, b2) is True and st.get("B") is b2
    assert not Path(b.workdir).exists()  # replaced by a session with another folder


def test_closed_tabs_are_forgotten_quietly(tmp_path):
    st, _ = store()
    a = session(tmp_path, "a")
    st.put("A", a)
    st.discard("A")
    assert st.get("A") is None and not Path(a.workdir).exists()
    assert st.get(None) is None and st.get("never-seen") is None


def test_estimate_counts_bytes_tensors_and_memos_once(tmp_path):
    s = session(tmp_path, "a", 5000)
    base = estimate_bytes(s)
    assert base >= 5000 + 4 * 4 + 2 * 4 * 4
    big = torch.zeros(1000)
    s.memo["x"] = big
    s.memo["view"] = big[:10]  # a view of the same storage
    s.memo["y"] = [b"\0" * 300]
    assert estimate_bytes(s) == base + 4000 + 300


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("FUSIONLAB_SESSION_TTL_S", "90")
    monkeypatch.setenv("FUSIONLAB_MAX_SESSIONS", "7")
    monkeypatch.setenv("FUSIONLAB_SESSIONS_MAX_BYTES", "512MiB")
    assert StoreLimits.from_env() == StoreLimits(ttl_s=90, max_sessions=7,
                                                 max_bytes=512 * 1024**2)
    monkeypatch.setenv("FUSIONLAB_MAX_SESSIONS", "0")
    with pytest.raises(ValueError, match="max_sessions"):
        StoreLimits.from_env()


# ----------------------------------------------------------------------------- messages


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def rendered(markdown: str) -> tuple[str, list[str]]:
    """What a CommonMark renderer shows: (visible text, HTML tags)."""
    parser = _Text()
    parser.feed(MarkdownIt("commonmark").render(markdown))
    return "".join(parser.text).strip(), parser.tags


def test_notes_show_names_exactly_once_escaped():
    notes = cb._notes_markdown([f"class {AMP} and *stars* and [link](http://x)"],
                               [SkippedFile(EVIL, "not an image"),
                                SkippedFile("a`b``c.png", "it's <b>bad</b> & broken")])
    text, tags = rendered(notes)
    assert EVIL in text and AMP in text and "a`b``c.png" in text
    assert "it's <b>bad</b> & broken" in text and "*stars*" in text and "[link](http://x)" in text
    assert "&lt;" not in text and "&amp;" not in text and "&#x27;" not in text
    assert "img" not in tags and "b" not in tags and "a" not in tags and "em" not in tags


@pytest.mark.parametrize("name", [EVIL, AMP, "`tick", "x  y", "[a](b)", "_under_"])
def test_md_helpers_round_trip(name):
    assert rendered(md_text(name))[0] == " ".join(name.split())
    assert rendered(md_code(name))[0] == " ".join(name.split())


def test_server_paths_are_scrubbed(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "0a1b2c" / "my labels.csv"
    text = scrub_paths(f"labels_csv: cannot read {upload} (bad byte); see {tempfile.gettempdir()}")
    assert str(tmp_path) not in text and tempfile.gettempdir() not in text
    assert "my labels.csv (bad byte)" in text
    assert scrub_paths("C:/Users/me is not ours, nor /etc/hosts") == (
        "C:/Users/me is not ours, nor /etc/hosts")


def test_app_limits_on_classes_and_upload_bytes(monkeypatch, tmp_path):
    from core.data import ImageSet
    from demo.inputs import MAX_CLASSES, read_images, resolve_classes

    names = "\n".join(f"class {i}" for i in range(MAX_CLASSES + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_CLASSES:,}"):
        resolve_classes(names, ImageSet(items=()))
    assert len(resolve_classes(names.rsplit("\n", 1)[0], ImageSet(items=()))[0]) == MAX_CLASSES
    data = _png((10, 0, 0))
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(data)
    monkeypatch.setenv("FUSIONLAB_MAX_UPLOAD_BYTES", str(2 * len(data) + 10))
    image_set = read_images([str(tmp_path / f"{i}.png") for i in range(3)])
    assert len(image_set.items) == 2 and "total size limit" in image_set.skipped[0].reason


# ----------------------------------------------------------------------------- handlers


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


@pytest.fixture(scope="module")
def odd_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("odd") / "odd.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
            zf.writestr(f"img{i}.png", _png(color))
        zf.writestr(AMP, _png((90, 90, 90)))
        zf.writestr(EVIL, b"not an image at all")
    return path


def _run(keys, files, tmp_path, **options):
    args = dict(vlm=keys["clip_vit"], vfm=keys["dinov2"], methods=["otfusion"],
                classes_text="red, green", cache_dir=str(tmp_path / "cache"))
    args.update(options)
    cache_dir = args.pop("cache_dir")
    return cb.run(dict(files=[str(f) for f in files], **args), cache_dir=cache_dir)


def test_run_notes_and_names_through_the_handler(keys, odd_zip, tmp_path):
    out = _run(keys, [odd_zip], tmp_path)
    text, tags = rendered(out.notes["value"])
    assert EVIL in text and "img" not in tags
    assert AMP in [name.split(". ", 1)[1] for name, _ in out.seg_pick["choices"]]


def test_a_malformed_labels_csv_does_not_show_the_server_path(keys, odd_zip, tmp_path):
    bad = tmp_path / "uploads" / "labels.csv"
    bad.parent.mkdir()
    bad.write_bytes(b"img0.png,red\n\xff\xfe\xfa broken")
    with pytest.raises(gr.Error) as excinfo:
        _run(keys, [odd_zip], tmp_path, labels_csv=str(bad))
    message = str(excinfo.value.message)
    assert "labels.csv" in message and str(bad.parent) not in message
    assert tempfile.gettempdir() not in message


def test_missing_weights_message_has_no_server_folder(odd_zip, tmp_path, monkeypatch):
    hub = tmp_path / "private-hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with pytest.raises(gr.Error) as excinfo:
        cb.run(dict(files=[str(odd_zip)], classes_text="a, b", vlm="clip-vit-b16",
                    vfm="dinov2-base", methods=["otfusion"]), cache_dir=str(tmp_path / "cache"))
    message = str(excinfo.value.message)
    assert "CLIP ViT-B/16" in message and "python -m core download clip-vit-b16" in message
    assert str(hub) not in message and "private-hub-cache" not in message


def test_an_empty_zip_says_so(keys, tmp_path):
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(gr.Error) as excinfo:
        _run(keys, [empty], tmp_path)
    message = str(excinfo.value.message)
    assert "no files" in message and "skipped ()" not in message


# ----------------------------------------------------------------------------- the launched app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gradio_client = pytest.importorskip("gradio_client")
    keys = tiny_test_models()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path_factory.mktemp("features")))
        demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"]],
                            store_limits=StoreLimits(max_sessions=2))
        port = _free_port()
        ui.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
                  quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", demo, gradio_client
        finally:
            demo.close()
            demo.session_store.clear()


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("client") / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, color in (("sky", (70, 130, 230)), ("grass", (40, 160, 60))):
            for i in range(2):
                zf.writestr(f"{name}/{i}.png", _png(tuple(max(0, c - 30 * i) for c in color)))
    return path


def _client_run(gc, url, upload):
    client = gc.Client(url, verbose=False, download_files=False)
    client.predict(files=[gc.handle_file(str(upload))], classes_text="", attributes_file=None,
                   labels_csv=None, methods=["otfusion"], api_name="/run")
    return client


def _app_error(gc, fn, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as excinfo:
        fn(**kwargs)
    return str(excinfo.value)


def test_range_and_choice_errors_name_their_control(app):
    url, _, gc = app
    client = gc.Client(url, verbose=False, download_files=False)
    message = _app_error(gc, client.predict, lam=5.0, eps=0.01, n_iter=10,
                         api_name="/resolve")
    assert "OTFusion λ (weight of each VLM)" in message and "maximum" in message
    message = _app_error(gc, client.predict, lam=0.5, eps=0.01, n_iter=10, compare="nope",
                         api_name="/resolve")
    assert "Compare with CLIP" in message
    message = _app_error(gc, client.predict, gpua_lam=0.5, gpua_eps=0.01, gpua_targets="soft",
                         gpua_ths_steps=-10, api_name="/resolve_gpua")
    assert "THS refinement steps" in message


def test_sessions_live_on_the_server_with_caps_and_folders_removed(app, upload):
    url, demo, gc = app
    st = demo.session_store
    first = _client_run(gc, url, upload)
    folder = Path(st.get(first.session_hash).workdir)
    assert folder.is_dir()
    again = first.predict(files=[gc.handle_file(str(upload))], classes_text="",
                          attributes_file=None, labels_csv=None, methods=["otfusion"],
                          api_name="/run")
    assert again and not folder.exists()  # the second Run removed the first Run's folder
    folder = Path(st.get(first.session_hash).workdir)
    first.predict(lam=0.3, eps=0.01, n_iter=5, api_name="/resolve")  # first is the most recent
    _client_run(gc, url, upload)
    _client_run(gc, url, upload)  # a third live session: the least recently used goes
    assert len(st) == 2 and not folder.exists()
    assert first.session_hash not in demo.state_holder.session_data  # Gradio's copy went too
    message = _app_error(gc, first.predict, lam=0.4, eps=0.01, n_iter=5, api_name="/resolve")
    assert "no longer on the server" in message and "at most 2 sessions" in message
    first.predict(files=[gc.handle_file(str(upload))], classes_text="", attributes_file=None,
                  labels_csv=None, methods=["otfusion"], api_name="/run")  # a Run starts over
    assert first.predict(lam=0.4, eps=0.01, n_iter=5, api_name="/resolve")


def test_a_handler_on_a_replaced_record_is_redone_on_the_live_one(tmp_path):
    """Two re-solves in flight: the later one worked on a record the other replaced meanwhile.
    Its output must not be shown (it would drop the other's change): it is redone on the live
    record, and both changes end up in the record and on the page."""
    from dataclasses import replace

    from demo.store import stored

    st, _ = store()
    s0 = session(tmp_path, "a")
    st.put("k", s0)
    landed = replace(s0, settings=s0.settings.replace(
        otfusion=replace(s0.settings.otfusion, lam=1.6)))
    seen = []

    def set_ths(sess, steps):  # stands for flow.resolve("gpua", ...)
        seen.append(sess)
        if len(seen) == 1:  # another control's re-solve lands while this one runs
            st.put("k", landed)
        new = sess.with_method("gpua", sess.settings.replace(
            gpua=replace(sess.settings.gpua, ths_steps=steps)), None)
        return cb.SolveOutputs(*([None] * len(cb.SolveOutputs._fields)))._replace(session=new)

    request = type("Request", (), {"session_hash": "k"})()
    out = stored(set_ths, st)(request, "k", 0)
    assert seen == [s0, landed] and out.session == "k"
    live = st.get("k")
    assert live.settings.otfusion.lam == 1.6 and live.settings.gpua.ths_steps == 0


def test_thumbnails_are_static_files_served_as_is_and_go_with_their_run(app, upload):
    """Gallery thumbnails skip Gradio's per-file checks and cache copies (they are static files
    under THUMBS_ROOT): the page gets their own path, the URL serves the JPEG, and a new Run
    removes the previous Run's thumbnails with its work folder."""
    import urllib.request

    from demo.state import THUMBS_ROOT, thumbs_dir

    url, demo, gc = app
    st = demo.session_store
    client = _client_run(gc, url, upload)
    record = st.get(client.session_hash)
    folder = thumbs_dir(record.workdir)
    assert folder.parent == THUMBS_ROOT and len(record.thumbs) == 4
    assert all(Path(t).parent == folder and Path(t).is_file() for t in record.thumbs)
    out = client.predict(lam=0.35, eps=0.01, n_iter=5, api_name="/resolve")
    gallery = out[1]
    served = [item["image"] for item in gallery]
    assert {s["path"] for s in served} <= set(record.thumbs)  # not copies in Gradio's cache
    link = served[0]["url"]  # the client makes Gradio's "/gradio_api/file=..." absolute
    link = link if link.startswith("http") else url.rstrip("/") + link
    with urllib.request.urlopen(link) as response:
        assert response.status == 200 and response.read()[:2] == b"\xff\xd8"  # a JPEG
    client.predict(files=[gc.handle_file(str(upload))], classes_text="", attributes_file=None,
                   labels_csv=None, methods=["otfusion"], api_name="/run")
    assert not folder.exists() and not Path(record.workdir).exists()
    assert thumbs_dir(st.get(client.session_hash).workdir).is_dir()
