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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from core.config import (
    BATCH_SIZE,
    DEFAULT_VFM,
    DEFAULT_VLM,
    EVAL_CHUNK_SIZE,
    LAZSL_CROPS,
    LAZSL_CROPS_PAPER,
    SEED,
    SWEEP_EPSS,
    SWEEP_LAMS,
    MethodSettings,
)
from core.data import ImageSet, SkippedFile, load_attributes
from core.data.benchmarks import (
    BenchmarkData,
    DatasetError,
    SplitEntry,
    balanced_subset,
    iter_chunks,
    open_benchmark,
)
from core.eval.paper_numbers import reported, reported_all
from core.methods.run import METHOD_TITLES, METHODS, FeatureSet, fit_gpua_with, gpua_inputs

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EvalConfig:
    """Everything a run depends on besides the data (defaults from ``core.config``: the papers'
    solver settings; LaZSL with ``LAZSL_CROPS`` crops, noted in the report as not the paper's)."""

    methods: tuple[str, ...] = METHODS
    vlm: str = DEFAULT_VLM
    vfm: str | None = DEFAULT_VFM
    solver: MethodSettings = field(default_factory=MethodSettings)
    gpua_shots: int = 0  # 0: the whole train split (GPUA); 16: GPUA*
    gpua_fit: str = "train"  # or "test" (transductive)
    seed: int = SEED  # GPUA* pool, max_images subsets and GPUA's THS (overrides solver's)
    max_images: int | None = None  # class-balanced subset of each split, for quick runs
    template: str | None = None  # overrides the preset's prompt (not the paper protocol)
    n_crops: int = LAZSL_CROPS
    attributes_file: str | None = None
    attributes_dir: str | None = None
    lazsl_class_names: bool = False
    batch_size: int = BATCH_SIZE
    device: str | None = None
    chunk_size: int = EVAL_CHUNK_SIZE
    sweep: bool = False
    sweep_lams: tuple[float, ...] = SWEEP_LAMS
    sweep_epss: tuple[float, ...] = SWEEP_EPSS


@dataclass(frozen=True)
class MethodRow:
    """One method on one dataset. accuracy and paper are percentages; status ok/skipped/failed."""

    method: str
    title: str
    protocol: str
    status: str
    accuracy: float | None = None
    n_images: int = 0
    seconds: float = 0.0
    paper: float | None = None
    paper_source: str = ""
    paper_exact: bool = True
    other_reported: tuple[dict, ...] = ()
    note: str = ""

    @property
    def diff(self) -> float | None:
        if self.accuracy is None or self.paper is None:
            return None
        return self.accuracy - self.paper


