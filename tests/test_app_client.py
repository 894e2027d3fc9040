"""The launched app through gradio_client: upload, run, re-solve, errors (tiny test models)."""

import csv
import io
import socket
import zipfile

import pytest
from PIL import Image

from core.models import load_encoder
from core.models.tiny import tiny_test_models
from demo import ui

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CLASSES = {"sky": (70, 130, 230), "grass": (40, 160, 60), "sand": (230, 200, 120)}
# gr.State outputs stay on the server, per session; a gr.Button output (the gallery's "show all
# images") is not part of the API either.
STATES = ("session", "shown", "subset_clear")
RUN_FIELDS = [f for f in ui.flow.RunOutputs._fields if f not in STATES]
SOLVE_FIELDS = [f for f in ui.flow.SolveOutputs._fields if f not in STATES]
SWITCH_FIELDS = [f for f in ui.flow.SwitchOutputs._fields if f not in STATES]
# Gradio's queue statistics use pandas options that pandas 3 deprecates (not our code).
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    keys = tiny_test_models()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path_factory.mktemp("features")))
        demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"], keys["dinov3"]])
        port = _free_port()
        ui.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
                  quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", keys
        finally:
            demo.close()


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "terrain.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, color in CLASSES.items():
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (60 + 10 * i, 50), tuple(max(0, v - 25 * i) for v in color)
                          ).save(buf, format="PNG")
                zf.writestr(f"{name}/{name}{i}.png", buf.getvalue())
    return path


def _named(values, fields) -> dict:
    """Outputs by field name; a control's update as the value it sets."""
    assert len(values) == len(fields)
    return {f: v.get("value", v) if isinstance(v, dict) and "__type__" in v else v
            for f, v in zip(fields, values)}


def _csv_rows(downloads) -> list[dict]:
    path = next(d for d in downloads if str(d).endswith(".csv"))
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run(client, files, **options):
    args = dict(classes_text="", attributes_file=None, labels_csv=None,
                methods=["otfusion", "gpua"], gpua_ths_steps=20)
    args.update(options)
    return client.predict(files=files, api_name="/run", **args)


def test_upload_run_and_resolve_without_reencoding(app, upload):
    url, keys = app
    client = Client(url, verbose=False)
    out = _named(_run(client, [handle_file(str(upload))]), RUN_FIELDS)
    rows = _csv_rows(out["downloads"])
    assert len(rows) == 9 and {r["true_class"] for r in rows} == set(CLASSES)
    clip_acc = sum(r["clip_pred"] == r["true_class"] for r in rows) / len(rows)
    assert f"| CLIP zero-shot | {clip_acc:.1%} |" in out["summary"]
    assert "OTFusion" in out["summary"] and len(out["gallery"]) == 9

    encoders = [load_encoder(keys["clip_vit"]), load_encoder(keys["dinov2"])]
    forwards = [e.n_forward for e in encoders]
    new = _named(client.predict(lam=0.0, eps=0.2, n_iter=2, api_name="/resolve"), SOLVE_FIELDS)
    assert [e.n_forward for e in encoders] == forwards  # re-solved from cached features
    new_rows = _csv_rows(new["downloads"])
    assert [r["clip_confidence"] for r in new_rows] == [r["clip_confidence"] for r in rows]
    assert [r["otfusion_confidence"] for r in new_rows] != [r["otfusion_confidence"] for r in rows]
    # the summary states the settings that produced it (timings alone could coincide)
    assert "λ 0.8, ε 0.01, 10 iter" in out["summary"]
    assert "λ 0, ε 0.2, 2 iter" in new["summary"] and "λ 0.8, ε 0.01" not in new["summary"]


def test_bad_uploads_return_readable_errors(app, tmp_path):
    """A failed Run answers with the message in the status and skips every other output (the
    previous record's views stay); the file-type check is Gradio's and still an error."""
    url, _ = app
    client = Client(url, verbose=False)
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"this is not a picture")
    out = _named(_run(client, [handle_file(str(broken))]), RUN_FIELDS)
    assert "no usable images" in out["status"] and "holiday.png" in out["status"]
    assert "previous Run" in out["status"]
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type"):
        _run(client, [handle_file(str(text))])
    assert "No images" in _named(_run(client, []), RUN_FIELDS)["status"]


def test_playground_endpoint_and_hidden_dev_api(app):
    url, _ = app
    client = Client(url, verbose=False)
    note = client.predict(n_classes=4, n_samples=120, gap=0.8, vlm_noise=2.95, vfm_noise=2.0,
                          seed=0, projection="pca", lam=0.8, api_name="/playground")[-1]
    assert "OTFusion" in note and "gap" in note
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/load_synthetic" not in endpoints and "/ping" not in endpoints  # dev API only


def test_models_and_recipes_through_the_api(app, upload):
    """Several VFMs and the official recipe in one Run, then the recipe radio's endpoint: the
    summary names the recipe and the sources of each row, and the controls come back. An API
    client asks the switch endpoint for a recipe's control values before the Run (the Run uses
    every control as sent), as the app's radio does."""
    url, keys = app
    client = Client(url, verbose=False)
    official = _named(client.predict(otfusion_recipe="official",
                                     api_name="/switch_otfusion_recipe"), SWITCH_FIELDS)
    assert official["lam_uniform"] is True and official["otfusion_weights"] == "adaptive"
    controls = {k: official[k] for k in ui.flow.controls_of("otfusion")}
    out = _named(_run(client, [handle_file(str(upload))], vfm=[keys["dinov2"], keys["dinov3"]],
                      methods=["otfusion"], **controls), RUN_FIELDS)
    row = next(line for line in out["summary"].splitlines() if line.startswith("| OTFusion"))
    assert "official recipe: λ 1/J (uniform), ε 0.01, 10 iter, adaptive weights" in row
    assert row.count("DINO") >= 2 and "Y: " in row  # both VFMs and the VLM's probabilities
    back = _named(client.predict(otfusion_recipe="paper", api_name="/switch_otfusion_recipe"),
                  SWITCH_FIELDS)
    assert "paper recipe: λ 0.8, ε 0.01, 10 iter, fixed weights" in back["summary"]
    assert back["lam"] == 0.8 and back["lam_uniform"] is False
    assert back["otfusion_weights"] == "fixed"
