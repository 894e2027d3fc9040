"""Evaluation harness: reproduce the papers' tables on the 11 benchmarks or any labelled folder.

    python -m core eval --dataset oxford_pets --root DATA --vlm clip-vit-b16 --vfm dinov2-large \
        --methods clip,otfusion,gpua,lazsl --attributes-dir descriptors/ --out results/
    python -m core eval --all --root DATA --gpua-shots 16 --sweep

Protocol (OTFusion / GPUA papers): the dataset's single CoOp prompt (``DatasetPreset.template``),
one center crop of 224 per image in each encoder's own preprocessing (CLIP: short side 224;
DINOv2 / DINOv3: their eval transform, short side 256; SigLIP alone is squashed to 224 x 224, as
its processor does), and

- CLIP zero-shot and OTFusion (transductive) on the test split;
- GPUA fitted on the *unlabeled* train split (all of it, or ``--gpua-shots 16`` images per class
  with ``--seed``: GPUA*; the labels only pick a class-balanced pool, as GPUA* does, the fit never
  sees them) and applied to the test split. ``--gpua-fit test`` fits on the test images instead
  (transductive; no paper number). A dataset without a train split falls back to that, with a note;
- LaZSL with the DCLIP-format descriptors the user supplies (``--attributes FILE`` or
  ``--attributes-dir DIR`` holding ``<dataset>.json`` / ``descriptors_<dataset>.json``). Without
  them LaZSL is skipped with a note; ``--lazsl-class-names`` runs it with the class name as the only
  descriptor, labelled "LaZSL (class names)": not the paper's protocol.

Outputs in ``--out``: ``<dataset>_<vlm>_<vfm>.md/.csv/.json`` (accuracy per method, the papers'
number beside it and the difference, n images, settings, extraction vs solve seconds),
``sweep_*.md/.csv`` with ``--sweep`` (OTFusion lam x eps, Fig. 2), ``summary_*`` with ``--all``.

Memory: images are read ``--chunk-size`` files at a time; a split's features stay in memory
(ImageNet val with ViT-B/16 + DINOv2-L: 0.3 GB; + 3.2 GB for 30 LaZSL crops); use
``--gpua-shots 16`` on ImageNet (its full train split needs ~16 GB). Details: ``core.harness``.
Features are cached per image content, so reruns with other solver settings only re-solve.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.benchmarks_data import DatasetError, find_benchmarks
from core.harness import (  # noqa: F401  (re-exported: the Python API of the harness)
    SWEEP_EPSS,
    SWEEP_LAMS,
    DatasetReport,
    EvalConfig,
    MethodRow,
    evaluate_dataset,
    extract_split,
)
from core.methods import METHODS


def _stderr_progress(done: int, total: int, desc: str) -> None:
    print(f"\r{desc}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr,
          flush=True)


# ----------------------------------------------------------------------------- CLI


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}.") from None
    if not values:
        raise ValueError(f"{what}: expected at least one number.")
    return values


def add_arguments(parser) -> None:
    """The eval subcommand's own options (models, cache and solver options come from the CLI)."""
    g = parser.add_argument_group("evaluation")
    g.add_argument("--dataset", help="benchmark key (imagenet, sun397, fgvc_aircraft, eurosat, "
                   "stanford_cars, food101, oxford_pets, flowers102, caltech101, dtd, ucf101), a "
                   "folder under --root, or a folder-per-class dataset path")
    g.add_argument("--all", action="store_true", help="every dataset found under --root")
    g.add_argument("--root", help="folder holding the datasets (CoOp layout: DATASETS.md)")
    g.add_argument("--methods", default=",".join(METHODS),
                   help="comma list of " + ",".join(METHODS))
    g.add_argument("--layout", default="auto", choices=["auto", "coop", "folder"],
                   help="read a benchmark's folder as CoOp (split file) or folder-per-class")
    g.add_argument("--split-file", help="another CoOp-format split JSON (one dataset only)")
    g.add_argument("--gpua-shots", type=int, default=0,
                   help="0: fit GPUA on the whole unlabeled train split; 16: GPUA*")
    g.add_argument("--gpua-fit", default="train", choices=["train", "test"],
                   help="fit GPUA on the train split (paper) or the test images (transductive)")
    g.add_argument("--seed", type=int, default=0, help="GPUA* pool, --max-images subset, THS")
    g.add_argument("--sweep", action="store_true", help="also write the lam x eps table (Fig. 2)")
    g.add_argument("--sweep-lams", default=",".join(map(str, SWEEP_LAMS)))
    g.add_argument("--sweep-epss", default=",".join(map(str, SWEEP_EPSS)))
    g.add_argument("--attributes-dir", help="LaZSL descriptors: <dataset>.json (DCLIP format)")
    g.add_argument("--lazsl-class-names", action="store_true",
                   help="run LaZSL without descriptors (class names only; not the paper protocol)")
    g.add_argument("--max-images", type=int, default=None,
                   help="class-balanced subset of each split, for quick runs")
    g.add_argument("--template", default=None, help="prompt with {} (default: the preset's)")
    g.add_argument("--chunk-size", type=int, default=2048, help="images read and encoded at once")
    g.add_argument("--out", default="fusionlab-eval", help="folder for the tables")


