"""The app's handlers called directly, on small generated images, with the tiny test models."""

import csv
import dataclasses
import io
import time
import zipfile
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image, ImageDraw

from core.models import load_encoder
from core.models.tiny import tiny_test_models
from demo import (
    dynamics,
    embedding,
    inputs,
    lazsl,
    linking,
    overlays,
    playground,
    predictions,
    segmentation,
)
from demo import run as cb
from demo.examples import ATTRIBUTES, example_paths, example_zip

# Handlers toast notes with gr.Warning, which outside a request is a plain UserWarning.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
PER_CLASS = 4


def _png(color, i: int) -> bytes:
    im = Image.new("RGB", (72 + 8 * i, 64), color)
    ImageDraw.Draw(im).ellipse((6 * i, 8, 30 + 6 * i, 40), fill=(250, 250, 250))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


@pytest.fixture(scope="module")
def labelled_zip(tmp_path_factory) -> Path:
    """12 images in one folder per class, plus a broken file that must be skipped by name."""
    path = tmp_path_factory.mktemp("upload") / "colours.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, color in COLORS.items():
            for i in range(PER_CLASS):
                zf.writestr(f"{name}/{name}_{i}.png", _png(color, i))
        zf.writestr("red/broken.png", b"\x89PNG\r\n\x1a\n not really a png")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("features"))


