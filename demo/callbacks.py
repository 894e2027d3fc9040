"""Event handlers of the app: plain functions, callable in tests without a browser.

Each handler returns a NamedTuple whose field names are the keys of the components ``demo.ui``
wires them to, so layout and handlers cannot drift apart. User mistakes raise ``gr.Error`` with
actionable text (``demo.session.user_errors``); nothing else reaches the user as a traceback.

Two speeds: :func:`run` extracts features (models, slow, once); the ``resolve_*`` handlers re-solve
only the methods a control affects from the session's cached features (milliseconds for OTFusion).

This module holds the core flow (Run, re-solves, paging and selection, presets and class files,
the dev/benchmark hook); the exploration tabs' handlers are in ``demo.explore_callbacks``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from core.data import ImageItem, get_preset, load_classes_file
from core.methods import METHOD_TITLES, FeatureSet, SolverSettings, run_method, run_methods
from core.pipeline import Extraction, ExtractSettings, FeatureCache, extract, write_predictions
from core.synthetic import make_synthetic
from demo import explore_views, views
from demo.messages import md_code, md_text, scrub_paths
from demo.session import (
    DEFAULT_VFM,
    DEFAULT_VLM,
    Session,
    check_run_request,
    gpu,
    new_workdir,
    parse_templates,
    read_images,
    resolve_attributes,
    resolve_classes,
    user_errors,
    warn_user,
    write_thumbnails,
)

RERUN = {"otfusion": ("otfusion",), "gpua": ("gpua",), "lazsl": ("lazsl",)}


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
# A Run: the solve outputs plus what depends on the image set and classes (flat, like Gradio wants).
RunOutputs = NamedTuple("RunOutputs", [(f, Any) for f in SolveOutputs._fields + _RUN_EXTRA])


def pipeline_progress(progress):
    """Pipeline-style ``cb(done, total, desc)`` over a ``gr.Progress`` (or nothing)."""
    if progress is None:
        return None
    return lambda done, total, desc: progress((int(done), int(max(total, 1))), desc=desc)


def cache_from_env(cache_dir: str | None = None) -> FeatureCache | None:
    """The on-disk feature cache: ``cache_dir``, else $FUSIONLAB_CACHE_DIR, else the default;
    $FUSIONLAB_FEATURE_CACHE=0 turns it off."""
    if os.environ.get("FUSIONLAB_FEATURE_CACHE", "1").strip() in ("0", "off", "false"):
        return None
    return FeatureCache(cache_dir or os.environ.get("FUSIONLAB_CACHE_DIR") or None)


def solver_settings(lam=0.8, eps=0.01, n_iter=10, gpua_lam=0.9, gpua_eps=0.01,
                    gpua_targets="soft", gpua_ths_steps=200, lazsl_theta=0.8,
                    base: SolverSettings | None = None) -> SolverSettings:
    """SolverSettings from the UI controls (sliders send floats)."""
    if gpua_targets not in ("soft", "hard"):
        raise ValueError(f"GPUA targets: expected 'soft' or 'hard', got {gpua_targets!r}.")
    return replace(
        base or SolverSettings(), otfusion_lam=float(lam), otfusion_eps=float(eps),
        otfusion_iter=int(n_iter), gpua_lam=float(gpua_lam), gpua_eps=float(gpua_eps),
        gpua_targets=gpua_targets, gpua_ths_steps=int(gpua_ths_steps),
        lazsl_theta=float(lazsl_theta))


def _page_update(pages: int, page: int):
    # A slider needs minimum < maximum; with one page it is hidden anyway.
    return gr.update(maximum=max(2, pages), value=page, visible=pages > 1)


def _solve_outputs(session: Session, compare=None, filter_mode="all", page=1) -> SolveOutputs:
    compare = views.compare_method(session, compare)
    filter_mode = filter_mode if filter_mode in views.FILTERS else "all"
    items, info, pages, page, shown = views.gallery_page(session, compare, filter_mode, page)
    export = Path(session.workdir) / "export"
    downloads = [str(p) for p in write_predictions(export, session.extraction, session.results,
                                                   session.settings)]
    note, acc, per_class, conf, mistakes = views.metrics_views(session, compare)
    conv, conv_note = views.convergence_view(session)
    return SolveOutputs(
        session=session, summary=views.summary_markdown(session), gallery=items,
        gallery_info=info, page=_page_update(pages, page),
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
    compare = views.compare_method(session, compare)
    images = [(f"{i + 1}. {name}", i) for i, name in enumerate(ex.names)]
    names = session.class_names
    colors = explore_views.color_choices(session)
    return RunOutputs(
        **solve._asdict(), status=status,
        notes=gr.update(value=notes, visible=bool(notes)),
        compare=gr.update(choices=others, value=compare),
        details=views.details_markdown(session, None),
        seg_pick=gr.update(choices=images, value=0),
        lazsl_pick=gr.update(choices=images, value=0),
        seg_classes=gr.update(choices=names, value=names),
        lazsl_class=gr.update(choices=["(LaZSL prediction)"] + names,
                              value="(LaZSL prediction)"),
        color_by=gr.update(choices=colors, value=colors[0][1]),
    )


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
def run(files=None, classes_text="", templates_text="", vlm=DEFAULT_VLM, vfm=DEFAULT_VFM,
        methods=("otfusion", "gpua"), lam=0.8, eps=0.01, n_iter=10, gpua_lam=0.9,
        gpua_eps=0.01, gpua_targets="soft", gpua_ths_steps=200, n_crops=16, lazsl_theta=0.8,
        attributes_file=None, labels_csv=None, compare=None, filter_mode="all", *,
        cache_dir=None, progress=None) -> RunOutputs:
    """Load images and classes, extract features (cached), run the methods, build every view."""
    methods = tuple(m for m in (methods or ()) if m != "clip")
    unknown = [m for m in methods if m not in RERUN]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from OTFusion, GPUA, LaZSL.")
    if not vlm:
        raise ValueError("Pick a vision-language model (VLM).")
    image_set = read_images(files, labels_csv)
    class_names, notes = resolve_classes(classes_text, image_set)
    templates = parse_templates(templates_text)
    check_run_request(len(image_set.items), class_names, methods, n_crops)
    attributes = None
    if "lazsl" in methods:
        attributes, attr_notes = resolve_attributes(attributes_file, class_names)
        notes += attr_notes
    settings = ExtractSettings(vlm=vlm, vfm=vfm or None, templates=templates,
                               n_crops=int(n_crops) if "lazsl" in methods else 0,
                               attributes=attributes)
    solver = solver_settings(lam, eps, n_iter, gpua_lam, gpua_eps, gpua_targets,
                             gpua_ths_steps, lazsl_theta)
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
    return _run_outputs(session, status, compare, filter_mode)


def _resolve(session, controls: dict, rerun: tuple[str, ...], compare, filter_mode, page):
    if not isinstance(session, Session):
        return SolveOutputs(*([gr.skip()] * len(SolveOutputs._fields)))
    settings = solver_settings(**controls, base=session.settings)
    results = dict(session.results)
    for m in rerun:
        if m in results:
            results[m] = run_method(m, session.extraction.features, settings)
    memo = {k: v for k, v in session.memo.items() if k[0] != "captions"}  # captions show preds
    new = replace(session, settings=settings, results=results, memo=memo)
    return _solve_outputs(new, compare, filter_mode, page)


@user_errors
def resolve_otfusion(session, lam, eps, n_iter, compare=None, filter_mode="all", page=1):
    """λ / ε / iterations moved: re-solve OTFusion only, from the cached features."""
    return _resolve(session, dict(lam=lam, eps=eps, n_iter=n_iter), RERUN["otfusion"], compare,
                    filter_mode, page)


@user_errors
def resolve_gpua(session, gpua_lam, gpua_eps, gpua_targets, gpua_ths_steps, compare=None,
                 filter_mode="all", page=1):
    """GPUA settings moved: re-fit GPUA only (seconds; no re-encoding)."""
    return _resolve(session, dict(gpua_lam=gpua_lam, gpua_eps=gpua_eps, gpua_targets=gpua_targets,
                                  gpua_ths_steps=gpua_ths_steps), RERUN["gpua"], compare,
                    filter_mode, page)


@user_errors
def resolve_lazsl(session, lazsl_theta, compare=None, filter_mode="all", page=1):
    """LaZSL theta moved: re-score LaZSL only."""
    return _resolve(session, dict(lazsl_theta=lazsl_theta), RERUN["lazsl"], compare, filter_mode,
                    page)


@user_errors
def refresh_views(session, compare=None, filter_mode="all", page=1):
    """Compare method or filter changed: same results, new gallery / metrics."""
    if not isinstance(session, Session):
        return SolveOutputs(*([gr.skip()] * len(SolveOutputs._fields)))
    return _solve_outputs(session, compare, filter_mode, page)


class PageOutputs(NamedTuple):
    gallery: list
    gallery_info: str
    page: Any
    shown: list


@user_errors
def show_page(session, compare=None, filter_mode="all", page=1) -> PageOutputs:
    """Another gallery page (no solver, no downloads)."""
    if not isinstance(session, Session):
        return PageOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    compare = views.compare_method(session, compare)
    items, info, pages, page, shown = views.gallery_page(session, compare, filter_mode, page)
    return PageOutputs(items, info, _page_update(pages, page),
                       shown)


class SelectOutputs(NamedTuple):
    selected: Any
    details: str
    seg_pick: Any
    lazsl_pick: Any


@user_errors
def select_image(session, shown, position) -> SelectOutputs:
    """A gallery click: remember the image, show its top-k, point the other tabs at it."""
    if not isinstance(session, Session) or position is None or not shown:
        return SelectOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    index = int(shown[int(position)]) if int(position) < len(shown) else None
    if index is None:
        return SelectOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return SelectOutputs(index, views.details_markdown(session, index), gr.update(value=index),
                         gr.update(value=index))


class PresetOutputs(NamedTuple):
    classes_text: Any
    templates_text: Any


@user_errors
def preset_selected(key) -> PresetOutputs:
    """A dataset preset fills the class list and its CoOp prompt."""
    if not key:
        return PresetOutputs(gr.skip(), gr.skip())
    preset = get_preset(key)
    return PresetOutputs("\n".join(preset.class_names), preset.template)


@user_errors
def classes_file_selected(file) -> str:
    """An uploaded class file (.txt one per line, or a .json list) fills the class list."""
    if not file:
        return gr.skip()
    path = getattr(file, "name", file)
    parsed = load_classes_file(path)
    for w in parsed.warnings:
        warn_user(w)
    return "\n".join(parsed.names)


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
                              SolverSettings(gpua_ths_steps=50), [], None)
    return _run_outputs(session, f"Synthetic session: {len(items)} images x {k} classes.",
                        compare, filter_mode)
