"""Gradio layout and wiring: inputs on the left, one tab per view on the right.

Handlers live in one module per tab (``demo.predictions``, ``demo.metrics``, ``demo.embedding``,
``demo.dynamics``, ``demo.segmentation``, ``demo.lazsl``, ``demo.playground``; the Compare tab's
layout and wiring too, in ``demo.compare_view``), the Run and the
live re-solves in ``demo.run`` (the live controls' table in ``demo.settings``) and the input
controls in ``demo.inputs``: plain functions; this module only places components and connects
them. Components are kept
in a dict keyed by the field names of the handlers' output tuples, so each event's outputs are
``[c[f] for f in Outputs._fields]``.

``launch`` starts ``demo.warmup.warm_up`` in a background thread: the first UMAP map and GPUA fit
of the process then cost what later ones do, and the default models' int8 ONNX models (precision
"auto" on a CPU) are prepared when their weights are cached (``FUSIONLAB_WARM_UP=0``: no
warm-up; tests).

Environment switches (all off by default):

- ``FUSIONLAB_TEST_MODELS=1``: register the tiny random-initialised test models
  (``core.models.tiny``) and list them first in the model pickers (tests, offline demos of the
  wiring; their predictions are meaningless). ``build_app(extra_models=[key, ...])`` does the same
  for chosen keys.
- ``FUSIONLAB_DEV_API=1``: add the undocumented ``/load_synthetic`` endpoint that fills the
  session with synthetic features, and ``/ping`` that answers at once (the round trip's floor),
  for ``benchmarks/app_latency.py``.
- ``FUSIONLAB_CACHE_DIR`` / ``FUSIONLAB_FEATURE_CACHE=0``: where the feature cache lives / off;
  ``FUSIONLAB_CACHE_MAX_BYTES``: its size cap (``core.pipeline.cache``).
- ``FUSIONLAB_MAX_FILE_SIZE``: upload limit per file (default 200mb);
  ``FUSIONLAB_MAX_UPLOAD_BYTES``: image bytes per Run (``demo.inputs``, default 1 GiB).
- ``FUSIONLAB_SESSION_TTL_S`` / ``FUSIONLAB_MAX_SESSIONS`` / ``FUSIONLAB_SESSIONS_MAX_BYTES``: the
  session store's time to live and caps (``demo.store``; 1 hour, 32 sessions, 2 GiB).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from core.config import (
    DEFAULT_TEMPLATE,
    DEFAULT_VFM,
    DEFAULT_VLM,
    GPUA_TARGETS,
    LAZSL_CROPS,
    LAZSL_CROPS_PAPER,
    LAZSL_CROPS_UI,
    OTFUSION_OFFICIAL_VFMS,
    MethodSettings,
    OTFusionSettings,
    ui_range,
)
from core.data import PRESETS
from core.models import get_spec, model_choices
from demo import (
    compare_view,
    dynamics,
    embedding,
    inputs,
    lazsl,
    linking,
    playground,
    predictions,
    segmentation,
    warmup,
)
from demo import run as flow
from demo.controls import name_input_errors
from demo.examples import EXAMPLES_DIR, example_rows
from demo.inputs import weights_banner
from demo.precision import app_precision, precision_choices
from demo.provenance import (
    LAM_LABELS,
    RECIPE_LABELS,
    SETTING_CHOICES,
    VARIANT_CHOICES,
    WEIGHT_LABELS,
    choices,
)
from demo.state import delete_session, serve_thumbnails
from demo.store import SessionStore, StoreLimits, stored

TITLE = "VLM x VFM Fusion Lab"
INTRO = (
    "# VLM x VFM Fusion Lab\n"
    "Fuse a vision-language model (CLIP) with a vision-only foundation model (DINOv2) by optimal "
    "transport, training-free: **OTFusion** (transductive GMM + OT), **GPUA** (an orthogonal map "
    "from DINO into CLIP's text space) and **LaZSL** (crops matched to attribute descriptions), "
    "always against the **CLIP zero-shot** baseline. Upload images and a class list, press "
    "**Run**, then move λ / ε: predictions re-solve instantly from the cached features."
)
CSS = """
.notes-panel {border-left: 4px solid #f0ad4e; padding: 4px 12px; background: #fffaf0;}
.banner-panel {border-left: 4px solid #d12b2b; padding: 4px 12px; background: #fff5f5;}
.run-button {margin-top: 8px;}
.run-failed {border-left: 4px solid #d12b2b; padding: 4px 12px; background: #fff5f5;}
/* Gallery captions (demo.predictions.captions): two short lines under a thumbnail, the full
   text in the thumbnail's hover (title) and in the table beside the preview. */
.short-captions .caption-label {font-size: 11px; white-space: pre; line-height: 1.35em;
  box-sizing: content-box; max-height: 2.7em; max-width: calc(100% - 16px);
  padding-bottom: 0; border-bottom: 4px solid var(--background-fill-secondary);}
/* The preview shows the caption's first line only, whole: the file name is in the table beside. */
.short-captions .preview .caption {white-space: pre; line-height: 1.4em; max-height: 1.4em;
  display: block; overflow: hidden; padding: 6px 12px 0; box-sizing: content-box; max-width: 100%;
  text-align: center;}
/* Tables scroll sideways on a phone instead of wrapping headers letter by letter. */
.prose table {display: block; max-width: 100%; overflow-x: auto; border: none;}
.prose th {white-space: nowrap;}
#summary td {white-space: nowrap;}
#details td, #details th {white-space: nowrap; padding: 4px 8px;}
#details table {font-size: 13px;}
"""
# Browser-side fixes Gradio has no option for. (1) Enter in a slider's number box applies the
# value: blurring the box fires the slider's release event, which re-solves. (2) Plotly figures
# drawn in a hidden tab keep a clipped size until the window resizes: after a tab switch, send one.
# (3) Clicks, lassos and hover thumbnails on the embedding maps (demo.linking.MAP_SCRIPT).
# (4) A gallery thumbnail's full caption (its alt text) as its hover tooltip. (5) On a phone the
# inputs stack above the results: Run scrolls to the status line the results start under.
JS = """
() => {""" + linking.MAP_SCRIPT + """
  document.addEventListener('click', (e) => {
    if (window.innerWidth <= MOBILE_MAX_PX && e.target instanceof Element
        && e.target.closest('.run-button')) {
      setTimeout(() => document.getElementById('status')
        ?.scrollIntoView({behavior: 'smooth', block: 'start'}), 100);
    }
  }, true);
  document.addEventListener('keydown', (e) => {
    const box = e.target;
    if (e.key === 'Enter' && box instanceof HTMLInputElement && box.type === 'number') {
      box.blur();
    }
  }, true);
  document.addEventListener('click', (e) => {
    if (e.target instanceof Element && e.target.closest('[role=tab]')) {
      for (const ms of [50, 300]) {
        setTimeout(() => window.dispatchEvent(new Event('resize')), ms);
      }
    }
  }, true);
  let titlesQueued = false;  // at most one pass per frame
  new MutationObserver(() => {
    if (titlesQueued) return;
    titlesQueued = true;
    requestAnimationFrame(() => {
      titlesQueued = false;
      for (const im of document.querySelectorAll('.short-captions img[alt]')) {
        if (im.title !== im.alt) im.title = im.alt;
      }
    });
  }).observe(document.body, {childList: true, subtree: true, attributeFilter: ['alt']});
}
""".replace("MOBILE_MAX_PX", "700")  # below Gradio's two-column width (340 + 600 px min_widths)
_TRUE = ("1", "true", "yes", "on")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _test_models() -> list[str]:
    from core.models import tiny_test_models

    keys = tiny_test_models()
    return [keys["clip_vit"], keys["dinov2"], keys["dinov3"], keys["clip_rn"]]


def build_app(extra_models: Sequence[str] | None = None, *, dev_api: bool | None = None,
              store_limits: StoreLimits | None = None) -> gr.Blocks:
    """The whole app. ``extra_models``: hidden registry keys to list (and preselect) too.

    Sessions live in one ``demo.store.SessionStore`` (``demo.session_store``), with
    ``store_limits`` or the ``FUSIONLAB_SESSION_TTL_S`` / ``FUSIONLAB_MAX_SESSIONS`` /
    ``FUSIONLAB_SESSIONS_MAX_BYTES`` settings."""
    serve_thumbnails()  # before any component: galleries then skip Gradio's per-file checks
    # Gradio recomputes its monitoring summary (a pandas group-by over up to 10,000 past events)
    # after every event by default; monitoring is off here (launch), so recompute it rarely.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    extra = list(extra_models or [])
    if _env_flag("FUSIONLAB_TEST_MODELS"):
        extra += [k for k in _test_models() if k not in extra]
    dev_api = _env_flag("FUSIONLAB_DEV_API") if dev_api is None else dev_api
    vlm_default = next((k for k in extra if get_spec(k).kind == "vlm"), DEFAULT_VLM)
    vfm_default = next((k for k in extra if get_spec(k).kind == "vfm"), DEFAULT_VFM)
    banner = weights_banner([vlm_default, vfm_default])
    c: dict[str, gr.components.Component] = {}
    store = SessionStore(store_limits)
    name_input_errors()  # range / choice errors say which control

    def forget(value) -> None:  # Gradio dropped the tab's state: its key, or an old Session
        store.discard(value) if isinstance(value, str) else delete_session(value)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 7200)) as demo:
        c["session"] = gr.State(None, delete_callback=forget)  # the session's key in ``store``
        c["shown"] = gr.State([])  # image index of each gallery position on the current page
        c["selected"] = gr.State(None)  # image picked in the gallery
        c["subset"] = gr.State(None)  # images lassoed on a map or found by its search
        # The results tab on screen, as the page's Tabs start (demo.run.TAB_FIELDS). An API
        # client's session starts the same way: its re-solves return the summary, gallery and
        # downloads; /refresh returns every view.
        c["open_tab"] = gr.State("playground" if banner else "predictions")
        # Where the page script posts map clicks and selections (demo.linking); outside the tabs
        # so it exists before the Embedding tab is first opened.
        c["map_event"] = gr.Textbox(visible="hidden", elem_id="map-event")
        gr.Markdown(INTRO)
        c["banner"] = gr.Markdown(banner, visible=bool(banner), elem_classes="banner-panel",
                                  elem_id="weights-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=340):
                _inputs(c, vlm_default, vfm_default, extra)
            with gr.Column(scale=3, min_width=600):
                c["status"] = gr.Markdown(
                    "The image tabs need the model weights named above; the **Playground** works "
                    "now." if banner else "Upload images (or pick an example), then press **Run**.",
                    elem_id="status")
                c["notes"] = gr.Markdown(visible=False, elem_classes="notes-panel")
                _live_settings(c)
                with gr.Tabs(selected="playground" if banner else "predictions",
                             elem_id="tabs") as c["tabs"]:
                    _tabs(c)
        if dev_api:
            with gr.Row(visible=False):
                c["syn_n"] = gr.Number(1000, precision=0)
                c["syn_k"] = gr.Number(100, precision=0)
                c["syn_seed"] = gr.Number(0, precision=0)
                c["syn_button"] = gr.Button("load synthetic")
                c["ping"] = gr.Button("ping")
        _wire(demo, c, dev_api, store)
    demo.queue(default_concurrency_limit=2)
    demo.session_store = store
    demo.default_models = (vlm_default, vfm_default)  # what the start-up warm-up prepares
    store.on_drop = functools.partial(_forget_gradio_session, demo)
    return demo


def _forget_gradio_session(demo: gr.Blocks, key: str) -> None:
    """Drop Gradio's own data of a session our store dropped.

    Gradio keeps, per session hash, a copy of every output value it sent (gallery, plots, ...)
    until 10,000 sessions exist (``blocks.state_holder``, an internal: guarded, a no-op if it
    changes); without this a server that saw 200 abandoned API sessions held about 0.4 MB each.
    """
    holder = getattr(demo, "state_holder", None)
    data = getattr(holder, "session_data", None)
    if holder is None or not isinstance(data, dict):
        return
    with holder.lock:
        data.pop(key, None)
        getattr(holder, "time_last_used", {}).pop(key, None)


def _inputs(c, vlm_default: str, vfm_default: str, extra: list[str]) -> None:
    gr.Markdown("### 1 · Images")
    c["files"] = gr.File(label="Images, or a .zip (a folder per class gives labels)",
                         file_count="multiple", file_types=["image", ".zip"], height=150,
                         elem_id="images-upload")
    gr.Markdown("### 2 · Classes")
    presets = [("(type your own)", "")] + [
        (f"{p.display_name} ({p.n_classes} classes)", p.key) for p in PRESETS.values()]
    c["preset"] = gr.Dropdown(presets, value="", label="Dataset preset")
    c["classes_text"] = gr.Textbox(
        label="Class names (one per line or comma-separated)", lines=4, max_lines=12,
        placeholder="cat\ndog\nbird   (empty: use the zip's folder names)")
    c["class_upload"] = gr.UploadButton("Load a class file (.txt / .json)", size="sm",
                                        file_types=[".txt", ".json"])
    c["templates_text"] = gr.Textbox(DEFAULT_TEMPLATE, label="Prompt template(s), one per line",
                                     lines=1, max_lines=6)
    rows = example_rows()
    if rows:
        gr.Examples(rows, inputs=[c["files"], c["classes_text"]],
                    label="Examples (drawn by the project)",
                    example_labels=[Path(r[0][0]).stem for r in rows])
    gr.Markdown("### 3 · Models")
    c["vlm"] = gr.Dropdown(model_choices("vlm", extra=extra), value=[vlm_default],
                           multiselect=True, label="Vision-language models (VLM)",
                           info="The first is the primary one (CLIP baseline, GPUA, LaZSL, "
                                "segmentation); OTFusion fuses them all.", elem_id="vlm-picker")
    c["vfm"] = gr.Dropdown(model_choices("vfm", extra=extra), value=[vfm_default],
                           multiselect=True, label="Vision foundation models (VFM)",
                           info="The first is GPUA's and segmentation's; OTFusion fuses them "
                                "all. None: OTFusion and GPUA use the VLM's image features.",
                           elem_id="vfm-picker")
    c["official_sources"] = gr.Button(
        "Official OTFusion sources: CLIP ViT-B/16 + " + " + ".join(OTFUSION_OFFICIAL_VFMS),
        size="sm", elem_id="official-sources")
    gr.Markdown("### 4 · Methods")
    c["methods"] = gr.CheckboxGroup([("OTFusion", "otfusion"), ("GPUA", "gpua"),
                                     ("LaZSL", "lazsl")], value=list(flow.APP_METHODS),
                                    label="Methods", info="CLIP zero-shot always runs as the "
                                    "baseline.")
    c["run_button"] = gr.Button("Run", variant="primary", size="lg", elem_classes="run-button",
                                elem_id="run-button")
    with gr.Accordion("Advanced (LaZSL crops, attributes, labels)", open=False):
        gr.Markdown("**LaZSL** (crops need a new Run; θ, beside the summary, re-scores "
                    "instantly)")
        low, high, step = LAZSL_CROPS_UI
        c["n_crops"] = gr.Slider(low, high, LAZSL_CROPS, step=step,
                                 label=f"LaZSL crops per image (paper: {LAZSL_CROPS_PAPER})",
                                 elem_id="n-crops-slider")
        c["precision"] = gr.Radio(
            precision_choices(), value=app_precision(), label="Model precision",
            info="Part of the feature cache key; a change needs a new Run. The notes of each "
                 "Run say which precision each model ran in.", elem_id="precision-radio")
        c["attributes_file"] = gr.File(label="Attribute JSON {class: [descriptor, ...]}",
                                       file_types=[".json"],
                                       elem_id="attributes-upload")
        gr.Markdown("**Labels** (optional, overrides folder names)")
        c["labels_csv"] = gr.File(label="Labels CSV (filename,label)", file_types=[".csv", ".txt"],
                                  elem_id="labels-upload")


def _live_settings(c) -> None:
    """The live controls right above the summary they change (visible together at 1400x900);
    moving one re-solves its method only, from the cached features (no new Run)."""
    # One tab per method keeps the block as short as its largest tab, so that every slider and
    # the whole summary table fit on a 1400x900 screen together (an open accordion did not).
    with gr.Group(elem_id="live-settings"), gr.Tabs(elem_id="live-tabs"):
        with gr.Tab("OTFusion settings", id="otfusion-settings"):
            with gr.Row(equal_height=True):
                c["otfusion_recipe"] = _choice("otfusion_recipe", "OTFusion recipe (paper text "
                                               "/ authors' code)", RECIPE_LABELS, gr.Radio,
                                               scale=3)
                c["otfusion_setting"] = _choice("otfusion_setting", "OTFusion setting (what it "
                                                "fuses)", SETTING_CHOICES, gr.Dropdown, scale=4)
                c["otfusion_variant"] = _choice("otfusion_variant", "OTFusion variant",
                                                VARIANT_CHOICES, gr.Dropdown, scale=3)
                c["otfusion_weights"] = _choice("otfusion_weights", "Source weights",
                                                WEIGHT_LABELS, gr.Radio, scale=2)
            with gr.Row(equal_height=True):
                uniform = flow.control_default("lam_uniform")
                c["lam_uniform"] = gr.Checkbox(uniform, label="uniform λ (1/J)",
                                               elem_id="lam-uniform-checkbox", scale=1,
                                               min_width=110)
                c["lam"] = _slider("lam", LAM_LABELS[uniform], scale=2)
                c["eps"] = _slider("eps", "OTFusion ε (smoothing)", scale=2)
                c["n_iter"] = _slider("n_iter", "OTFusion iterations", scale=2)
        with gr.Tab("GPUA settings", id="gpua-settings"):
            with gr.Row(equal_height=True):
                c["gpua_recipe"] = _choice("gpua_recipe", "GPUA recipe (paper / public code)",
                                           RECIPE_LABELS, gr.Radio)
                c["gpua_targets"] = gr.Radio(
                    list(GPUA_TARGETS), value=flow.control_default("gpua_targets"),
                    label="GPUA Procrustes targets (paper: soft; public code: hard)",
                    elem_id="gpua-targets-radio")
            with gr.Row(equal_height=True):
                c["gpua_lam"] = _slider("gpua_lam", "GPUA λ (weight of CLIP)")
                c["gpua_eps"] = _slider("gpua_eps", "GPUA ε")
                c["gpua_ths_steps"] = _slider("gpua_ths_steps", "GPUA THS refinement steps")
        with gr.Tab("LaZSL settings", id="lazsl-settings"):
            with gr.Row(equal_height=True):
                c["lazsl_recipe"] = _choice(
                    "lazsl_recipe", "LaZSL recipe (paper / public code; a switch re-encodes the "
                    "attribute sentences, text only)", RECIPE_LABELS, gr.Radio)
                c["lazsl_theta"] = _slider("lazsl_theta", "LaZSL θ (crop vs global)")
    c["summary"] = gr.Markdown(elem_id="summary")


def _choice(key: str, label: str, labels: dict, kind, **options):
    """A radio or dropdown for control ``key`` (``flow.CONTROLS``), its value from core.config;
    elem_id ``<key>-choice`` (e.g. ``otfusion-recipe-choice``)."""
    return kind(choices(labels), value=flow.control_default(key), label=label,
                elem_id=f"{key.replace('_', '-')}-choice", **options)


def _slider(key: str, label: str, **options) -> gr.Slider:
    """The slider of live control ``key`` (``flow.CONTROLS``): default and range from core.config;
    elem_id ``<key>-slider`` (e.g. ``lam-slider``, ``gpua-ths-steps-slider``)."""
    method, name = flow.CONTROLS[key]
    low, high, step = ui_range(type(getattr(MethodSettings(), method)), name)
    return gr.Slider(low, high, flow.control_default(key), step=step, label=label,
                     elem_id=f"{key.replace('_', '-')}-slider", **options)


def _tabs(c) -> None:
    with gr.Tab("Predictions", id="predictions"):
        with gr.Row():
            c["compare"] = gr.Dropdown([("OTFusion", "otfusion")], value="otfusion",
                                       label="Compare with CLIP", scale=1)
            c["filter_mode"] = gr.Radio(list(predictions.FILTERS), value="all", label="Show",
                                        scale=2)
            c["page"] = gr.Slider(1, 2, 1, step=1, label="Page", visible=False, scale=1)
        with gr.Row(equal_height=True):
            c["gallery_info"] = gr.Markdown(elem_id="gallery-info")
            c["subset_clear"] = gr.Button("Show all images", size="sm", scale=0, visible=False,
                                          elem_id="subset-clear")
        with gr.Row(equal_height=False):  # the top-3 table beside the gallery and its preview
            c["gallery"] = gr.Gallery(label="Predictions", columns=4, height=600,
                                      object_fit="contain", allow_preview=True, scale=3,
                                      min_width=320, elem_id="fusion-gallery",
                                      elem_classes="short-captions")
            with gr.Column(scale=2, min_width=300):
                c["details"] = gr.Markdown(elem_id="details", min_height=120)
        c["downloads"] = gr.File(label="Download predictions (CSV, JSON)", file_count="multiple",
                                 interactive=False)
    with gr.Tab("Metrics", id="metrics"):
        c["metrics_note"] = gr.Markdown("Run on labelled images to see accuracy here.")
        with gr.Row():
            c["accuracy_plot"] = gr.Plot(label="Accuracy", elem_id="accuracy-plot")
            c["per_class_plot"] = gr.Plot(label="Per-class accuracy", elem_id="per-class-plot")
        c["confusion_plot"] = gr.Plot(label="Confusion matrix", elem_id="confusion-plot")
        gr.Markdown("#### Most confident mistakes")
        c["mistakes"] = gr.Gallery(label="Most confident mistakes", columns=5, height=400,
                                   object_fit="contain", elem_classes="short-captions")
    compare_view.layout(c)
    with gr.Tab("Embedding", id="embedding"):
        with gr.Row():
            c["projection"] = gr.Radio(embedding.PROJECTIONS, value="pca", label="Projection",
                                       info=embedding.PROJECTION_INFO, scale=2)
            c["draw_button"] = gr.Button("Draw maps", variant="primary", scale=0)
        with gr.Row():
            c["color_by"] = gr.Radio([(v, k) for k, v in embedding.COLOR_MODES.items()],
                                     value=embedding.TRUE_CLASS, label="Colour images by",
                                     scale=2, elem_id="color-by")
            c["map_method"] = gr.Dropdown([("OTFusion", "otfusion")], value="otfusion",
                                          label="Method (prediction, right / wrong)", scale=1,
                                          elem_id="map-method")
            c["map_search"] = gr.Textbox(label="Search file or class (Enter)", scale=1,
                                         placeholder="e.g. circle or 0042.jpg",
                                         elem_id="map-search", max_lines=1)
        with gr.Row():
            c["embed_before"] = gr.Plot(label="Before", elem_id="embed-before")
            c["embed_after"] = gr.Plot(label="After", elem_id="embed-after")
        c["gap_plot"] = gr.Plot(label="Modality gap")
        c["embed_note"] = gr.Markdown(embedding.NOT_DRAWN, elem_id="embed-note")
    with gr.Tab("Dynamics", id="dynamics"):
        c["dynamics_note"] = gr.Markdown("Run with OTFusion ticked to see its convergence.",
                                         elem_id="dynamics-note")
        with gr.Row():
            c["convergence_plot"] = gr.Plot(label="Convergence", elem_id="convergence-plot")
            c["weights_plot"] = gr.Plot(label="Source weights", elem_id="weights-plot")
        c["sweep_button"] = gr.Button("Run the λ / ε sensitivity sweep (cached features)")
        c["sweep_note"] = gr.Markdown(dynamics.SWEEP_NOT_RUN, elem_id="sweep-note")
        with gr.Row():
            c["sweep_lam"] = gr.Plot(label="Sensitivity to λ", elem_id="sweep-lam")
            c["sweep_eps"] = gr.Plot(label="Sensitivity to ε", elem_id="sweep-eps")
    with gr.Tab("Segmentation", id="segmentation"):
        gr.Markdown("Dense CLIP alone (MaskCLIP) vs VFM patches mapped into CLIP's text space by "
                    "GPUA (fitted on a patch pool of this run's images). Needs a ViT CLIP and a "
                    "patch VFM; runs the models once per image.")
        with gr.Row():
            c["seg_pick"] = gr.Dropdown([], label="Image", scale=3)
            c["seg_button"] = gr.Button("Segment", variant="primary", scale=1)
        with gr.Row():
            c["seg_threshold"] = gr.Slider(0.0, 1.0, 0.0, step=0.05,
                                           label="Unlabeled below this confidence")
            c["seg_alpha"] = gr.Slider(0.1, 1.0, 0.5, step=0.05,
                                       label="Fill opacity (1: the legend's exact colours)")
        c["seg_classes"] = gr.CheckboxGroup([], label="Classes shown")
        c["seg_image"] = gr.Image(label="Segmentation", type="pil", interactive=False,
                                  format="png", elem_id="seg-image", show_label=False)
        c["seg_legend"] = gr.HTML()
    with gr.Tab("LaZSL", id="lazsl"):
        gr.Markdown("LaZSL transports random crops of an image onto attribute descriptions of each "
                    "class. Thick boxes are the crops carrying the most mass, labelled with the "
                    "attribute they matched; dashed boxes were dropped by vision selection.")
        with gr.Row():
            c["lazsl_pick"] = gr.Dropdown([], label="Image", scale=3)
            c["lazsl_class"] = gr.Dropdown(["(LaZSL prediction)"], value="(LaZSL prediction)",
                                           label="Explain class", scale=2)
            c["lazsl_button"] = gr.Button("Explain", scale=1)
        with gr.Row():
            c["crop_image"] = gr.Image(label="Crops", type="pil", interactive=False, scale=2,
                                       format="png", show_label=False, elem_id="crop-image")
            c["class_scores"] = gr.Label(label="LaZSL class scores", num_top_classes=5, scale=1)
        c["crop_gallery"] = gr.Gallery(label="Top crops and their attributes", columns=6,
                                       height=220, object_fit="contain",
                                       elem_classes="short-captions")
        c["lazsl_table"] = gr.Markdown(elem_id="lazsl-table")
    with gr.Tab("Playground", id="playground"):
        gr.Markdown("Synthetic CLIP-like and DINO-like features with a modality gap: no model "
                    "weights needed, works offline. Move a slider to re-generate.")
        d = playground.PLAYGROUND_DEFAULTS
        with gr.Row():
            c["play_preset"] = gr.Dropdown(playground.preset_names(), value=d["preset"],
                                           label="Synthetic preset", elem_id="play-preset",
                                           info="Sets the noise and gap sliders below.")
            c["play_classes"] = gr.Slider(2, 30, d["n_classes"], step=1, label="Classes")
            c["play_samples"] = gr.Slider(50, 3000, d["n_samples"], step=50, label="Samples")
            c["play_seed"] = gr.Slider(0, 99, d["seed"], step=1, label="Seed")
        k = playground.KNOB_SLIDERS
        with gr.Row():
            c["play_gap"] = gr.Slider(*k["gap"][:2], d["gap"], step=k["gap"][2],
                                      label="Modality gap")
            c["play_vlm_noise"] = gr.Slider(*k["vlm_noise"][:2], d["vlm_noise"],
                                            step=k["vlm_noise"][2], label="CLIP image noise")
            c["play_vfm_noise"] = gr.Slider(*k["vfm_noise"][:2], d["vfm_noise"],
                                            step=k["vfm_noise"][2], label="DINO noise")
        with gr.Row():
            c["play_recipe"] = gr.Radio(choices(RECIPE_LABELS), value=d["recipe"],
                                        label="Recipe of OTFusion and GPUA (paper text / "
                                              "authors' code)",
                                        elem_id="play-recipe", scale=2)
            c["play_second_vfm"] = gr.Checkbox(d["second_vfm"], label="Second DINO-like model",
                                               elem_id="play-second-vfm", scale=1)
            c["play_vfm2_noise"] = gr.Slider(*k["vfm_noise"][:2], d["vfm2_noise"],
                                             step=k["vfm_noise"][2],
                                             label="Second DINO noise", scale=2)
        with gr.Row():
            c["play_projection"] = gr.Radio(
                embedding.PROJECTIONS[:1] + embedding.PROJECTIONS[2:],
                value=d["projection"], label="Projection", scale=2)
            low, high, step = ui_range(OTFusionSettings, "lam")
            c["play_lam"] = gr.Slider(low, high, d["lam"], step=step, label="OTFusion λ", scale=1,
                                      elem_id="play-lam")
            c["play_button"] = gr.Button("Generate", variant="primary", scale=0)
        c["play_shown"] = gr.State(None)  # what the plots show (demo.playground)
        c["play_note"] = gr.Markdown(elem_id="play-note")
        with gr.Row():
            c["play_accuracy"] = gr.Plot(label="Accuracy")
            c["play_weights"] = gr.Plot(label="OTFusion source weights", elem_id="play-weights")
        c["play_gap_plot"] = gr.Plot(label="Modality gap")
        with gr.Row():
            c["play_before"] = gr.Plot(label="Before")
            c["play_after"] = gr.Plot(label="After")


def _out(c, fields) -> list:
    return [c[f] for f in fields]


def _wire(demo: gr.Blocks, c, dev_api: bool, store: SessionStore) -> None:
    view = _view(c)
    lazsl_in = [c["session"], c["lazsl_pick"], c["lazsl_class"]]
    lazsl_out = _out(c, lazsl.LazslOutputs._fields)

    def keep(fn, takes_session=True):  # the handler's session lives in ``store``
        return stored(fn, store, takes_session=takes_session)

    def run(progress=gr.Progress(), current_session=None, **inputs):  # noqa: B008
        # A stream: CLIP zero-shot first, then the fused methods, then LaZSL (issue 12).
        yield from flow.run_in_app(inputs, progress=progress, current_session=current_session)

    # Inputs by name (Gradio's inputs_kwargs): the API's parameter names are flow.RUN_INPUTS.
    # A failed Run returns the message in the status line and skips every other output, so the
    # previous record's views stay as they were (no blank gallery, no error badges).
    ran = c["run_button"].click(keep(run, False),
                                inputs_kwargs={k: c[k] for k in flow.RUN_INPUTS},
                                outputs=_out(c, flow.RunOutputs._fields), api_name="run",
                                concurrency_id="models", concurrency_limit=1)
    ran.success(keep(lazsl.lazsl_explain), lazsl_in, lazsl_out, api_visibility="private")
    records = [ran]  # events that make or update a record: the Compare tab follows them

    def opened(session, compare, evt: gr.SelectData):
        return flow.tab_views(session, evt.value, compare)

    # The page draws the Metrics and Dynamics figures itself (demo.run.TAB_FIELDS): when their tab
    # is opened, and after each re-solve (below) if one is open, from the record stored by then.
    tab_out = _out(c, flow.TabOutputs._fields)
    c["tabs"].select(keep(opened), [c["session"], c["compare"]], tab_out,
                     api_visibility="private")
    redraw_open_tab = dict(fn=keep(flow.tab_views), inputs=[c["session"], c["open_tab"],
                                                              c["compare"]],
                           outputs=tab_out, api_visibility="private")
    solve_out = _out(c, flow.SolveOutputs._fields)
    # One re-solve per method, fired by its own controls (a radio on input, sliders on release).
    resolve_options = {
        "otfusion": dict(api_name="resolve", concurrency_limit=4, show_progress="minimal"),
        "gpua": dict(api_name="resolve_gpua"),
        "lazsl": dict(api_name="resolve_lazsl"),
    }
    switch_out = _out(c, flow.SwitchOutputs._fields)
    for method, options in resolve_options.items():
        keys = flow.controls_of(method)
        recipe_key = flow.RECIPE_CONTROLS[method]
        triggers = [c[k].release if isinstance(c[k], gr.Slider) else c[k].input
                    for k in keys if k != recipe_key]
        event = gr.on(triggers, keep(_resolver(method)), [c["session"], *view, c["open_tab"]],
                      inputs_kwargs={k: c[k] for k in keys}, outputs=solve_out,
                      concurrency_id="solve", trigger_mode="always_last", **options)
        # A recipe radio sets the knobs its recipe decides (the controls show them), then solves.
        switch = c[recipe_key].input(
            keep(_resolver(method, flow.switch_recipe)), [c["session"], *view, c["open_tab"]],
            inputs_kwargs={k: c[k] for k in keys}, outputs=switch_out,
            api_name=f"switch_{method}_recipe", concurrency_id="solve",
            trigger_mode="always_last")
        records += [event, switch]
        for e in (event, switch):
            e.success(**redraw_open_tab)
        if method == "lazsl":  # the explanation shows the record's θ and sentences: redraw it
            for e in (event, switch):
                e.success(keep(lazsl.lazsl_explain), lazsl_in, lazsl_out,
                          api_visibility="private")
    c["lam_uniform"].input(flow.lam_update, c["lam_uniform"], c["lam"], queue=False,
                           api_visibility="private")
    compare_view.wire(c, keep, after=records)
    c["compare"].input(keep(flow.refresh_views), [c["session"], *view], solve_out,
                       api_name="refresh", concurrency_id="solve")

    def first_page(session, compare, filter_mode, subset):
        return predictions.show_page(session, compare, filter_mode, 1, subset)

    page_out = _out(c, predictions.PageOutputs._fields)
    c["filter_mode"].input(keep(first_page),
                           [c["session"], c["compare"], c["filter_mode"], c["subset"]],
                           page_out, api_name="filter", concurrency_id="solve")
    c["page"].release(keep(predictions.show_page), [c["session"], *view], page_out, api_name="page",
                      concurrency_id="solve")

    def select(session, shown, evt: gr.SelectData):
        return predictions.select_image(session, shown, evt.index)

    embed_in = [c["session"], c["projection"], c["color_by"], c["selected"], c["map_method"],
                c["subset"]]
    embed_out = _out(c, embedding.EmbeddingOutputs._fields)
    c["gallery"].select(keep(select), [c["session"], c["shown"]],
                        _out(c, predictions.SelectOutputs._fields),
                        api_visibility="private").then(
        keep(embedding.embedding_highlight), embed_in, embed_out, api_visibility="private")
    gr.on([c["draw_button"].click, c["projection"].input, c["color_by"].input,
           c["map_method"].input],
          keep(embedding.embedding), embed_in, embed_out, api_name="embedding",
          concurrency_id="heavy", concurrency_limit=2)
    _wire_links(c, keep)
    c["sweep_button"].click(keep(dynamics.sweep), [c["session"]],
                            _out(c, dynamics.SweepOutputs._fields),
                            api_name="sweep", concurrency_id="heavy")

    def seg(session, index, visible, threshold, alpha, progress=gr.Progress()):  # noqa: B008
        return segmentation.segment_image(session, index, visible, threshold, alpha,
                                          progress=progress)

    seg_in = [c["session"], c["seg_pick"], c["seg_classes"], c["seg_threshold"], c["seg_alpha"]]
    seg_out = _out(c, segmentation.SegmentOutputs._fields)
    c["seg_button"].click(keep(seg), seg_in, seg_out, api_name="segment", concurrency_id="models")
    gr.on([c["seg_pick"].change, c["seg_classes"].input, c["seg_threshold"].release,
           c["seg_alpha"].release], keep(segmentation.redraw_segmentation), seg_in, seg_out,
          api_name="redraw_segmentation", concurrency_id="solve", trigger_mode="always_last")
    gr.on([c["lazsl_button"].click, c["lazsl_pick"].change, c["lazsl_class"].input],
          keep(lazsl.lazsl_explain), lazsl_in, lazsl_out, api_name="explain",
          concurrency_id="solve", trigger_mode="always_last")

    # The playground's inputs by its parameter names (its API), each from "play_<name>". One
    # event for every control (the preset too: the handler sets the knobs), so one session's
    # moves never overlap and ``play_shown`` always says what the page shows; unchanged figures
    # are skipped, and the old plots stay up (no progress overlay) while the new ones compute.
    play_in = {name: c[_PLAY_INPUTS.get(name, f"play_{name}")]
               for name in playground.PLAYGROUND_DEFAULTS}
    play_triggers = [c["play_button"].click, demo.load] + [
        x.release if isinstance(x, gr.Slider) else x.input
        for x in play_in.values() if not isinstance(x, gr.State)]
    gr.on(play_triggers, playground.playground, inputs_kwargs=play_in,
          outputs=_out(c, playground.PlaygroundOutputs._fields), api_name="playground",
          concurrency_id="heavy", trigger_mode="always_last", show_progress="minimal")
    c["play_recipe"].input(playground.lam_slider, c["play_recipe"], c["play_lam"], queue=False,
                           api_visibility="private")
    # The banner names the chosen models whose weights are missing; one click picks the
    # official code's sources.
    gr.on([c["vlm"].change, c["vfm"].change], inputs.models_banner, [c["vlm"], c["vfm"]],
          c["banner"], api_visibility="private", queue=False)
    c["official_sources"].click(inputs.official_sources, None,
                                _out(c, inputs.SourcesOutputs._fields), api_name="official_sources")

    c["preset"].input(inputs.preset_selected, [c["preset"]],
                      [c["classes_text"], c["templates_text"]], api_visibility="private")
    c["class_upload"].upload(inputs.classes_file_selected, [c["class_upload"]],
                             [c["classes_text"]], api_visibility="private")
    if dev_api:
        c["syn_button"].click(keep(flow.load_synthetic, False),
                              [c["syn_n"], c["syn_k"], c["syn_seed"], c["compare"],
                               c["filter_mode"]], _out(c, flow.RunOutputs._fields),
                              api_name="load_synthetic", api_visibility="undocumented",
                              concurrency_id="models")
        # The floor of a round trip (queue, events, the client): the same path with no work.
        c["ping"].click(lambda: None, None, None, api_name="ping",
                        api_visibility="undocumented")


# The playground's parameters whose component is not "play_<name>".
_PLAY_INPUTS = {"n_classes": "play_classes", "n_samples": "play_samples"}


def _wire_links(c, keep) -> None:
    """The maps and the gallery linked both ways (``demo.linking``)."""
    link_out = _out(c, linking.LinkOutputs._fields)
    map_view = [c["projection"], c["color_by"], c["map_method"], c["selected"]]
    c["map_event"].change(keep(linking.map_event),
                         [c["session"], c["map_event"], *_view(c), *map_view], link_out,
                         api_visibility="private", concurrency_id="solve",
                         trigger_mode="always_last")
    c["map_search"].submit(keep(linking.search), [c["session"], c["map_search"], c["compare"],
                                                  c["filter_mode"], *map_view], link_out,
                           api_name="search", concurrency_id="solve")
    c["subset_clear"].click(keep(linking.clear_subset),
                            [c["session"], c["compare"], c["filter_mode"], *map_view], link_out,
                            api_visibility="private", concurrency_id="solve")


def _view(c) -> list:
    """The gallery's view inputs, in the order handlers take them."""
    return [c["compare"], c["filter_mode"], c["page"], c["subset"]]


def _resolver(method: str, handler=None):
    """``handler`` (``flow.resolve`` or ``flow.switch_recipe``) for ``method``: view inputs by
    position, its controls by name."""
    handler = handler or flow.resolve

    def resolve(session, compare, filter_mode, page, subset, open_tab, **controls):
        return handler(method, session, controls, compare, filter_mode, page, subset, open_tab)

    resolve.__name__ = f"{handler.__name__}_{method}"
    return resolve


def launch(demo: gr.Blocks, **overrides):
    """Launch with the production settings; ``overrides`` for tests (port, thread lock...)."""
    # The first GPUA fit and UMAP map of a process pay imports and JIT compilation, the first
    # Run the int8 ONNX export of the default models: pay them while the server starts
    # (demo.warmup), not in the first user's click.
    warmup.start(getattr(demo, "default_models", ()))
    store = getattr(demo, "session_store", None)
    options = dict(
        max_file_size=os.environ.get("FUSIONLAB_MAX_FILE_SIZE", "200mb"),
        # Gradio's per-session data of sessions that never ran (the playground...): a bounded
        # number, least recently used dropped (ours are dropped with their session, above).
        state_session_capacity=8 * (store.limits.max_sessions if store else 32),
        enable_monitoring=False,
        allowed_paths=[str(EXAMPLES_DIR)],
        show_error=False,
        ssr_mode=False,
        theme=gr.themes.Soft(primary_hue="blue", secondary_hue="orange"),
        css=CSS + compare_view.CSS,
        js=JS,
    )
    options.update(overrides)
    warmup.freeze_heap()  # imports and the built app: never garbage, never scanned again
    return demo.launch(**options)