def _run(keys, files, cache_dir, **options):
    args = dict(vlm=keys["clip_vit"], vfm=keys["dinov2"], methods=["otfusion", "gpua", "lazsl"],
                n_crops=4, gpua_ths_steps=20, cache_dir=cache_dir)
    args.update(options)
    cache_dir = args.pop("cache_dir")
    return cb.run(dict(files=[str(f) for f in files], **args), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def ran(keys, labelled_zip, cache_dir):
    return _run(keys, [labelled_zip], cache_dir)


def _error(excinfo) -> str:
    return str(excinfo.value.message)


def test_run_fills_every_view(ran):
    s = ran.session
    n = len(COLORS) * PER_CLASS
    assert s.methods == ("clip", "otfusion", "gpua", "lazsl")
    assert len(ran.gallery) == n and all(Path(p).is_file() for p, _ in ran.gallery)
    assert all("CLIP zero-shot:" in cap and "OTFusion:" in cap for _, cap in ran.gallery)
    assert all(("✓" in cap) or ("✗" in cap) for _, cap in ran.gallery)  # labels from folders
    # The broken file is listed by name in the notes panel, and folder names became the classes.
    assert ran.notes["visible"] and "broken.png" in ran.notes["value"]
    assert "folder names" in ran.notes["value"]
    assert sorted(s.class_names) == sorted(COLORS)
    for fig in (ran.accuracy_plot, ran.per_class_plot, ran.confusion_plot, ran.convergence_plot):
        assert isinstance(fig, go.Figure)
    assert "OTFusion" in ran.summary and "%" in ran.summary
    gpua = s.results["gpua"]
    w0 = gpua.diagnostics["procrustes_accuracy"]
    assert (f"THS refinement changed {gpua.diagnostics['changed_by_ths']} of {n} predictions"
            in ran.summary and f"{w0:.1%} with W0 alone, {gpua.accuracy:.1%} after" in ran.summary)
    assert f"{gpua.details.orthogonality_error:.1e} from orthogonal" in ran.summary
    csv_path = next(p for p in ran.downloads if p.endswith(".csv"))
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert len(rows) == n and {"clip_pred", "otfusion_pred", "gpua_pred"} <= set(rows[0])
    assert len(ran.seg_pick["choices"]) == n and ran.seg_classes["value"] == s.class_names
    assert ran.color_by["value"] == embedding.TRUE_CLASS


def test_resolve_reruns_otfusion_only_and_never_encodes(ran, keys):
    s = ran.session
    encoders = [load_encoder(keys["clip_vit"]), load_encoder(keys["dinov2"])]
    forwards = [e.n_forward for e in encoders]
    out = cb.resolve("otfusion", s, {"lam": 0.0, "eps": 0.1, "n_iter": 3})
    new = out.session
    assert [e.n_forward for e in encoders] == forwards  # no forward pass at all
    assert new.settings.otfusion.lam == 0.0 and new.settings.otfusion.n_iter == 3
    assert not torch.allclose(new.results["otfusion"].probs, s.results["otfusion"].probs)
    for m in ("clip", "gpua", "lazsl"):  # untouched methods are the very same objects
        assert new.results[m] is s.results[m]
    assert s.settings.otfusion.lam == 0.8  # the old session is not mutated
    captions = [cap for _, cap in out.gallery]
    assert captions == predictions.captions(new)
    # GPUA and LaZSL controls re-solve their own method only.
    g = cb.resolve("gpua", new, {"gpua_lam": 0.5, "gpua_eps": 0.05, "gpua_targets": "hard",
                                 "gpua_ths_steps": 0})
    assert g.session.results["otfusion"] is new.results["otfusion"]
    assert g.session.results["gpua"] is not new.results["gpua"]
    z = cb.resolve("lazsl", new, {"lazsl_theta": 0.2})
    assert z.session.results["lazsl"] is not new.results["lazsl"]
    assert [e.n_forward for e in encoders] == forwards


def test_a_page_resolve_skips_the_hidden_tabs_and_opening_one_draws_it(ran):
    """From the page (``open_tab`` given) a re-solve skips the Metrics and Dynamics figures: the
    page draws the open one right after from the stored record, and a hidden one when opened.
    From the API (no ``open_tab``) every view comes back."""
    moved = cb.resolve("otfusion", ran.session, {"lam": 0.3}, open_tab="predictions")
    skip = gr.skip()
    for fields in cb.TAB_FIELDS.values():
        assert all(getattr(moved, f) == skip for f in fields)
    assert moved.gallery and moved.summary and moved.session.settings.otfusion.lam == 0.3
    full = cb.resolve("otfusion", ran.session, {"lam": 0.3})
    assert isinstance(full.accuracy_plot, go.Figure) and isinstance(full.convergence_plot,
                                                                      go.Figure)
    opened = cb.tab_views(moved.session, "Metrics")
    assert opened.open_tab == "metrics" and isinstance(opened.accuracy_plot, go.Figure)
    assert opened.metrics_note == full.metrics_note and opened.convergence_plot == skip
    dyn = cb.tab_views(moved.session, "Dynamics")
    assert "λ = 0.3" in dyn.dynamics_note and dyn.accuracy_plot == skip
    assert all(v == skip for k, v in cb.tab_views(moved.session, "Predictions")._asdict().items()
               if k != "open_tab")


def test_resolve_before_any_run_is_a_quiet_no_op():
    out = cb.resolve("otfusion", None, {"lam": 0.5, "eps": 0.01, "n_iter": 10})
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in out)


def test_second_run_reads_the_feature_cache(keys, labelled_zip, cache_dir, ran):
    encoders = [load_encoder(keys["clip_vit"]), load_encoder(keys["dinov2"])]
    forwards = [e.n_forward for e in encoders]
    out = _run(keys, [labelled_zip], cache_dir, methods=["otfusion"])
    assert [e.n_forward for e in encoders][1:] == forwards[1:]  # images: no forward pass
    # The cache is shared by all users: the status must not tell who uploaded what before.
    assert "cache" not in out.status and "encoded" not in out.status
    assert "Features ready" in out.status


def test_filters_pages_and_selection(ran):
    s = ran.session
    changed = predictions.filter_indices(s, "otfusion", "changed")
    base, fused = s.results["clip"].pred, s.results["otfusion"].pred
    assert changed == torch.nonzero(base != fused).flatten().tolist()
    wrong = predictions.show_page(s, "otfusion", "wrong", 1)
    assert len(wrong.gallery.value) == int((fused != s.labels).sum())
    sel = predictions.select_image(s, wrong.shown or [0], 0)
    assert sel.selected == (wrong.shown or [0])[0]
    assert "| method | top 3 |" in sel.details and "| GPUA | **" in sel.details


