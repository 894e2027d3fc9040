"""The evaluation harness's engine: extract a dataset's splits, run every method, compare.

``evaluate_dataset`` is the Python API behind ``python -m core eval`` (protocol: see
``core.eval``). Memory: images are read and encoded ``chunk_size`` files at a time (raw bytes
of one chunk: ~230 MB for 2,048 ImageNet JPEGs); the features of a whole split stay in memory:
n x (d_vlm + d_vfm) x 4 bytes (ImageNet val, ViT-B/16 + DINOv2-L: 50k x 1536 x 4 = 0.3 GB), plus
n x (1 + n_crops) x d_vlm x 4 for LaZSL (16 crops: 1.7 GB on ImageNet val). GPUA on the full
ImageNet train split (1.28 M images) needs ~16 GB: use ``gpua_shots=16`` there. Features are
cached per image content (``core.pipeline.cache``), so a rerun with other solver settings only
re-solves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from core.config import LAZSL_CROPS_PAPER, MethodSettings, with_recipe
from core.data import load_attributes
from core.data.benchmarks import BenchmarkData, balanced_subset, open_benchmark
from core.eval.paper_numbers import gpua_ablation, otfusion_protocol, reported_all
from core.eval.records import DatasetReport, EvalConfig, MethodRow
from core.eval.splits import Progress, SplitFeatures, extract_split, train_pool
from core.methods.run import (
    METHOD_TITLES,
    FeatureSet,
    fit_gpua_with,
    fit_otfusion_with,
    gpua_inputs,
    gpua_sources,
    otfusion_inputs,
)

__all__ = ["DatasetReport", "EvalConfig", "MethodRow", "SplitFeatures", "evaluate_dataset",
           "extract_split"]


def _attributes(data: BenchmarkData, config: EvalConfig, notes: list[str]):
    """LaZSL descriptors ``{class: [descriptor, ...]}`` for this dataset, or None (none given)."""
    path = None
    if config.attributes_file:
        path = Path(config.attributes_file)
    elif config.attributes_dir:
        # An ImageNet variant's classes are ImageNet's: its descriptors file serves them too.
        keys = (data.key, "imagenet") if data.layout == "imagenet-variant" else (data.key,)
        for name in [f"{p}{k}.json" for k in keys for p in ("", "descriptors_")]:
            if (Path(config.attributes_dir) / name).is_file():
                path = Path(config.attributes_dir) / name
                break
    if path is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attrs = load_attributes(path, class_names=list(data.class_names), on_missing="warn")
    notes += [f"LaZSL: {w.message} (class name used for those)" for w in caught]
    notes.append(f"LaZSL descriptors: {path}")
    return attrs


def _fit_gpua(pool: FeatureSet, test: FeatureSet, settings: MethodSettings):
    align = fit_gpua_with(pool, settings.gpua, text=test.text)
    z_test = gpua_inputs(test, settings.gpua)
    probs = align.predict_proba(z_test, test.text,
                                temperature=settings.clip.temperature)  # (n, K)
    before = None  # the Procrustes map alone, to report what THS changed
    if settings.gpua.ths_steps > 0:
        before = align.procrustes_only().predict(z_test, test.text)
    return probs.argmax(dim=-1), before, gpua_sources(test, settings.gpua)


def _fit_otfusion(pool: FeatureSet, test: FeatureSet, settings: MethodSettings):
    """OTFusion's inductive mode: GMMs and weights fitted on the pool, the test split scored by
    their fusion with its VLM probabilities, without OT."""
    model = fit_otfusion_with(pool, settings)
    vs, ys, names = otfusion_inputs(test, settings)
    return model.predict_proba(vs, ys).argmax(dim=-1), None, names


def _paper_lookup(data: BenchmarkData, config: EvalConfig) -> Callable:
    """``(method, protocol) -> {"paper", "paper_source", "paper_exact", "other_reported"}`` for
    this dataset and these backbones ({} where no paper ran it). Not exact when the paper used
    another VFM, or fused fewer models than this run's OTFusion (extra VLMs / VFMs)."""
    from core.models import get_spec

    vlm_spec = get_spec(config.vlm)
    vfm_spec = get_spec(config.vfm) if config.vfm else None
    more_models = bool(config.extra_vlms or config.extra_vfms)

    def lookup(method: str, protocol: str) -> dict:
        if not data.is_preset:
            return {}
        found = reported_all(method, data.key, protocol, vlm_spec=vlm_spec, vfm_spec=vfm_spec)
        if not found:
            return {}
        best = found[0]
        return {"paper": best.value, "paper_source": best.source,
                "paper_exact": best.exact and not (more_models and method == "otfusion"),
                "other_reported": tuple({"value": r.value, "source": r.source,
                                         "exact": r.exact} for r in found[1:])}

    return lookup


