"""The Run and the live re-solves: the two ways a session record is made.

Two speeds: :func:`run` extracts features (models, slow, once) and produces a new record;
:func:`resolve` re-solves only the method a control belongs to from the record's cached features
(no model, no encoding) and produces a new record for that method only. Both return a NamedTuple
whose field names are the keys of the components ``demo.ui`` wires them to, so layout and
handlers cannot drift apart. A Run also blanks every derived view of the previous record (maps,
sweep, segmentation, LaZSL explanation): nothing computed for another Run stays on screen.

Settings: the live controls are named once, in :data:`CONTROLS` (control key -> the method and the
field of its settings dataclass in ``core.config``); :func:`method_settings` is the one place that
turns control values into ``MethodSettings``, and ``demo.ui`` reads the sliders' defaults and ranges
from ``core.config`` through the same table. Handlers take their inputs as a dict keyed by those
names (Gradio's ``inputs_kwargs``), never as a long positional list.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from core.config import DEFAULT_VFM, DEFAULT_VLM, GPUA_TARGETS, LAZSL_CROPS, MethodSettings
from core.data import ImageItem
from core.methods import METHOD_TITLES, FeatureSet, run_method, run_methods
from core.pipeline import Extraction, ExtractSettings, extract, write_predictions
from core.synthetic import make_synthetic
from demo import dynamics, embedding, lazsl, metrics, predictions, segmentation
from demo.inputs import (
    check_run_request,
    parse_templates,
    read_images,
    resolve_attributes,
    resolve_classes,
)
from demo.messages import md_code, md_text, scrub_paths
from demo.state import (
    Session,
    cache_from_env,
    gpu,
    new_workdir,
    pipeline_progress,
    user_errors,
    warn_user,
    write_thumbnails,
)

RERUN = ("otfusion", "gpua", "lazsl")  # methods a user can tick; CLIP always runs
APP_METHODS = ("otfusion", "gpua")  # ticked when the app opens
# The live controls: component key -> (method, field of that method's settings in core.config).
# Moving one re-solves its method only, from the cached features.
CONTROLS = {
    "lam": ("otfusion", "lam"),
    "eps": ("otfusion", "eps"),
    "n_iter": ("otfusion", "n_iter"),
    "gpua_lam": ("gpua", "lam"),
    "gpua_eps": ("gpua", "eps"),
    "gpua_targets": ("gpua", "targets"),
    "gpua_ths_steps": ("gpua", "ths_steps"),
    "lazsl_theta": ("lazsl", "theta"),
}
_CHOICES = {"gpua_targets": ("GPUA targets", GPUA_TARGETS)}  # control -> (its name, choices)
# What a Run reads besides the controls, with the value used when an input is not given.
RUN_DEFAULTS = {
    "files": None, "classes_text": "", "templates_text": "", "vlm": DEFAULT_VLM,
    "vfm": DEFAULT_VFM, "methods": APP_METHODS, "n_crops": LAZSL_CROPS, "attributes_file": None,
    "labels_csv": None, "compare": None, "filter_mode": "all",
}
RUN_INPUTS = (*RUN_DEFAULTS, *CONTROLS)  # the components the Run button sends, by key


def controls_of(method: str) -> tuple[str, ...]:
    """The control keys that belong to ``method`` (e.g. otfusion: lam, eps, n_iter)."""
    return tuple(k for k, (m, _) in CONTROLS.items() if m == method)


def control_default(key: str, settings: MethodSettings | None = None):
    """The value of control ``key`` in ``settings`` (default: ``core.config``'s defaults)."""
    method, name = CONTROLS[key]
    return getattr(getattr(settings or MethodSettings(), method), name)


class SolveOutputs(NamedTuple):
    """What changes whenever the predictions change."""

    session: Any
    summary: str
    gallery: list
    gallery_info: str
    page: Any
    shown: list
    downloads: list
    metrics_note: str
    accuracy_plot: Any
    per_class_plot: Any
    confusion_plot: Any
    mistakes: list
    convergence_plot: Any
    dynamics_note: str


_RUN_EXTRA = ("status", "notes", "compare", "details", "seg_pick", "lazsl_pick", "seg_classes",
              "lazsl_class", "color_by")
# Views derived on demand from a record; a Run blanks them (they belong to the previous Run).
DERIVED = (*embedding.EmbeddingOutputs._fields, *dynamics.SweepOutputs._fields,
           *segmentation.SegmentOutputs._fields, *lazsl.LazslOutputs._fields)
# A Run: the solve outputs plus what depends on the image set and classes (flat, like Gradio wants).
RunOutputs = NamedTuple("RunOutputs",
                        [(f, Any) for f in SolveOutputs._fields + _RUN_EXTRA + DERIVED])


def method_settings(controls: Mapping[str, Any],
                    base: MethodSettings | None = None) -> MethodSettings:
    """``MethodSettings`` from control values keyed as :data:`CONTROLS`; controls not given keep
    ``base``'s values (default: ``core.config``'s). Sliders send floats: each value is cast to
    the type of the field it sets."""
    base = base or MethodSettings()
    changes: dict[str, dict] = {}
    for key, value in controls.items():
        if key not in CONTROLS:
            raise ValueError(f"Unknown control {key!r}; expected any of {', '.join(CONTROLS)}.")
        method, name = CONTROLS[key]
        if key in _CHOICES and value not in _CHOICES[key][1]:
            what, choices = _CHOICES[key]
            raise ValueError(f"{what}: expected one of {', '.join(choices)}, got {value!r}.")
        changes.setdefault(method, {})[name] = type(control_default(key, base))(value)
    return base.replace(**changes)


def _solve_outputs(session: Session, compare=None, filter_mode="all", page=1,
                   subset=None) -> SolveOutputs:
    """Every view of the predictions, read from ``session`` (results and settings alike);
    ``subset``: the gallery's map selection or search (``demo.predictions``)."""
    compare = predictions.compare_method(session, compare)
    filter_mode = filter_mode if filter_mode in predictions.FILTERS else "all"
    items, info, pages, page, shown = predictions.gallery_page(session, compare, filter_mode,
                                                               page, subset)
    export = Path(session.workdir) / "export"
    downloads = [str(p) for p in write_predictions(export, session.extraction, session.results,
                                                   session.settings)]
    note, acc, per_class, conf, mistakes = metrics.metrics_views(session, compare)
    conv, conv_note = dynamics.convergence_view(session)
    return SolveOutputs(
        session=session, summary=predictions.summary_markdown(session), gallery=items,
        gallery_info=info, page=predictions.page_update(pages, page),
        shown=shown, downloads=downloads, metrics_note=note, accuracy_plot=acc,
        per_class_plot=per_class, confusion_plot=conf, mistakes=mistakes,
        convergence_plot=conv, dynamics_note=conv_note)


def _notes_markdown(notes: list[str], skipped) -> str:
    """The notes panel: user text (names, reasons) shown literally, escaped once, no paths."""
    lines = [f"- {md_text(scrub_paths(n))}" for n in notes]
    if skipped:
        lines.append(f"- **{len(skipped)} file(s) skipped:**")
        lines += [f"  - {md_code(s.name)}: {md_text(scrub_paths(s.reason))}"
                  for s in skipped[:50]]
        if len(skipped) > 50:
            lines.append(f"  - ... and {len(skipped) - 50} more")
    return "\n".join(lines)


def _run_outputs(session: Session, status: str, compare=None, filter_mode="all") -> RunOutputs:
    ex = session.extraction
    solve = _solve_outputs(session, compare, filter_mode, 1)
    notes = _notes_markdown(list(session.notes), ex.skipped)
    others = [(session.title(m), m) for m in session.methods if m != "clip"] or [("CLIP", "clip")]
    compare = predictions.compare_method(session, compare)
    images = [(f"{i + 1}. {name}", i) for i, name in enumerate(ex.names)]
    names = session.class_names
    colors = embedding.color_choices(session)
    return RunOutputs(
        **solve._asdict(), status=status,
        notes=gr.update(value=notes, visible=bool(notes)),
        compare=gr.update(choices=others, value=compare),
        details=predictions.details_markdown(session, None),
        seg_pick=gr.update(choices=images, value=0),
        lazsl_pick=gr.update(choices=images, value=0),
        seg_classes=gr.update(choices=names, value=names),
        lazsl_class=gr.update(choices=["(LaZSL prediction)"] + names,
                              value="(LaZSL prediction)"),
        color_by=gr.update(choices=colors, value=colors[0][1]),
        **embedding.blank(session)._asdict(), **dynamics.blank()._asdict(),
        **segmentation.blank()._asdict(), **lazsl.blank(session)._asdict(),
    )


def failed_run_outputs(error: gr.Error) -> RunOutputs:
    """A Run that failed: the message once, in the status line; every other view keeps the
    previous record's content (``gr.skip()``), so nothing goes blank or shows an error badge."""
    title = getattr(error, "title", None) or "The Run failed"
    message = getattr(error, "message", None) or str(error)
    status = (f'<div class="run-failed" role="alert"><b>{html.escape(title)}.</b> {message}'
              "<br><em>The results below (if any) are still those of the previous Run.</em></div>")
    skip = {f: gr.skip() for f in RunOutputs._fields}
    return RunOutputs(**{**skip, "status": status})


@gpu(duration=120)
def _extract(image_set, class_names, settings, cache, progress):
    """The model step (runs on a ZeroGPU slot on Spaces)."""
    return extract(image_set, class_names, settings, cache=cache, progress=progress)


def _finish_session(extraction: Extraction, methods, settings, notes, progress) -> Session:
    report = pipeline_progress(progress) or (lambda *a: None)
    workdir = new_workdir()
    try:
        thumbs = write_thumbnails(extraction, workdir, report)
        report(0, 1, "solving " + ", ".join(METHOD_TITLES[m] for m in methods))
        results = run_methods(extraction.features, methods, settings)
    except BaseException:  # the Run failed: its folder must not wait for the 6-hour sweep
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    order = tuple(results)
    return Session(extraction=extraction, methods=order, settings=settings, results=results,
                   workdir=workdir, thumbs=thumbs, notes=tuple(notes))


@user_errors
def run(inputs: Mapping[str, Any] | None = None, *, cache_dir=None, progress=None) -> RunOutputs:
    """Load images and classes, extract features (cached), run the methods, build every view.

    ``inputs`` maps :data:`RUN_INPUTS` keys (the upload, classes, models, methods, crops and every
    control of :data:`CONTROLS`) to values; keys not given take :data:`RUN_DEFAULTS` and
    ``core.config``'s settings.
    """
    inputs = dict(inputs or {})
    unknown = [k for k in inputs if k not in RUN_INPUTS]
    if unknown:
        raise ValueError(f"Unknown input(s) {unknown}; expected any of {', '.join(RUN_INPUTS)}.")
    v = {**RUN_DEFAULTS, **{k: x for k, x in inputs.items() if k in RUN_DEFAULTS}}
    solver = method_settings({k: x for k, x in inputs.items() if k in CONTROLS})
    methods = tuple(m for m in (v["methods"] or ()) if m != "clip")
    unknown = [m for m in methods if m not in RERUN]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from OTFusion, GPUA, LaZSL.")
    if not v["vlm"]:
        raise ValueError("Pick a vision-language model (VLM).")
    image_set = read_images(v["files"], v["labels_csv"])
    class_names, notes = resolve_classes(v["classes_text"], image_set)
    templates = parse_templates(v["templates_text"])
    n_crops = v["n_crops"]
    check_run_request(len(image_set.items), class_names, methods, n_crops)
    attributes = None
    if "lazsl" in methods:
        attributes, attr_notes = resolve_attributes(v["attributes_file"], class_names)
        notes += attr_notes
    settings = ExtractSettings(vlm=v["vlm"], vfm=v["vfm"] or None, templates=templates,
                               n_crops=int(n_crops) if "lazsl" in methods else 0,
                               attributes=attributes)
    extraction = _extract(image_set, class_names, settings, cache_from_env(cache_dir),
                          pipeline_progress(progress))
    notes += list(extraction.warnings)
    if extraction.skipped:
        warn_user(f"{len(extraction.skipped)} file(s) were skipped; the notes panel lists why.")
    session = _finish_session(extraction, ("clip",) + methods, solver, notes, progress)
    # No cache hits or forward-pass counts here: the feature cache is shared by every user, so
    # they would tell a user that someone else uploaded the same images before (issue 13).
    st = extraction.stats
    status = (f"**Features ready** for {st['images']} images in {st['seconds']:.1f} s. Move λ, "
              "ε or the iterations to re-solve instantly.")
    return _run_outputs(session, status, v["compare"], v["filter_mode"])


def run_in_app(inputs: Mapping[str, Any] | None = None, *, cache_dir=None,
               progress=None) -> RunOutputs:
    """:func:`run` as the Run button calls it: a failure keeps the previous record and its views
    and shows the message once in the status line (``failed_run_outputs``), instead of Gradio's
    error state on every output."""
    try:
        return run(inputs, cache_dir=cache_dir, progress=progress)
    except gr.Error as error:
        return failed_run_outputs(error)


@user_errors
def resolve(method: str, session, controls: Mapping[str, Any], compare=None, filter_mode="all",
            page=1, subset=None) -> SolveOutputs:
    """A control of ``method`` moved: re-solve that method only, from the cached features.

    ``controls`` maps keys of :data:`CONTROLS` (those of ``method``, e.g. ``{"lam": 0.5}``) to
    their new values; the other methods keep the record's settings and results.
    """
    if method not in RERUN:
        raise ValueError(f"resolve: expected one of {', '.join(RERUN)}, got {method!r}.")
    if not isinstance(session, Session):
        return SolveOutputs(*([gr.skip()] * len(SolveOutputs._fields)))
    others = [k for k in controls if k in CONTROLS and CONTROLS[k][0] != method]
    if others:
        raise ValueError(f"resolve({method!r}): controls {others} belong to another method.")
    settings = method_settings(controls, base=session.settings)
    result = (run_method(method, session.extraction.features, settings)
              if method in session.results else None)
    return _solve_outputs(session.with_method(method, settings, result), compare, filter_mode,
                          page, subset)


@user_errors
def refresh_views(session, compare=None, filter_mode="all", page=1, subset=None):
    """Compare method or filter changed: same results, new gallery / metrics."""
    if not isinstance(session, Session):
        return SolveOutputs(*([gr.skip()] * len(SolveOutputs._fields)))
    return _solve_outputs(session, compare, filter_mode, page, subset)


# ----------------------------------------------------------------------------- benchmark hook


def _swatch(i: int, k: int) -> bytes:
    import io

    from PIL import Image

    from demo.overlays import class_colors, hex_to_rgb

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), hex_to_rgb(class_colors(k)[i % k])).save(buf, format="PNG")
    return buf.getvalue()