def test_views_after_a_run(ran):
    s = ran.session
    emb = embedding.embedding(s, "pca", embedding.TRUE_CLASS, 2)
    assert isinstance(emb.embed_before, go.Figure) and isinstance(emb.embed_after, go.Figure)
    assert any(t.name == "selected" for t in emb.embed_after.data)
    assert "gap" in emb.embed_after.layout.title.subtitle.text
    again = embedding.embedding_highlight(s, "pca", "correctness", 3, "gpua")  # recolour only
    assert isinstance(again.embed_before, go.Figure)
    sw = dynamics.sweep(s)
    assert isinstance(sw.sweep_lam, go.Figure) and isinstance(sw.sweep_eps, go.Figure)
    lz = lazsl.lazsl_explain(s, 1, None)
    assert lz.crop_image.size[0] >= overlays.MIN_VIEW_SIDE and lz.crop_gallery
    assert abs(sum(lz.class_scores.values()) - 1) < 1e-4 and "attribute" in lz.lazsl_table
    seg = segmentation.segment_image(s, 0, s.class_names[:2], 0.0, 0.5)
    assert isinstance(seg.seg_image, Image.Image) and "seg-legend" in seg.seg_legend
    hidden = segmentation.redraw_segmentation(s, 0, [], 0.0, 0.5)  # all toggled off: no model
    assert "no labelled pixels" in hidden.seg_legend
    # image 5 is not segmented yet: nothing to redraw
    assert segmentation.redraw_segmentation(s, 5, None, 0.0, 0.5).seg_image is None


def test_map_links_and_search(ran):
    """demo.linking without a browser: a map click opens that image, a lasso or a search makes
    a gallery subset (and dims the other points), a new Run's record ignores an old subset."""
    s = ran.session
    emb = embedding.embedding(s, "pca", "correctness", None, "otfusion")
    assert {t.name for t in emb.embed_before.data} <= {"right", "wrong", "class text (stars)"}
    n = len(s.names)
    lasso = linking.map_event(s, '{"select": [1, 4, 999]}', "otfusion", "all", 1, None, "pca")
    assert lasso.shown == [1, 4] and lasso.gallery.selected_index is None
    assert "2 selected on the map" in lasso.gallery_info and lasso.subset_clear["visible"]
    bright = [t.customdata[j] for t in lasso.embed_before.data
              if t.selectedpoints is not None for j in t.selectedpoints]
    assert sorted(bright) == [1, 4]
    changed = predictions.filter_indices(s, "otfusion", "changed")
    narrowed = predictions.show_page(s, "otfusion", "changed", 1, lasso.subset)
    assert narrowed.shown == [i for i in (1, 4) if i in changed]  # subset and filter together
    # a click on an image the subset hides: the gallery shows everything again to open it
    click = linking.map_event(s, '{"click": 6, "nonce": 1}', "otfusion", "changed", 1,
                              lasso.subset, "pca", embedding.TRUE_CLASS, "otfusion", None)
    assert click.subset is None and click.filter_mode == "all" and click.selected == 6
    assert click.shown[click.gallery.selected_index] == 6
    assert predictions.md_cell(s.names[6]) in click.details and click.seg_pick["value"] == 6
    assert any(t.name == "selected" for t in click.embed_after.data)  # maps drawn: ringed
    inside = linking.map_event(s, '{"click": 4}', "otfusion", "all", 1, lasso.subset, "pca")
    assert inside.subset == lasso.subset and inside.shown == [1, 4]  # the subset stays
    cleared = linking.map_event(s, '{"select": null}', "otfusion", "all", 1, lasso.subset)
    assert cleared.subset is None and len(cleared.shown) == n
    name = s.class_names[int(s.labels[0])]
    found = linking.search(s, name.upper(), "otfusion")
    assert 0 in found.shown and all(
        name in s.names[i] or s.class_names[int(s.labels[i])] == name
        or s.class_names[int(s.results["otfusion"].pred[i])] == name for i in found.shown)
    assert linking.search(s, "no such thing", "otfusion").shown == []
    stale = dict(found.subset, run="another run")
    assert len(predictions.show_page(s, "otfusion", "all", 1, stale).shown) == len(s.names)
    assert linking.map_event(s, "not json") == linking._skip_all()