# The OTFusion paper's numbers are its v1 text's (arXiv 2506.13723); its authors' released code
# is the CVPR 2026 revision, for which we hold no table.
OFFICIAL_NOTE = "official recipe: the authors' CVPR 2026 code"
OFFICIAL_COMPARED = ", compared with the v1 paper's table (the only published numbers we hold)"


@dataclass(frozen=True)
class _Run:
    """One row to compute: a method under one settings, on the test split by ``run_method``, or
    by ``predict(settings)`` -> ``(pred (n,), Procrustes-only pred or None, sources)``."""

    method: str
    title: str
    protocol: str
    settings: MethodSettings
    predict: Callable | None = None
    skipped: str = ""  # why it cannot run (a "skipped" row with this note)


# (shots per class, 0: all; extraction settings, report key, progress label) -> pool features
_Pool = Callable[[int, object, str, str], FeatureSet]


def _otfusion_runs(config: EvalConfig, solver: MethodSettings, test: FeatureSet, pool: _Pool,
                   has_train: bool, base, key: str, notes: list[str]) -> list[_Run]:
    """One run per recipe (``with_recipe``), transductive on the test split or, with
    ``otfusion_shots``, inductive from a pool of the train split."""
    shots, fitted = config.otfusion_shots, None
    if shots and has_train:
        fitted = pool(shots, base, "otfusion pool", f"{key} train ({shots}-shot)")
        notes.append(f"OTFusion inductive: fitted on {fitted.n_images:,} unlabeled train images "
                     f"({shots} per class, seed {config.seed}; the labels only pick the pool), "
                     "predicting the test split without OT (the official code's mode).")
    elif shots:
        notes.append("OTFusion: no train split to fit the inductive mode on; it ran "
                     "transductively on the test split.")
    runs = []
    for name in config.otfusion_recipes:
        s = solver.replace(otfusion=with_recipe(solver.otfusion, name))
        if fitted is not None:
            runs.append(_Run("otfusion", f"OTFusion inductive ({shots}-shot)", "inductive", s,
                             lambda s: _fit_otfusion(fitted, test, s)))
        else:
            protocol = otfusion_protocol(s.otfusion.setting, s.otfusion.variant,
                                         has_vfm=config.vfm is not None)
            runs.append(_Run("otfusion", METHOD_TITLES["otfusion"], protocol, s))
    return runs


