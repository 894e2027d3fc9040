"""The Run as a stream (issue 12): CLIP zero-shot first, then the fused methods, then LaZSL;
each method solved once; a slider moved on an early stage is kept; a failing later stage keeps
what was shown."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

import core.methods.run as methods_run
from core.models.tiny import tiny_test_models
from demo import run as flow
from demo.state import Session

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("up") / "c.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for name, color in COLORS.items():
            for i in range(4):
                arr = np.clip(np.array(color) + rng.normal(0, 20, (40, 48, 3)), 0, 255)
                buf = io.BytesIO()
                Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
                zf.writestr(f"{name}/{i}.png", buf.getvalue())
    return str(path)


def _inputs(keys, upload, **more):
    return dict(files=[upload], vlm=keys["clip_vit"], vfm=keys["dinov2"],
                methods=["otfusion", "gpua", "lazsl"], n_crops=2, gpua_ths_steps=5, **more)


def test_results_arrive_in_stages_and_each_method_is_solved_once(keys, upload, tmp_path,
                                                                 monkeypatch):
    calls = []
    real = methods_run.run_method
    monkeypatch.setattr(flow, "run_method", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    outs = list(flow.run_stages(_inputs(keys, upload), cache_dir=str(tmp_path)))
    assert [o.session.methods for o in outs] == [
        ("clip",), ("clip", "otfusion", "gpua"), ("clip", "otfusion", "gpua", "lazsl")]
    assert sorted(calls) == ["clip", "gpua", "lazsl", "otfusion"]  # none solved twice
    assert "CLIP zero-shot ready" in outs[0].status and "VFM" in outs[0].status
    assert "LaZSL" in outs[1].status and "crops" in outs[1].status
    assert "Features ready" in outs[2].status
    assert outs[0].session.workdir == outs[2].session.workdir  # thumbnails written once
    assert outs[0].session.extraction.features.vfm_image is None
    # the app's default ("auto" on a CPU) runs the tiny models, which have no measured fast
    # path, in exact fp32
    last_ex = outs[-1].session.extraction
    assert last_ex.settings.precision == flow.app_precision()
    assert last_ex.precisions == {keys["clip_vit"]: "fp32", keys["dinov2"]: "fp32"}
    fast = list(flow.run_stages(_inputs(keys, upload, precision="int8"), cache_dir=str(tmp_path)))
    assert fast[-1].session.extraction.settings.precision == "int8"
    last = flow.run(_inputs(keys, upload), cache_dir=str(tmp_path))
    assert last.session.methods == outs[2].session.methods


def test_a_slider_moved_on_an_early_stage_is_kept_by_the_later_ones(keys, upload, tmp_path):
    held = {}
    stream = flow.run_stages(_inputs(keys, upload), cache_dir=str(tmp_path),
                             current_session=lambda: held.get("now"))
    first = next(stream)
    moved = flow.resolve("otfusion", first.session, {"lam": 0.3}).session  # CLIP only so far
    held["now"] = moved
    rest = list(stream)
    assert all(o.session.settings.otfusion.lam == 0.3 for o in rest)
    assert rest[-1].session.results["otfusion"].details is not None


def test_a_slider_landing_while_a_stage_is_solved_is_kept(keys, upload, tmp_path, monkeypatch):
    """The λ slider re-solves the shown (first) stage while the next stage is being solved: the
    stage must not be shown with the old λ (that would silently revert the slider)."""
    held = {}
    finish = flow._finish_session

    def slider_lands_meanwhile(*args, **kwargs):
        out = finish(*args, **kwargs)
        if "moved" not in held and "now" in held:
            moved = flow.resolve("otfusion", held["now"], {"lam": 0.3}).session
            held["now"] = held["moved"] = moved
        return out

    monkeypatch.setattr(flow, "_finish_session", slider_lands_meanwhile)
    stream = flow.run_stages(_inputs(keys, upload), cache_dir=str(tmp_path),
                             current_session=lambda: held.get("now"))
    first = next(stream)
    held["now"] = first.session  # what the store holds once the first stage is shown
    rest = list(stream)
    assert "moved" in held and rest
    assert all(o.session.settings.otfusion.lam == 0.3 for o in rest)


def test_a_failing_later_stage_keeps_the_earlier_results(keys, upload, tmp_path, monkeypatch,
                                                         fail_second_call):
    real = flow._extract.__wrapped__ if hasattr(flow._extract, "__wrapped__") else flow._extract
    monkeypatch.setattr(flow, "_extract", fail_second_call(
        real, ValueError("the VFM could not run on these images")))
    outs = list(flow.run_in_app(_inputs(keys, upload), cache_dir=str(tmp_path)))
    assert isinstance(outs[0].session, Session) and outs[0].session.methods == ("clip",)
    assert "VFM could not run" in outs[-1].status and "earlier stages" in outs[-1].status