def test_unlabelled_images_explain_how_to_get_metrics(keys, tmp_path, cache_dir):
    files = []
    for i, color in enumerate(COLORS.values()):
        path = tmp_path / f"photo {i}.png"
        path.write_bytes(_png(color, i))
        files.append(path)
    out = _run(keys, files, cache_dir, classes_text="red, green, blue", methods=["otfusion"])
    assert "No labels" in out.metrics_note and out.accuracy_plot is None
    assert "✓" not in out.gallery[0][1]
    assert "needs labels" in predictions.show_page(out.session, "otfusion", "wrong", 1).gallery_info


@pytest.mark.parametrize(
    ("files", "options", "expected"),
    [
        ([], {}, "No images"),
        ("bad_only", {}, "no usable images"),
        ("zip", {"classes_text": "red"}, "at least 2 classes"),
        ("zip", {"classes_text": "\n".join(f"c{i}" for i in range(20))}, "transductive"),
        ("zip", {"n_crops": 0}, "LaZSL needs crops"),
        ("zip", {"templates_text": "a photo"}, "needs exactly one {}"),
        ("zip", {"gpua_targets": "medium"}, "GPUA targets"),
    ],
)
def test_user_mistakes_raise_readable_errors(keys, labelled_zip, tmp_path, cache_dir, files,
                                             options, expected):
    if files == "zip":
        files = [labelled_zip]
    elif files == "bad_only":
        bad = tmp_path / "<notes>.txt"
        bad.write_text("not an image")
        files = [bad]
    with pytest.raises(gr.Error) as excinfo:
        _run(keys, files, cache_dir, **options)
    message = _error(excinfo)
    assert expected in message and "Traceback" not in message
    assert "<notes>" not in message  # file names are escaped (gr.Error renders HTML)