def _gpua_run(config: EvalConfig, solver: MethodSettings, test: FeatureSet, pool: _Pool,
              has_train: bool, base, key: str, notes: list[str]) -> tuple[_Run, int]:
    """GPUA fitted on the train split (all of it, or ``gpua_shots`` per class: GPUA*), else on
    the test images; returns the run and the pool size (0 without a pool)."""
    title, protocol = METHOD_TITLES["gpua"], "transductive"
    if not (config.gpua_fit == "train" and has_train):
        notes.append(f"GPUA fitted on the {test.n_images:,} unlabeled test images "
                     "(transductive; the papers fit on the train split).")
        return _Run("gpua", title, protocol, solver), 0
    # GPUA uses the first VLM and VFM only: the pool skips the other models' features
    fitted = pool(config.gpua_shots, replace(base, extra_vlms=(), extra_vfms=()), "train",
                  f"{key} train")
    if config.gpua_shots > 0:
        title, protocol = f"GPUA* ({config.gpua_shots}-shot)", f"{config.gpua_shots}-shot"
        pool_note = (f"{config.gpua_shots} per class, seed {config.seed}; the labels only pick "
                     "this balanced pool, as GPUA* does")
    else:
        protocol, pool_note = "full", "the whole train split"
    protocol += gpua_ablation(solver.gpua, has_vfm=config.vfm is not None)
    notes.append(f"GPUA fitted on {fitted.n_images:,} unlabeled train images ({pool_note}); "
                 "evaluated on the test split.")
    return _Run("gpua", title, protocol, solver,
                lambda s: _fit_gpua(fitted, test, s)), fitted.n_images


def _solve(run: _Run, test: FeatureSet, paper: Callable, notes: list[str]) -> MethodRow:
    """The row of one run: accuracy, sources, the paper number (``paper(method, protocol)``)."""
    from core.methods.run import labelled_accuracy, run_method

    recipe = getattr(getattr(run.settings, run.method), "recipe", "")
    common = dict(method=run.method, title=run.title, protocol=run.protocol,
                  n_images=test.n_images, recipe=recipe)
    if run.skipped:
        return MethodRow(status="skipped", note=run.skipped, **common)
    start = time.perf_counter()
    try:
        if run.predict is not None:
            pred, before_ths, sources = run.predict(run.settings)
        else:
            res = run_method(run.method, test, run.settings)
            pred, before_ths, sources = (res.pred, res.diagnostics.get("procrustes_pred"),
                                         res.sources)
    except (ValueError, RuntimeError) as exc:
        return MethodRow(status="failed", note=str(exc), **common)
    acc = labelled_accuracy(pred, test.labels)
    w0_acc = None if before_ths is None else labelled_accuracy(before_ths, test.labels)
    if w0_acc is not None:  # no paper number for it: a note, not a row
        notes.append(f"{run.title} with the Procrustes map W0 alone (no THS): {100 * w0_acc:.2f}%"
                     f"; THS changed {int((before_ths != pred).sum()):,} test predictions.")
    seconds, found = time.perf_counter() - start, paper(run.method, run.protocol)
    note = ""
    if run.method == "otfusion" and recipe == "official":
        note = OFFICIAL_NOTE + (OFFICIAL_COMPARED if found else "")
    return MethodRow(status="ok", accuracy=None if acc is None else 100 * acc, seconds=seconds,
                     sources=tuple(sources), note=note, **found, **common)