@dataclass(frozen=True)
class DatasetReport:
    """A dataset's results, timings and the settings that produced them."""

    dataset: str
    display_name: str
    n_classes: int
    n_test: int
    n_gpua_pool: int
    template: str
    rows: tuple[MethodRow, ...]
    extract_seconds: dict
    settings: dict
    notes: tuple[str, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    sweep: tuple[dict, ...] = ()

    def row(self, method: str) -> MethodRow | None:
        return next((r for r in self.rows if r.method == method), None)


@dataclass(frozen=True)
class SplitFeatures:
    """Features of one split. ``features.labels`` come from the split's entries (-1 never)."""

    features: FeatureSet
    skipped: tuple[SkippedFile, ...]
    seconds: float
    cache_hits: int
    encoded: int

    def describe(self) -> str:
        return f"{self.seconds:.1f} s ({self.cache_hits:,} cached, {self.encoded:,} encoded)"


def extract_split(entries: Sequence[SplitEntry], class_names, settings, *, cache=None,
                  chunk_size: int = EVAL_CHUNK_SIZE, progress: Progress | None = None,
                  desc: str = "images") -> SplitFeatures:
    """Features of a split, ``chunk_size`` files at a time (see the module note on memory)."""
    from core.pipeline.extraction import extract

    start, parts, skipped = time.perf_counter(), [], []
    label_of = {e.name: e.label for e in entries}
    done = hits = encoded = 0
    for items, bad in iter_chunks(entries, chunk_size):
        skipped += bad
        done += len(items) + len(bad)
        if items:
            try:
                ex = extract(ImageSet(tuple(items)), class_names, settings, cache=cache)
            except ValueError as exc:  # every image of the chunk failed to decode
                if "could be decoded" not in str(exc):
                    raise
                skipped += [SkippedFile(it.name, "cannot decode") for it in items]
            else:
                skipped += list(ex.skipped)
                hits += ex.stats.get("cache_hits", 0)
                encoded += ex.stats.get("encoded", 0)
                parts.append((ex.features, [label_of[it.name] for it in ex.items]))
        if progress:
            progress(done, len(entries), desc)
    if not parts:
        raise DatasetError(f"{desc}: none of the {len(entries)} images could be read or decoded "
                           f"(e.g. {skipped[0].name}: {skipped[0].reason})." if skipped else
                           f"{desc}: no images.")

    def cat(name):
        tensors = [getattr(f, name) for f, _ in parts]
        return None if tensors[0] is None else torch.cat(tensors)

    features = replace(parts[0][0], vlm_image=cat("vlm_image"), vfm_image=cat("vfm_image"),
                       crops=cat("crops"),
                       labels=torch.tensor([lab for _, labs in parts for lab in labs]))
    return SplitFeatures(features, tuple(skipped), time.perf_counter() - start, hits, encoded)


def _attributes(data: BenchmarkData, config: EvalConfig, notes: list[str]):
    """LaZSL descriptors ``{class: [descriptor, ...]}`` for this dataset, or None (none given)."""
    path = None
    if config.attributes_file:
        path = Path(config.attributes_file)
    elif config.attributes_dir:
        for name in (f"{data.key}.json", f"descriptors_{data.key}.json"):
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
    return probs.argmax(dim=-1), before


def _paper(method, dataset, protocol, vlm_spec, vfm_spec, is_preset) -> dict:
    if not is_preset:
        return {}
    found = reported_all(method, dataset, protocol, vlm_spec=vlm_spec, vfm_spec=vfm_spec)
    best = reported(method, dataset, protocol, vlm_spec=vlm_spec, vfm_spec=vfm_spec)
    if best is None:
        return {}
    return {"paper": best.value, "paper_source": best.source, "paper_exact": best.exact,
            "other_reported": tuple({"value": r.value, "source": r.source, "exact": r.exact}
                                    for r in found[1:])}


def evaluate_dataset(dataset: str | BenchmarkData, root=None, config: EvalConfig | None = None,
                     *, cache=None, progress: Progress | None = None,
                     split_file=None, layout: str = "auto") -> DatasetReport:
    """Run every method of ``config`` on one dataset (the Python API of ``python -m core eval``)."""
    from core.methods.run import labelled_accuracy, run_method, sensitivity_sweep
    from core.models import get_spec
    from core.pipeline.extraction import ExtractSettings

    config = config or EvalConfig()
    data = (dataset if isinstance(dataset, BenchmarkData)
            else open_benchmark(dataset, root, split_file=split_file, layout=layout))
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}.")
    if config.gpua_fit not in ("train", "test"):
        raise ValueError(f"gpua_fit: expected 'train' or 'test', got {config.gpua_fit!r}.")
    notes = list(data.notes)
    solver = config.solver.replace(gpua={"seed": config.seed})
    template = config.template or data.template
    if config.template and data.is_preset:
        notes.append(f"prompt overridden with {config.template!r}: not the paper protocol.")
    vlm_spec = get_spec(config.vlm)
    vfm_spec = get_spec(config.vfm) if config.vfm else None

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
    base = ExtractSettings(vlm=config.vlm, vfm=config.vfm, templates=(template,),
                           batch_size=config.batch_size, device=config.device)
    test_entries = data.splits["test"]
    if config.max_images:
        test_entries = balanced_subset(test_entries, config.max_images, seed=config.seed)
    if config.max_images:
        notes.append(f"quick run on a class-balanced subset (--max-images {config.max_images}): "
                     "not comparable with the papers' numbers.")
    split = extract_split(
        test_entries, data.class_names,
        replace(base, n_crops=config.n_crops if run_lazsl else 0, attributes=attrs),
        cache=cache, chunk_size=config.chunk_size, progress=progress, desc=f"{data.key} test")
    test, skipped = split.features, list(split.skipped)
    extraction = {"test": split.describe()}
    seconds = {"test": round(split.seconds, 3)}

    pool, pool_note, gpua_protocol = None, "", "transductive"
    if "gpua" in config.methods:
        train: tuple[SplitEntry, ...] = data.splits.get("train", ())
        if config.gpua_fit == "train" and train:
            if config.gpua_shots > 0:
                train = balanced_subset(train, per_class=config.gpua_shots, seed=config.seed)
                gpua_protocol = f"{config.gpua_shots}-shot"
                pool_note = (f"{config.gpua_shots} per class, seed {config.seed}; the labels only "
                             "pick this balanced pool, as GPUA* does")
            else:
                gpua_protocol, pool_note = "full", "the whole train split"
            if config.max_images:
                train = balanced_subset(train, config.max_images, seed=config.seed)
            split = extract_split(
                train, data.class_names, base, cache=cache, chunk_size=config.chunk_size,
                progress=progress, desc=f"{data.key} train")
            pool = split.features
            skipped += split.skipped
            extraction["train"] = split.describe()
            seconds["train"] = round(split.seconds, 3)
            if not solver.gpua.concat_vlm:
                gpua_protocol += "-vfm-only"
            notes.append(f"GPUA fitted on {pool.n_images:,} unlabeled train images ({pool_note})"
                         "; evaluated on the test split.")
        else:
            notes.append(f"GPUA fitted on the {test.n_images:,} unlabeled test images "
                         "(transductive; the papers fit on the train split).")

    rows = []
    for method in ["clip"] + [m for m in config.methods if m != "clip"]:
        title, protocol = METHOD_TITLES[method], "zero-shot"
        if method == "otfusion":
            protocol = "clip_only" if config.vfm is None else solver.otfusion.variant
        elif method == "gpua":
            if config.gpua_shots and pool is not None:
                title = f"GPUA* ({config.gpua_shots}-shot)"
            protocol = gpua_protocol
        elif method == "lazsl":
            title, protocol = lazsl_title, "descriptors" if attrs is not None else "class-names"
        common = dict(method=method, title=title, protocol=protocol, n_images=test.n_images)
        if method == "lazsl" and not run_lazsl:
            where = f" in {config.attributes_dir}" if config.attributes_dir else ""
            rows.append(MethodRow(status="skipped", note=(
                f"no descriptors{where}: put {data.key}.json (DCLIP format) in --attributes-dir, "
                "or pass --lazsl-class-names (class names only; not the paper protocol)"),
                **common))
            continue
        start = time.perf_counter()
        try:
            if method == "gpua" and pool is not None:
                pred, before_ths = _fit_gpua(pool, test, solver)
            else:
                res = run_method(method, test, solver)
                pred, before_ths = res.pred, res.diagnostics.get("procrustes_pred")
        except (ValueError, RuntimeError) as exc:
            rows.append(MethodRow(status="failed", note=str(exc), **common))
            continue
        acc = labelled_accuracy(pred, test.labels)
        w0_acc = None if before_ths is None else labelled_accuracy(before_ths, test.labels)
        if w0_acc is not None:  # no paper number for it: a note, not a row
            notes.append(f"{title} with the Procrustes map W0 alone (no THS): {100 * w0_acc:.2f}%"
                         f"; THS changed {int((before_ths != pred).sum()):,} test predictions.")
        paper = _paper(method, data.key, protocol, vlm_spec, vfm_spec, data.is_preset)
        rows.append(MethodRow(status="ok", accuracy=None if acc is None else 100 * acc,
                              seconds=time.perf_counter() - start, **paper, **common))

    sweep = ()
    if config.sweep:
        sweep = tuple(sensitivity_sweep(test, lams=config.sweep_lams, epss=config.sweep_epss,
                                        settings=solver))
    settings = {
        "vlm": config.vlm, "vfm": config.vfm, "template": template, "methods": list(config.methods),
        "gpua_shots": config.gpua_shots, "gpua_fit": config.gpua_fit, "seed": config.seed,
        "max_images": config.max_images, "n_crops": config.n_crops if run_lazsl else 0,
        "solver": solver.as_dict(), "extraction": extraction,
    }
    return DatasetReport(
        dataset=data.key, display_name=data.display_name, n_classes=len(data.class_names),
        n_test=test.n_images, n_gpua_pool=pool.n_images if pool is not None else 0,
        template=template, rows=tuple(rows), extract_seconds=seconds, settings=settings,
        notes=tuple(notes), skipped=tuple(skipped), sweep=sweep)