def config_from_args(args) -> EvalConfig:
    from core.__main__ import _solver_settings

    methods = tuple(m.strip().lower() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}.")
    for name in ("gpua_shots", "chunk_size", "max_images", "n_crops", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name in ("gpua_shots", "n_crops") else 1):
            raise ValueError(f"--{name.replace('_', '-')}: got {value}; use a positive number.")
    vfm = None if str(args.vfm).lower() == "none" else args.vfm
    return EvalConfig(
        methods=methods, vlm=args.vlm, vfm=vfm, solver=_solver_settings(args),
        gpua_shots=args.gpua_shots, gpua_fit=args.gpua_fit, seed=args.seed,
        max_images=args.max_images, template=args.template, n_crops=args.n_crops,
        attributes_file=args.attributes, attributes_dir=args.attributes_dir,
        lazsl_class_names=args.lazsl_class_names, batch_size=args.batch_size, device=args.device,
        chunk_size=args.chunk_size, sweep=args.sweep,
        sweep_lams=_floats(args.sweep_lams, "--sweep-lams"),
        sweep_epss=_floats(args.sweep_epss, "--sweep-epss"))


def main(args) -> int:
    """``python -m core eval``: one dataset (``--dataset``) or all under ``--root`` (``--all``)."""
    from core.cache import FeatureCache
    from core.eval_report import markdown_report, summary_markdown, write_report, write_summary

    if bool(args.dataset) == bool(args.all):
        raise ValueError("eval: give --dataset NAME or --all (with --root DATA), not both.")
    if args.all and (args.attributes or args.split_file):
        raise ValueError("eval --all: --attributes and --split-file are per dataset; use "
                         "--attributes-dir DIR (with <dataset>.json files) instead.")
    config = config_from_args(args)
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    out = Path(args.out)
    names = find_benchmarks(args.root) if args.all else [args.dataset]
    if not names:
        from core.benchmarks_data import LAYOUTS

        raise DatasetError(f"--all: no dataset under {args.root}; expected any of the folders "
                           f"{', '.join(lay.folder for lay in LAYOUTS.values())} (CoOp layout), "
                           "or <name>/train/<class>/ + <name>/test/<class>/ folders.")
    reports, failures = [], {}
    for name in names:
        try:
            report = evaluate_dataset(name, args.root, config, cache=cache,
                                      progress=_stderr_progress, split_file=args.split_file,
                                      layout=args.layout)
        except DatasetError as exc:
            if not args.all:
                raise
            failures[name] = str(exc)
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        reports.append(report)
        print(markdown_report(report))
        for path in write_report(report, out):
            print(f"wrote {path}")
    if args.all:
        if not reports:
            listing = "\n".join(f"- {n}: {why}" for n, why in failures.items())
            raise DatasetError(f"--all: no dataset under {args.root} could be evaluated:\n"
                               + listing)
        print(summary_markdown(reports, failures))
        for path in write_summary(reports, failures, out, vlm=config.vlm, vfm=config.vfm):
            print(f"wrote {path}")
    return 0 if reports else 2
