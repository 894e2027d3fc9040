"""The Run and the live re-solves: the two ways a session record is made.

Two speeds: :func:`run` extracts features (models, slow, once) and produces a new record;
:func:`resolve` re-solves only the method a control belongs to from the record's cached features
(no model, no encoding) and produces a new record for that method only. Both return a NamedTuple
whose field names are the keys of the components ``demo.ui`` wires them to, so layout and
handlers cannot drift apart. A Run also blanks every derived view of the previous record (maps,
sweep, segmentation, LaZSL explanation): nothing computed for another Run stays on screen.

Settings: the live controls and their conversion to ``MethodSettings`` live in
``demo.settings`` (re-exported here: ``CONTROLS``, ``method_settings``, ...). Handlers take their
inputs as a dict keyed by control names (Gradio's ``inputs_kwargs``), never as a long positional
list.

Recipes: :func:`switch_recipe` (the app's recipe radios) sets the fields a recipe decides
(``core.config.with_recipe``) and shows them in the controls; a Run or :func:`resolve` given a
recipe and other controls at once (the API) starts from the recipe and lets the other controls
override it. LaZSL's recipe also changes its attribute sentences: a switch re-encodes them (text
only, ``core.pipeline.with_lazsl_recipe``), never an image.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from core.config import (
    DEFAULT_VFM,
    DEFAULT_VLM,
    LAZSL_CROPS,
    MethodSettings,
    with_recipe,
)
from core.data import ImageItem
from core.methods import METHOD_TITLES, FeatureSet, run_method
from core.models import WeightsUnavailableError
from core.pipeline import (
    Extraction,
    ExtractSettings,
    extract,
    extract_in_stages,
    with_lazsl_recipe,
    write_predictions,
)
from core.synthetic import make_synthetic
from demo import dynamics, embedding, lazsl, metrics, predictions, segmentation
from demo.inputs import (
    check_run_request,
    missing_weights,
    parse_templates,
    read_images,
    resolve_attributes,
    resolve_classes,
)
from demo.messages import md_code, md_text, scrub_paths
from demo.precision import app_precision, precision_text
from demo.settings import (  # noqa: F401 (re-exported: the controls are part of this API)
    CONTROLS,
    RECIPE_CONTROLS,
    control_default,
    control_updates,
    control_value,
    controls_of,
    lam_update,
    method_settings,
)
from demo.state import (
    WEIGHTS_TITLE,
    Session,
    cache_from_env,
    gpu,
    new_workdir,
    pipeline_progress,
    remove_workdir,
    user_error,
    user_errors,
    warn_user,
    weights_message,
    write_thumbnails,
)

RERUN = ("otfusion", "gpua", "lazsl")  # methods a user can tick; CLIP always runs
APP_METHODS = ("otfusion", "gpua")  # ticked when the app opens
# What a Run reads besides the controls, with the value used when an input is not given. The
# model pickers hold lists of registry keys, the first of each the primary model.
RUN_DEFAULTS = {
    "files": None, "classes_text": "", "templates_text": "", "vlm": [DEFAULT_VLM],
    "vfm": [DEFAULT_VFM], "methods": APP_METHODS, "n_crops": LAZSL_CROPS, "attributes_file": None,
    "labels_csv": None, "compare": None, "filter_mode": "all", "precision": None,
}
RUN_INPUTS = (*RUN_DEFAULTS, *CONTROLS)  # the components the Run button sends, by key


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
    weights_plot: Any
    dynamics_note: str


_RUN_EXTRA = ("status", "notes", "compare", "details", "seg_pick", "lazsl_pick", "seg_classes",
              "lazsl_class", "color_by")
# Views derived on demand from a record; a Run blanks them (they belong to the previous Run).
DERIVED = (*embedding.EmbeddingOutputs._fields, *dynamics.SweepOutputs._fields,
           *segmentation.SegmentOutputs._fields, *lazsl.LazslOutputs._fields)
# A Run: the solve outputs plus what depends on the image set and classes (flat, like Gradio wants).
RunOutputs = NamedTuple("RunOutputs",
                        [(f, Any) for f in SolveOutputs._fields + _RUN_EXTRA + DERIVED])
# A recipe switch: the solve outputs plus every control (those of other methods are skipped).
SwitchOutputs = NamedTuple("SwitchOutputs",
                           [(f, Any) for f in SolveOutputs._fields + tuple(CONTROLS)])


# Tabs whose figures the page draws itself (:func:`tab_views`): when the tab is opened, and right
# after each re-solve if it is the open one. A re-solve from the page (``open_tab`` given) skips
# them, so a slider move never waits for figures that are hidden (the Plotly figures of these two
# tabs cost ~0.2 s each at 1,000 images on 2 cores).
TAB_FIELDS = {
    "metrics": ("metrics_note", "accuracy_plot", "per_class_plot", "confusion_plot", "mistakes"),
    "dynamics": ("convergence_plot", "weights_plot", "dynamics_note"),
}


def _tab_views(tab: str, session: Session, compare) -> dict[str, Any]:
    """The views of ``tab`` (a :data:`TAB_FIELDS` key) read from ``session``."""
    views = (metrics.metrics_views(session, compare) if tab == "metrics"
             else dynamics.convergence_view(session))
    return dict(zip(TAB_FIELDS[tab], views))


def _solve_outputs(session: Session, compare=None, filter_mode="all", page=1,
                   subset=None, open_tab: str | None = None) -> SolveOutputs:
    """Every view of the predictions, read from ``session`` (results and settings alike);
    ``subset``: the gallery's map selection or search (``demo.predictions``); ``open_tab``: the
    results tab on screen, given by the page, which then draws the :data:`TAB_FIELDS` tabs itself
    (skipped here); None (a Run, ``refresh_views``): every view is drawn."""
    compare = predictions.compare_method(session, compare)
    filter_mode = filter_mode if filter_mode in predictions.FILTERS else "all"
    items, info, pages, page, shown = predictions.gallery_page(session, compare, filter_mode,
                                                               page, subset)
    export = Path(session.workdir) / "export"
    downloads = [str(p) for p in write_predictions(export, session.extraction, session.results,
                                                   session.settings)]
    tabs = {}
    for tab, fields in TAB_FIELDS.items():
        tabs.update(_tab_views(tab, session, compare) if open_tab is None
                    else dict.fromkeys(fields, gr.skip()))
    return SolveOutputs(
        session=session, summary=predictions.summary_markdown(session), gallery=items,
        gallery_info=info, page=predictions.page_update(pages, page),
        shown=shown, downloads=downloads, **tabs)


TabOutputs = NamedTuple("TabOutputs", [("open_tab", Any)] + [
    (f, Any) for fields in TAB_FIELDS.values() for f in fields])


@user_errors
def tab_views(session, tab: str, compare=None) -> TabOutputs:
    """``tab`` (its label, e.g. "Metrics") was opened, or a re-solve just made a new record
    while it is open: remember it and draw its figures from the current record."""
    key = str(tab or "").strip().lower()
    out = {f: gr.skip() for f in TabOutputs._fields}
    out["open_tab"] = key
    if key in TAB_FIELDS and isinstance(session, Session):
        out.update(_tab_views(key, session, predictions.compare_method(session, compare)))
    return TabOutputs(**out)


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


def failed_run_outputs(error: gr.Error, *, partial: bool = False) -> RunOutputs:
    """A Run that failed: the message once, in the status line; every other view keeps the
    previous record's content (``gr.skip()``), so nothing goes blank or shows an error badge."""
    title = getattr(error, "title", None) or "The Run failed"
    message = getattr(error, "message", None) or str(error)
    status = (f'<div class="run-failed" role="alert"><b>{html.escape(title)}.</b> {message}'
              + ("<br><em>The results below are those of this Run's earlier stages.</em></div>"
                 if partial else
                 "<br><em>The results below (if any) are still those of the previous Run.</em>"
                 "</div>"))
    skip = {f: gr.skip() for f in RunOutputs._fields}
    return RunOutputs(**{**skip, "status": status})