def test_missing_weights_fail_fast_with_the_fix(labelled_zip, tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    start = time.perf_counter()
    with pytest.raises(gr.Error) as excinfo:
        cb.run(dict(files=[str(labelled_zip)], vlm="clip-vit-b16", vfm="dinov2-base",
                    methods=["otfusion"]), cache_dir=str(tmp_path / "fresh-cache"))
    assert time.perf_counter() - start < 10
    message = _error(excinfo)
    assert "CLIP ViT-B/16" in message and "python -m core download" in message
    assert excinfo.value.title == "Model weights are not available"


def test_unexpected_failures_are_logged_not_shown(ran, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(predictions, "summary_markdown", boom)
    with pytest.raises(gr.Error) as excinfo:
        cb.refresh_views(ran.session, "otfusion", "all", 1)
    assert "secret" not in _error(excinfo) and "RuntimeError" in _error(excinfo)
    assert "secret internal detail" in caplog.text


def test_playground_closes_the_gap_offline():
    out = playground.playground(n_classes=6, n_samples=300, gap=0.8, vlm_noise=2.95, vfm_noise=2.0,
                        seed=1, projection="pca")
    bars = out.play_accuracy.data[0]
    acc = dict(zip(bars.y, bars.x))  # horizontal bars: methods on the y axis
    assert acc["OTFusion"] > acc["CLIP zero-shot"]
    gaps = dict(zip(out.play_gap_plot.data[0].y, out.play_gap_plot.data[0].x))
    assert gaps["GPUA-mapped VFM vs text"] < gaps["CLIP image vs text"]
    assert isinstance(out.play_before, go.Figure) and "gap" in out.play_note
    with pytest.raises(gr.Error):
        playground.playground(n_classes=20, n_samples=10)


def test_presets_class_files_and_synthetic_sessions(tmp_path):
    out = inputs.preset_selected("oxford_pets")
    assert len(out.classes_text.splitlines()) == 37 and "{}" in out.templates_text
    path = tmp_path / "classes.txt"
    path.write_text("cat\ndog\ncat\n")
    assert inputs.classes_file_selected(str(path)) == "cat\ndog"
    syn = cb.load_synthetic(60, 6, 0, d_vlm=16, d_vfm=24)
    assert len(syn.session.names) == 60 and syn.session.has_labels
    re = cb.resolve("otfusion", syn.session, {"lam": 0.2, "eps": 0.02, "n_iter": 5})
    assert re.session.results["otfusion"].accuracy is not None


def test_example_assets_are_small_reproducible_and_described():
    paths = example_paths()
    total = sum(p.stat().st_size for p in paths.values())
    assert total < 1_000_000
    assert paths["shapes"].read_bytes() == example_zip("shapes")
    assert paths["scenes"].read_bytes() == example_zip("scenes")
    with zipfile.ZipFile(paths["shapes"]) as zf:
        folders = {n.split("/")[1] for n in zf.namelist()}
    assert folders <= set(ATTRIBUTES)


def test_convergence_note_reports_log_domain_fallbacks(ran):
    s = ran.session
    res = s.results["otfusion"]
    assert "log domain" not in dynamics.convergence_view(s)[-1]  # none at the paper's eps
    fell = dataclasses.replace(res, details=dataclasses.replace(res.details, sinkhorn_fallbacks=2))
    other = dataclasses.replace(s, results={**s.results, "otfusion": fell})
    assert "2 Sinkhorn solve(s) finished in the log domain" in dynamics.convergence_view(other)[-1]


def test_summary_and_export_name_recipe_setting_and_sources(ran):
    """Every number says what produced it, read from the record: the recipe and setting in the
    summary's settings column, the features behind it (MethodResult.sources) beside them, and
    both in the JSON export."""
    import json

    s = ran.session
    rows = {line.split("|")[1].strip(): line for line in ran.summary.splitlines()
            if line.startswith("| ")}
    assert ("paper recipe: λ 0.8, ε 0.01, 10 iter, fixed weights; main (Table 1: VLM image + "
            "VFMs), joint (full OTFusion)") in rows["OTFusion"]
    assert "paper recipe: λ 0.9" in rows["GPUA"] and "paper recipe: θ 0.8" in rows["LaZSL"]
    for m in s.methods:
        sources = s.results[m].sources
        assert sources and predictions.md_cell(" + ".join(sources)) in rows[s.title(m)]
    vlm, vfm = s.extraction.features.vlm_names[0], s.extraction.features.vfm_names[0]
    assert s.results["otfusion"].sources == (f"{vlm} image", vfm, f"Y: {vlm}")
    doc = json.loads(Path(next(p for p in ran.downloads if p.endswith(".json"))).read_text())
    assert doc["methods"]["otfusion"]["sources"] == list(s.results["otfusion"].sources)
    assert doc["solver_settings"]["otfusion"]["recipe"] == "paper"
    assert doc["solver_settings"]["otfusion"]["setting"] == "main"
    assert doc["vlms"] == [s.extraction.settings.vlm] and doc["lazsl_recipe"] == "paper"
    # a re-solve under the official recipe: the row, the note and the export follow the record
    new = cb.switch_recipe("otfusion", s, {"otfusion_recipe": "official"})
    assert "official recipe: λ 1/J (uniform), ε 0.01, 10 iter, adaptive weights" in new.summary
    assert "official recipe" in new.dynamics_note and "λ = 1/J" in new.dynamics_note
    doc = json.loads(Path(next(p for p in new.downloads if p.endswith(".json"))).read_text())
    assert doc["solver_settings"]["otfusion"]["recipe"] == "official"
    assert doc["solver_settings"]["otfusion"]["lam"] is None


def test_weights_plot_draws_one_line_per_source(keys, labelled_zip, cache_dir):
    """Two VFMs: the Dynamics tab draws η of each visual source and λ of the VLM per iteration,
    named by the sources; fixed weights say so, adaptive ones say what moves them."""
    out = _run(keys, [labelled_zip], cache_dir, vfm=[keys["dinov2"], keys["dinov3"]],
               methods=["otfusion"], otfusion_recipe="official")
    res = out.session.results["otfusion"]
    visual = [n for n in res.sources if not n.startswith("Y: ")]
    assert len(visual) == 3  # the VLM's image features and both VFMs (main setting)
    traces = out.weights_plot.data
    assert [t.name for t in traces] == [f"η {n}" for n in visual] + [
        f"λ {n[3:]}" for n in res.sources if n.startswith("Y: ")]
    history = res.details.history
    for j, t in enumerate(traces[:3]):
        assert list(t.y) == [h.eta[j] for h in history]
    assert all(abs(sum(h.eta) - 1) < 1e-6 for h in history)
    assert "**adaptive**" in out.dynamics_note and "agrees with Q" in out.dynamics_note
    fixed = cb.resolve("otfusion", out.session, {"otfusion_weights": "fixed"})
    assert "**fixed**" in fixed.dynamics_note
    assert all(list(t.y) == [t.y[0]] * len(t.y) for t in fixed.weights_plot.data)  # flat


def test_banner_follows_the_chosen_models_and_official_sources(keys, tmp_path, monkeypatch):
    from core.config import OTFUSION_OFFICIAL_VFMS
    from core.models import MODELS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    hidden = inputs.models_banner([keys["clip_vit"]], [keys["dinov2"], keys["dinov3"]])
    assert hidden["visible"] is False  # the tiny models need no weights
    shown = inputs.models_banner([keys["clip_vit"]], ["dinov2-reg-large", "dinov2-base"])
    assert shown["visible"] and "DINOv2" in shown["value"]
    assert "python -m core download dinov2-reg-large dinov2-base" in shown["value"]
    absent = [k for k in OTFUSION_OFFICIAL_VFMS if k not in MODELS]
    if absent:
        with pytest.warns(UserWarning, match=absent[0]):
            out = inputs.official_sources()
    else:
        out = inputs.official_sources()
    assert out.vlm == ["clip-vit-b16"]
    assert out.vfm == [k for k in OTFUSION_OFFICIAL_VFMS if k in MODELS] and out.vfm


def test_missing_weights_of_several_models_are_named_together(labelled_zip, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(gr.Error) as excinfo:
        cb.run(dict(files=[str(labelled_zip)], vlm=["clip-vit-b16"],
                    vfm=["dinov2-base", "dinov2-reg-large"], methods=["otfusion"]),
               cache_dir=str(tmp_path / "fresh-cache"))
    message = _error(excinfo)
    assert "python -m core download clip-vit-b16 dinov2-base dinov2-reg-large" in message


def test_playground_recipe_presets_and_a_second_vfm(monkeypatch):
    import core.synthetic as synthetic

    common = dict(n_classes=5, n_samples=200, seed=2, projection="pca")
    paper = playground.playground(**common, second_vfm=True)
    official = playground.playground(**common, recipe="official", second_vfm=True)
    for out in (paper, official):  # η of the CLIP-like image, both DINO-like models; λ of CLIP
        assert [t.name for t in out.play_weights.data] == [
            "η CLIP-like image", "η DINO-like", "η DINO-like #2", "λ CLIP-like"]
    assert all(len(set(t.y)) == 1 for t in paper.play_weights.data)  # fixed
    assert len(set(official.play_weights.data[1].y)) > 1  # adaptive: the weights move
    assert "official recipe" in official.play_note and "uniform" in official.play_note
    assert playground.lam_slider("official")["interactive"] is False
    # presets come from core.synthetic at run time: a new one appears without code here
    monkeypatch.setitem(synthetic.PRESETS, "tight",
                        dict(synthetic.PRESETS["hard"], vfm_noise=0.5, gap=0.3))
    assert "tight" in playground.preset_names()
    knobs = playground.preset_knobs("tight")
    assert knobs.play_vfm_noise["value"] == 0.5 and knobs.play_gap["value"] == 0.3
    out = playground.playground(**common, preset="tight", vfm_noise=0.5, gap=0.3)
    assert "preset 'tight'" in out.play_note
    with pytest.raises(gr.Error, match="tight"):
        playground.playground(**common, preset="nope")