@user_errors
def load_synthetic(n_images=1000, n_classes=100, seed=0, compare=None, filter_mode="all",
                   *, d_vlm=512, d_vfm=768) -> RunOutputs:
    """Bench / test hook: a session whose features are synthetic (no model, no upload).

    Exposed only when FUSIONLAB_DEV_API=1 (``demo.ui``), so the latency benchmark can time a
    slider re-solve at 1,000 images x 100 classes through the real API.
    """
    data = make_synthetic(int(n_images), int(n_classes), seed=int(seed), d_vlm=d_vlm,
                          d_vfm=d_vfm, difficulty="hard")
    k = data.n_classes
    labels = data.labels.tolist()
    swatches = [_swatch(c, k) for c in range(k)]  # one tiny PNG per class, shared by its images
    items = tuple(ImageItem.from_bytes(f"synthetic_{i:05d}.png", swatches[c],
                                       label=data.class_names[c]) for i, c in enumerate(labels))
    feats = FeatureSet(vlm_image=data.vlm_image, text=data.vlm_text, vfm_image=data.vfm_image,
                       labels=data.labels)
    extraction = Extraction(features=feats, items=items, class_names=data.class_names,
                            settings=ExtractSettings(vlm="synthetic", vfm="synthetic"),
                            stats={"images": len(items)})
    session = _finish_session(extraction, ("clip", "otfusion", "gpua"),
                              MethodSettings().replace(gpua={"ths_steps": 50}), [], None)
    return _run_outputs(session, f"Synthetic session: {len(items)} images x {k} classes.",
                        compare, filter_mode)