def evaluate_dataset(dataset: str | BenchmarkData, root=None, config: EvalConfig | None = None,
                     *, cache=None, progress: Progress | None = None,
                     split_file=None, layout: str = "auto", prefetch=None) -> DatasetReport:
    """Run every method of ``config`` on one dataset (the Python API of ``python -m core eval``).

    ``prefetch``: see ``core.eval.splits.extract_split`` (``eval --engine ray``).
    """
    from core.methods.run import sensitivity_sweep
    from core.pipeline.extraction import ExtractSettings

    config = config or EvalConfig()
    data = (dataset if isinstance(dataset, BenchmarkData)
            else open_benchmark(dataset, root, split_file=split_file, layout=layout))
    notes = list(data.notes)
    solver = config.solver.replace(gpua={"seed": config.seed})
    template = config.template or data.template
    # a dataset's own prompt ensemble (the domain datasets) unless --template overrides it
    templates = (template,) if config.template or not data.templates else data.templates
    if config.template and data.is_preset:
        notes.append(f"prompt overridden with {config.template!r}: not the paper protocol.")

    attrs, lazsl_title = None, METHOD_TITLES["lazsl"]
    run_lazsl = "lazsl" in config.methods
    if run_lazsl:
        attrs = _attributes(data, config, notes)
        if attrs is None and config.lazsl_class_names:
            lazsl_title = "LaZSL (class names)"
        run_lazsl = attrs is not None or config.lazsl_class_names
        if run_lazsl and config.n_crops != LAZSL_CROPS_PAPER:
            notes.append(f"LaZSL with {config.n_crops} crops per image (paper: "
                         f"{LAZSL_CROPS_PAPER}; --n-crops).")
    base = ExtractSettings(vlm=config.vlm, vfm=config.vfm, extra_vlms=config.extra_vlms,
                           extra_vfms=config.extra_vfms, templates=templates,
                           batch_size=config.batch_size, device=config.device,
                           precision=config.precision, lazsl_recipe=solver.lazsl.recipe)
    test_entries = data.splits["test"]
    if config.max_images:
        test_entries = balanced_subset(test_entries, config.max_images, seed=config.seed)
        notes.append(f"quick run on a class-balanced subset (--max-images {config.max_images}): "
                     "not comparable with the papers' numbers.")
    split = extract_split(
        test_entries, data.class_names,
        replace(base, n_crops=config.n_crops if run_lazsl else 0, attributes=attrs),
        cache=cache, chunk_size=config.chunk_size, progress=progress, desc=f"{data.key} test",
        prefetch=prefetch)
    test, skipped = split.features, list(split.skipped)
    extraction, seconds = {"test": split.describe()}, {"test": round(split.seconds, 3)}

    def pool(shots: int, settings, name: str, desc: str) -> FeatureSet:
        part = train_pool(data, settings, shots, seed=config.seed, max_images=config.max_images,
                          chunk_size=config.chunk_size, cache=cache, progress=progress, desc=desc,
                          prefetch=prefetch)
        skipped.extend(part.skipped)
        extraction[name], seconds[name] = part.describe(), round(part.seconds, 3)
        return part.features

    has_train, n_pool, runs = bool(data.splits.get("train")), 0, []
    context = (config, solver, test, pool, has_train, base, data.key, notes)
    for method in ["clip"] + [m for m in config.methods if m != "clip"]:
        if method == "otfusion":
            runs += _otfusion_runs(*context)
        elif method == "gpua":
            gpua, n_pool = _gpua_run(*context)
            runs.append(gpua)
        elif method == "lazsl":
            where = f" in {config.attributes_dir}" if config.attributes_dir else ""
            runs.append(_Run("lazsl", lazsl_title, "descriptors" if attrs is not None else
                             "class-names", solver, skipped="" if run_lazsl else (
                                 f"no descriptors{where}: put {data.key}.json (DCLIP format) in "
                                 "--attributes-dir, or pass --lazsl-class-names (class names "
                                 "only; not the paper protocol)")))
        else:
            runs.append(_Run("clip", METHOD_TITLES["clip"], "zero-shot", solver))
    paper = _paper_lookup(data, config)
    rows = [_solve(run, test, paper, notes) for run in runs]

    sweep = ()
    if config.sweep:
        sweep = tuple(sensitivity_sweep(test, lams=config.sweep_lams, epss=config.sweep_epss,
                                        settings=solver))
    settings = {
        "vlm": config.vlm, "vfm": config.vfm, "vlms": list(base.vlms), "vfms": list(base.vfms),
        "template": template, "templates": list(templates), "methods": list(config.methods),
        "otfusion_recipes": list(config.otfusion_recipes),
        "otfusion_shots": config.otfusion_shots, "gpua_shots": config.gpua_shots,
        "gpua_fit": config.gpua_fit, "seed": config.seed, "max_images": config.max_images,
        "n_crops": config.n_crops if run_lazsl else 0, "solver": solver.as_dict(),
        "extraction": extraction,
    }
    return DatasetReport(
        dataset=data.key, display_name=data.display_name, n_classes=len(data.class_names),
        n_test=test.n_images, n_gpua_pool=n_pool, template=template, rows=tuple(rows),
        extract_seconds=seconds, settings=settings, notes=tuple(notes), skipped=tuple(skipped),
        sweep=sweep)