@gpu(duration=120)
def _extract(image_set, class_names, settings, *, cache, progress):
    """The model step (runs on a ZeroGPU slot on Spaces)."""
    return extract(image_set, class_names, settings, cache=cache, progress=progress)


def _finish_session(extraction: Extraction, methods, settings, notes, progress,
                    previous: Session | None = None) -> Session:
    """A record of ``methods`` (CLIP first) solved on ``extraction``. ``previous``: the record of
    an earlier stage of the same Run, whose work folder, thumbnails and results (where the
    settings are the same) are reused."""
    report = pipeline_progress(progress) or (lambda *a: None)
    workdir = previous.workdir if previous is not None else new_workdir()
    try:
        thumbs = previous.thumbs if previous is not None else write_thumbnails(
            extraction, workdir, report)
        # An earlier stage's result stands when its method's settings did not change: the
        # features it used are the same in every stage.
        kept = {m: r for m, r in (previous.results if previous is not None else {}).items()
                if m in methods and getattr(previous.settings, m) == getattr(settings, m)}
        todo = [m for m in methods if m not in kept]
        report(0, 1, "solving " + ", ".join(METHOD_TITLES[m] for m in todo))
        solved = {m: run_method(m, extraction.features, settings) for m in todo}
        results = {m: kept[m] if m in kept else solved[m] for m in methods}
    except BaseException:  # the Run failed: its folder must not wait for the 6-hour sweep
        if previous is None:
            remove_workdir(workdir)
        raise
    order = tuple(results)
    return Session(extraction=extraction, methods=order, settings=settings, results=results,
                   workdir=workdir, thumbs=thumbs, notes=tuple(notes))


# What the status line says is still coming after each stage (core.pipeline.stages).
_NEXT = {"vlm": "computing the VFM features for {methods}",
         "models": "computing LaZSL's {crops} crops per image (one more VLM forward each)"}


@user_errors
def run_stages(inputs: Mapping[str, Any] | None = None, *, cache_dir=None, progress=None,
               current_session=None):
    """:func:`run` as a stream: yields RunOutputs after each extraction stage (issue 12): CLIP
    zero-shot as soon as the first VLM's features exist, then OTFusion and GPUA when the other
    models' are there, then LaZSL after its crops; the last one is :func:`run`'s result.

    ``current_session``: a callable returning the session the user has now; when a slider
    re-solved an earlier stage's record meanwhile, the later stages keep those settings.

    ``inputs`` maps :data:`RUN_INPUTS` keys (the upload, classes, models, methods, crops and every
    control of :data:`CONTROLS`) to values; keys not given take :data:`RUN_DEFAULTS` and
    ``core.config``'s settings. ``vlm`` / ``vfm``: a registry key or a list of them, the first
    the primary model. A recipe control starts its method from that recipe (which also sets the
    fields no control shows, e.g. OTFusion's Sinkhorn iterations); the other controls are used as
    sent, so an API client sends the recipe's control values with it (``switch_recipe``, the
    ``/switch_<method>_recipe`` endpoint, returns them), as the app's radios do.
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
    vlms, vfms = _model_keys(v["vlm"]), _model_keys(v["vfm"])
    if not vlms:
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
    settings = ExtractSettings(vlm=vlms[0], vfm=vfms[0] if vfms else None, templates=templates,
                               n_crops=int(n_crops) if "lazsl" in methods else 0,
                               attributes=attributes, extra_vlms=tuple(vlms[1:]),
                               extra_vfms=tuple(vfms[1:]), lazsl_recipe=solver.lazsl.recipe,
                               precision=v["precision"] or app_precision())
    start, session = time.perf_counter(), None
    stages = extract_in_stages(image_set, class_names, settings, cache=cache_from_env(cache_dir),
                               progress=pipeline_progress(progress), extract_fn=_extract)
    while True:
        try:
            stage = next(stages, None)
        except WeightsUnavailableError as exc:  # name every chosen model without weights
            missing = missing_weights([*vlms, *vfms]) or [exc.key]
            raise user_error(weights_message(*missing), title=WEIGHTS_TITLE,
                             duration=None) from None
        if stage is None:
            return
        extraction = stage.extraction
        wanted = tuple(m for m in ("clip", *methods) if m in stage.methods)
        if stage.last:
            notes += list(extraction.warnings)
            if extraction.skipped:
                warn_user(f"{len(extraction.skipped)} file(s) were skipped; the notes panel "
                          "lists why.")
        # No cache hits or forward-pass counts in the status: the feature cache is shared by
        # every user, so they would tell a user that someone else uploaded the same images
        # before (issue 13).
        ready = ", ".join(METHOD_TITLES[m] for m in wanted)
        if not stage.last:
            later = [METHOD_TITLES[m] for m in methods if m not in stage.methods]
            coming = (_NEXT[stage.name].format(methods=", ".join(later), crops=settings.n_crops)
                      + f" ({', '.join(later)} will appear here). Sliders work on what is shown.")
        # Which precision each model ran in ("auto" resolves per model): first in the notes.
        precisions = precision_text(extraction)
        stage_notes = [f"Model precision: {precisions}", *notes] if precisions else notes
        base, latest = session, _moved(current_session, session)
        while True:  # until no slider re-solved the shown record while this stage was built
            if latest is not None:  # a slider moved on an earlier stage: keep its settings
                base, solver = latest, latest.settings
            session = _finish_session(extraction, wanted, solver, stage_notes, progress,
                                      previous=base)
            elapsed = time.perf_counter() - start
            status = (f"**Features ready** for {len(extraction.items)} images in {elapsed:.1f} s. "
                      "Move λ, ε, the iterations or a recipe to re-solve instantly."
                      if stage.last else f"**{ready} ready** after {elapsed:.1f} s; still {coming}")
            out = _run_outputs(session, status, v["compare"], v["filter_mode"])
            latest = _moved(current_session, base)
            if latest is None:
                break
        yield out


def _moved(current_session, shown: Session | None) -> Session | None:
    """The record the user has now if a slider replaced ``shown`` (an earlier stage of this Run)
    with a re-solved one; None if not (or no ``current_session`` callable, or it was dropped)."""
    if current_session is None or shown is None:
        return None
    try:
        now = current_session()
    except gr.Error:
        return None
    if isinstance(now, Session) and now.workdir == shown.workdir and now is not shown:
        return now
    return None


def run(inputs: Mapping[str, Any] | None = None, *, cache_dir=None, progress=None) -> RunOutputs:
    """Load images and classes, extract features (cached), run the methods, build every view:
    the last output of :func:`run_stages` (same inputs and errors)."""
    *_, last = run_stages(inputs, cache_dir=cache_dir, progress=progress)
    return last


def run_in_app(inputs: Mapping[str, Any] | None = None, *, cache_dir=None, progress=None,
               current_session=None):
    """:func:`run_stages` as the Run button calls it (a stream of outputs): a failure keeps the
    views already on the page (the previous record's, or the stages of this Run that were
    shown) and says so once in the status line (``failed_run_outputs``), instead of Gradio's
    error state on every output."""
    shown = False
    try:
        for out in run_stages(inputs, cache_dir=cache_dir, progress=progress,
                              current_session=current_session):
            shown = True
            yield out
    except gr.Error as error:
        yield failed_run_outputs(error, partial=shown)


@user_errors
def resolve(method: str, session, controls: Mapping[str, Any], compare=None, filter_mode="all",
            page=1, subset=None, open_tab=None) -> SolveOutputs:
    """A control of ``method`` moved: re-solve that method only, from the cached features.

    ``controls`` maps keys of :data:`CONTROLS` (those of ``method``, e.g. ``{"lam": 0.5}``) to
    their new values; the other methods keep the record's settings and results.
    """
    _check_method(method, controls)
    if not isinstance(session, Session):
        return SolveOutputs(*([gr.skip()] * len(SolveOutputs._fields)))
    settings = method_settings(controls, base=session.settings)
    return _resolved(method, session, settings, compare, filter_mode, page, subset, open_tab)


@user_errors
def switch_recipe(method: str, session, controls: Mapping[str, Any], compare=None,
                  filter_mode="all", page=1, subset=None, open_tab=None) -> SwitchOutputs:
    """The recipe control of ``method`` changed: the fields that recipe decides take its values
    (``core.config.with_recipe``), the others keep the controls' values; the controls show the
    result, and with a record ``method`` re-solves from the cached features (LaZSL re-encodes its
    attribute sentences first: text only).

    ``controls``: the controls of ``method`` as they stand, the recipe control included.
    """
    _check_method(method, controls)
    key = RECIPE_CONTROLS.get(method)
    if key not in controls:
        raise ValueError(f"switch_recipe({method!r}): give the recipe control {key!r}.")
    has_record = isinstance(session, Session)
    current = method_settings({k: v for k, v in controls.items() if k != key},
                              base=session.settings if has_record else None)
    name = control_value(key, controls[key])
    settings = current.replace(**{method: with_recipe(getattr(current, method), name)})
    out = {f: gr.skip() for f in SwitchOutputs._fields}
    if has_record:
        out.update(_resolved(method, session, settings, compare, filter_mode, page,
                             subset, open_tab)._asdict())
    out.update(control_updates(method, settings))
    return SwitchOutputs(**out)


def _check_method(method: str, controls: Mapping[str, Any]) -> None:
    if method not in RERUN:
        raise ValueError(f"resolve: expected one of {', '.join(RERUN)}, got {method!r}.")
    others = [k for k in controls if k in CONTROLS and CONTROLS[k][0] != method]
    if others:
        raise ValueError(f"resolve({method!r}): controls {others} belong to another method.")


def _resolved(method: str, session: Session, settings: MethodSettings, compare, filter_mode,
              page, subset=None, open_tab=None) -> SolveOutputs:
    """The record with ``method`` re-solved under ``settings`` (its other methods untouched)."""
    if method == "lazsl" and settings.lazsl.recipe != session.extraction.settings.lazsl_recipe:
        session = replace(session, extraction=_reencode_sentences(session.extraction,
                                                                   settings.lazsl.recipe))
    result = (run_method(method, session.extraction.features, settings)
              if method in session.results else None)
    return _solve_outputs(session.with_method(method, settings, result), compare, filter_mode,
                          page, subset, open_tab)


@gpu(duration=60)
def _reencode_sentences(extraction: Extraction, recipe: str) -> Extraction:
    """LaZSL's attribute sentences under ``recipe``, through the text tower only (cached)."""
    return with_lazsl_recipe(extraction, recipe, cache=cache_from_env())


def _model_keys(value) -> list[str]:
    """A model picker's value (a key, a list of keys, or nothing) as a list of keys."""
    if not value:
        return []
    keys = [value] if isinstance(value, str) else list(value)
    return [str(k) for k in keys if k]


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
