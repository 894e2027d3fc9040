"""Command line: ``python -m core run | eval | repro | seg-eval | extract | download | models``.

python -m core run --images photos.zip --classes "cat, dog, bird" --methods clip,otfusion
python -m core download clip-vit-b16 dinov2-large
python -m core models

Exit codes: ``EXIT_CODES`` (also in ``--help``). A user error never prints a traceback; set
FUSIONLAB_DEBUG=1 to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from core import config
from core.methods.otfusion import VARIANTS, WEIGHTS
from core.pipeline.progress import LineProgress

METHOD_LIST = "clip,otfusion,gpua,lazsl"
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_WEIGHTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = """exit codes:
  0    success
  1    internal error (a bug: please report it; FUSIONLAB_DEBUG=1 shows the traceback)
  2    user error: an option, a file or an input that cannot be used (the message says which)
  3    model weights not available on this machine (see `python -m core download`)
  130  interrupted (Ctrl-C)"""
_PROGRESS = LineProgress()  # on stderr; an error after an open line starts a new one


def _add_shared_args(p: argparse.ArgumentParser) -> None:
    """Models, device, cache (then the solver options) of ``run`` and ``eval``."""
    p.add_argument("--vlm", default=config.DEFAULT_VLM,
                   help="vision-language model key(s), a comma list (see `models`): the first is "
                   "the baseline's, GPUA's and LaZSL's; OTFusion fuses them all")
    p.add_argument("--vfm", default=config.DEFAULT_VFM,
                   help="vision-only model key(s), a comma list (a VLM key: its image tower), or "
                   "'none' (VLM features only): GPUA uses the first; OTFusion fuses them all")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--precision", default=config.PRECISION, choices=config.PRECISIONS,
                   help="fp32 (exact, default); auto (CPU: per model the fastest path whose "
                   "measured features keep a cosine >= 0.999 to fp32: bf16 on CPUs with AMX or "
                   "AVX-512 BF16, else onnx-int8 with onnxruntime installed, else int8, fp32 for "
                   "unmeasured models); int8 (CPU, every model, 1.4-2x faster); onnx-int8 (CPU, "
                   "ONNX Runtime, one-time export); bf16 (CUDA, and CPUs with AMX or AVX-512 "
                   "BF16, several times faster at cosine >= 0.9999 to fp32; slow on other CPUs); "
                   "fp16 (CUDA)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $FUSIONLAB_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    _add_solver_args(p)


def model_keys(args) -> dict:
    """``--vlm`` / ``--vfm`` as the fields of ``ExtractSettings`` and ``EvalConfig``: ``vlm``,
    ``extra_vlms``, ``vfm`` (None for 'none') and ``extra_vfms``."""
    vlms = _split(args.vlm, "--vlm")
    vfms = () if str(args.vfm).strip().lower() == "none" else _split(args.vfm, "--vfm")
    return {"vlm": vlms[0], "extra_vlms": vlms[1:], "vfm": vfms[0] if vfms else None,
            "extra_vfms": vfms[1:]}


def _split(text: str, flag: str, *, choices=None, cast=str) -> tuple:
    """A comma-list option as a tuple; the error names the option and what it takes."""
    try:
        values = tuple(cast(x.strip()) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}.") from None
    unknown = [v for v in values if choices is not None and v not in choices]
    if unknown or not values:
        wanted = f"choose from {', '.join(choices)}" if choices else "give at least one value"
        raise ValueError(f"{flag}: " + (f"unknown {unknown}" if unknown else f"got {text!r}")
                         + f"; {wanted}.")
    return values


# Solver options: flag -> (method, field of its settings dataclass in core.config, help). They
# default to None, "not given": method_settings() starts from each method's recipe
# (RECIPE_FLAGS, core.config's recipe tables) and sets only the flags given.
SOLVER_FLAGS = {
    "--lam": ("otfusion", "lam", "OTFusion lambda, weight of each VLM's probabilities; "
              "official recipe: 1/J each"),
    "--eps": ("otfusion", "eps", "OTFusion entropic regularisation"),
    "--n-iter": ("otfusion", "n_iter", "OTFusion outer iterations"),
    "--variant": ("otfusion", "variant", "OTFusion variant (Table 2 ablations)"),
    "--otfusion-setting": ("otfusion", "setting", "OTFusion visual sources: main (every VLM's "
                           "image features + every VFM, Table 1), vfm_only, vlm_only (Table 2)"),
    "--otfusion-weights": ("otfusion", "weights", "OTFusion source weights; paper recipe: "
                           "fixed"),
    "--gpua-lam": ("gpua", "lam", "GPUA lambda (weight of CLIP in UCM)"),
    "--gpua-eps": ("gpua", "eps", "GPUA UCM entropic regularisation"),
    "--gpua-targets": ("gpua", "targets", "GPUA Procrustes targets"),
    "--gpua-ucm-iter": ("gpua", "n_ucm_iter", "GPUA UCM rounds"),
    "--ths-steps": ("gpua", "ths_steps", "GPUA THS refinement steps (0: Procrustes only)"),
    "--gpua-loss": ("gpua", "loss", "GPUA refinement loss (Tables 4 and 6 ablations)"),
    "--gpua-mining": ("gpua", "mining", "GPUA correspondences: joint, or semantic (Table 3's "
                      "Only-S)"),
    "--theta": ("lazsl", "theta", "LaZSL crop/global mix"),
}
FLAG_CHOICES = {"--variant": VARIANTS, "--otfusion-setting": config.OTFUSION_SETTINGS,
                "--otfusion-weights": WEIGHTS, "--gpua-targets": config.GPUA_TARGETS,
                "--gpua-loss": config.GPUA_LOSSES, "--gpua-mining": config.GPUA_MININGS}
FLAG_ALIASES = {"--lam": ("--otfusion-lam",), "--eps": ("--otfusion-eps",),
                "--n-iter": ("--otfusion-n-iter",), "--variant": ("--otfusion-variant",)}
# --<method>-recipe -> method: the base of its settings (core.config's *_RECIPES tables).
RECIPE_FLAGS = {"--otfusion-recipe": "otfusion", "--gpua-recipe": "gpua",
                "--lazsl-recipe": "lazsl"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _recipe_values(method: str, name: str) -> str:
    """" (default X)" or " (paper recipe X, official Y)" from core.config, for a flag's help."""
    values = {r: getattr(config.recipe(method, r), name) for r in config.RECIPE_NAMES}
    if len(set(values.values())) == 1:
        return f" (default {values[config.RECIPE_NAMES[0]]})"
    return " (" + ", ".join(f"{r} recipe {v}" for r, v in values.items() if v is not None) + ")"


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("solvers (defaults: each method's recipe, from core.config)")
    for flag, method in RECIPE_FLAGS.items():
        g.add_argument(flag, default=getattr(config.MethodSettings(), method).recipe,
                       choices=config.RECIPE_NAMES, help=f"{method} recipe: paper (our reading) "
                       "or official (the authors' code); the flags below override it")
    for flag, (method, name, text) in SOLVER_FLAGS.items():
        kind = str if flag in FLAG_CHOICES else type(getattr(config.recipe(method), name))
        g.add_argument(flag, *FLAG_ALIASES.get(flag, ()), dest=_dest(flag), type=kind,
                       default=None, choices=FLAG_CHOICES.get(flag),
                       help=text + _recipe_values(method, name))
    g.add_argument("--n-crops", type=int, default=config.LAZSL_CROPS,
                   help=f"LaZSL crops per image (default {config.LAZSL_CROPS}; paper: "
                   f"{config.LAZSL_CROPS_PAPER})")
    g.add_argument("--attributes", default=None, help="LaZSL descriptors, DCLIP JSON file")


def method_settings(args) -> config.MethodSettings:
    """Each method's recipe (``RECIPE_FLAGS``) with the solver flags given (``SOLVER_FLAGS``)."""
    base = config.MethodSettings(**{m: config.recipe(m, getattr(args, _dest(flag)))
                                    for flag, m in RECIPE_FLAGS.items()})
    changes: dict[str, dict] = {}
    for flag, (method, name, _) in SOLVER_FLAGS.items():
        if getattr(args, _dest(flag)) is not None:
            changes.setdefault(method, {})[name] = getattr(args, _dest(flag))
    return base.replace(**changes)


def _cache(args):
    from core.pipeline.cache import FeatureCache

    return None if args.no_cache else FeatureCache(args.cache_dir,
                                                   store=getattr(args, "store", None))


def _methods(text: str) -> tuple[str, ...]:
    from core.methods.run import METHODS

    return _split(text.lower(), "--methods", choices=METHODS)


def _classes(text: str):
    from core.data import get_preset, load_classes_file, parse_classes

    if text.startswith("preset:"):
        preset = get_preset(text.split(":", 1)[1])
        return list(preset.class_names), (preset.template,)
    parsed = load_classes_file(Path(text)) if _is_file(text) else parse_classes(text)
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return list(parsed.names), None


def _is_file(text: str) -> bool:
    """Whether ``text`` names an existing file; False for text no file can have (too long, NUL)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # "File name too long", embedded NUL byte
        return False


def _report_skipped(skipped, already=()) -> None:
    """Every skipped file on stderr with its reason (those in ``already`` were printed)."""
    shown = set(already)
    for skip in skipped:
        if (skip.name, skip.reason) not in shown:
            print(f"skipped {skip.name}: {skip.reason}", file=sys.stderr)


def _no_images(exc, already=()) -> int:
    """Nothing usable: list every skipped file, the error and the count; a user error."""
    _PROGRESS.end_line()
    print(f"error: {exc}", file=sys.stderr)
    _report_skipped(exc.skipped, already)
    print(f"images: 0 used, {len(exc.skipped)} skipped", file=sys.stderr)
    return EXIT_USER


def cmd_run(args) -> int:
    from core.data import NoImagesError, load_attributes, load_image_set
    from core.methods.run import run_method
    from core.pipeline.export import write_predictions
    from core.pipeline.extraction import ExtractSettings
    from core.pipeline.stages import extract_in_stages

    methods = _methods(args.methods)
    solver = method_settings(args)
    image_set = load_image_set(args.images, labels_csv=args.labels)
    _report_skipped(image_set.skipped)
    class_names, preset_templates = _classes(args.classes)
    templates = tuple(args.template) if args.template else (preset_templates or None)
    attributes = load_attributes(args.attributes) if args.attributes else None
    settings = ExtractSettings(
        **model_keys(args), n_crops=args.n_crops if "lazsl" in methods else 0,
        attributes=attributes, batch_size=args.batch_size, device=args.device,
        precision=args.precision,
        lazsl_recipe=solver.lazsl.recipe, **({"templates": templates} if templates else {}))
    loaded = {(s.name, s.reason) for s in image_set.skipped}
    start, results = time.perf_counter(), {}
    wanted = ("clip", *[m for m in methods if m != "clip"])
    try:
        # Each method is printed as soon as its features exist: CLIP zero-shot after the first
        # VLM, OTFusion and GPUA after the other models, LaZSL after its crops.
        for stage in extract_in_stages(image_set, class_names, settings, cache=_cache(args),
                                       progress=_PROGRESS):
            extraction = stage.extraction
            for name in [m for m in wanted if m in stage.methods and m not in results]:
                results[name] = run_method(name, extraction.features, solver)
                _print_result(name, results[name], solver, time.perf_counter() - start)
    except NoImagesError as exc:  # every image failed to decode
        return _no_images(exc, already=loaded)
    _report_skipped(extraction.skipped, already=loaded)
    for warning in extraction.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    results = {m: results[m] for m in wanted}
    paths = write_predictions(Path(args.out), extraction, results, solver)
    print("wrote " + ", ".join(str(p) for p in paths))
    print(f"images: {len(extraction.items)} used, {len(extraction.skipped)} skipped")
    return 0


def _print_result(name: str, res, solver, elapsed: float) -> None:
    """One method's lines: accuracy, solve time, when it was ready, what produced it."""
    from core.pipeline.export import provenance, provenance_text

    acc = "" if res.accuracy is None else f"  accuracy {100 * res.accuracy:.2f}%"
    print(f"{name:10s} {res.seconds * 1000:8.1f} ms{acc}  (ready {elapsed:.1f} s after start)",
          flush=True)
    print(f"{'':10s} {provenance_text(provenance(name, res, solver))}")
    d = res.diagnostics
    if "changed_by_ths" in d:  # GPUA: what THS changed against the Procrustes map alone
        before = d["procrustes_accuracy"]
        before = "" if before is None else f", W0 alone {100 * before:.2f}%"
        print(f"{'':10s} THS changed {d['changed_by_ths']} predictions of W0{before}")


def cmd_download(args) -> int:
    from core.models import download_models, preload_from_hub_lines

    for line in download_models(args.models):
        print(line)
    print("\nFor a Hugging Face Space, add to the README front matter:\npreload_from_hub:")
    for line in preload_from_hub_lines(args.models):
        print(f"  - {line}")
    return 0


def cmd_models(args) -> int:
    from core.models import list_models

    for spec in list_models():
        gated = "  (gated: needs a Hub token)" if spec.gated else ""
        print(f"{spec.kind}  {spec.key:28s} {spec.display_name}{gated}")
    return 0


def _add_eval_args(parser) -> None:
    """The eval subcommand's own options (models, cache and solver options are shared)."""
    from core.data.benchmarks import LAYOUTS
    from core.methods.run import METHODS

    g = parser.add_argument_group("evaluation")
    g.add_argument("--dataset", help=f"benchmark key ({', '.join(LAYOUTS)}), a folder under "
                   "--root, or a folder-per-class dataset path")
    g.add_argument("--all", action="store_true", help="every dataset found under --root")
    g.add_argument("--root", help="folder holding the datasets (CoOp layout: DATASETS.md)")
    g.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHOD_LIST}")
    g.add_argument("--layout", default="auto", choices=["auto", "coop", "folder"],
                   help="read a benchmark's folder as CoOp (split file) or folder-per-class")
    g.add_argument("--split-file", help="another CoOp-format split JSON (one dataset only)")
    g.add_argument("--gpua-shots", type=int, default=0,
                   help="0: fit GPUA on the whole unlabeled train split; 16: GPUA*")
    g.add_argument("--gpua-fit", default="train", choices=["train", "test"],
                   help="fit GPUA on the train split (paper) or the test images (transductive)")
    g.add_argument("--otfusion-recipes", default=",".join(config.RECIPE_NAMES),
                   help="run OTFusion once per recipe, on the same features (the knobs given "
                   "apply to each)")
    g.add_argument("--otfusion-shots", type=int, default=0, help="0: OTFusion transductive on "
                   "the test split (paper); N: inductive, fitted on N unlabeled train images "
                   "per class, predicting the test split")
    g.add_argument("--seed", type=int, default=config.SEED,
                   help="GPUA* pool, --max-images subset, THS")
    g.add_argument("--sweep", action="store_true", help="also write the lam x eps table (Fig. 2)")
    g.add_argument("--sweep-lams", default=",".join(map(str, config.SWEEP_LAMS)))
    g.add_argument("--sweep-epss", default=",".join(map(str, config.SWEEP_EPSS)))
    g.add_argument("--attributes-dir", help="LaZSL descriptors: <dataset>.json (DCLIP format)")
    g.add_argument("--lazsl-class-names", action="store_true",
                   help="run LaZSL without descriptors (class names only; not the paper protocol)")
    g.add_argument("--max-images", type=int, default=None,
                   help="class-balanced subset of each split, for quick runs")
    g.add_argument("--template", default=None, help="prompt with {} (default: the preset's)")
    g.add_argument("--chunk-size", type=int, default=config.EVAL_CHUNK_SIZE,
                   help="images read and encoded at once")
    g.add_argument("--out", default="fusionlab-eval", help="folder for the tables")


def eval_config_from_args(args):
    from core.eval.harness import EvalConfig

    return EvalConfig(  # which checks the values (counts, recipes)
        methods=_methods(args.methods), **model_keys(args), solver=method_settings(args),
        otfusion_recipes=_split(args.otfusion_recipes, "--otfusion-recipes",
                                choices=config.RECIPE_NAMES),
        otfusion_shots=args.otfusion_shots, gpua_shots=args.gpua_shots, gpua_fit=args.gpua_fit,
        seed=args.seed, max_images=args.max_images, template=args.template, n_crops=args.n_crops,
        attributes_file=args.attributes, attributes_dir=args.attributes_dir,
        lazsl_class_names=args.lazsl_class_names, batch_size=args.batch_size, device=args.device,
        precision=args.precision,
        chunk_size=args.chunk_size, sweep=args.sweep,
        sweep_lams=_split(args.sweep_lams, "--sweep-lams", cast=float),
        sweep_epss=_split(args.sweep_epss, "--sweep-epss", cast=float))


def cmd_eval(args) -> int:
    """``python -m core eval``: one dataset (``--dataset``) or all under ``--root`` (``--all``)."""
    from core.data.benchmarks import LAYOUTS, DatasetError, find_benchmarks
    from core.eval.harness import evaluate_dataset
    from core.eval.report import markdown_report, summary_markdown, write_report, write_summary

    if bool(args.dataset) == bool(args.all):
        raise ValueError("eval: give --dataset NAME or --all (with --root DATA), not both.")
    if args.all and (args.attributes or args.split_file):
        raise ValueError("eval --all: --attributes and --split-file are per dataset; use "
                         "--attributes-dir DIR (with <dataset>.json files) instead.")
    config = eval_config_from_args(args)
    cache, out = _cache(args), Path(args.out)
    names = find_benchmarks(args.root) if args.all else [args.dataset]
    if not names:
        raise DatasetError(f"--all: no dataset under {args.root}; expected any of the folders "
                           f"{', '.join(lay.folder for lay in LAYOUTS.values())} (CoOp layout), "
                           "or <name>/train/<class>/ + <name>/test/<class>/ folders.")
    reports, failures = [], {}
    for name in names:
        try:
            report = evaluate_dataset(name, args.root, config, cache=cache,
                                      progress=_PROGRESS, split_file=args.split_file,
                                      layout=args.layout, prefetch=getattr(args, "prefetch", None))
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
        for path in write_summary(reports, failures, out):
            print(f"wrote {path}")
    return 0 if reports else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="VLM x VFM fusion by optimal transport: CLIP zero-shot, OTFusion, GPUA, LaZSL.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="classify an image set with every chosen method",
                       epilog="Every skipped file is listed on stderr with its reason; the last "
                       "line counts the images used and skipped.\n\n" + EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a folder, a .zip, or an image file")
    p.add_argument("--classes", required=True, help="'cat, dog', one per line, a .txt/.json "
                   "file, or preset:NAME (e.g. preset:dtd)")
    p.add_argument("--labels", default=None, help="CSV of filename,label (overrides folder labels)")
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable)")
    p.add_argument("--methods", default="clip,otfusion", help=f"comma list of {METHOD_LIST}")
    p.add_argument("--out", default="fusionlab-out", help="folder for predictions.csv/json")
    _add_shared_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("download", help="pre-fetch model weights (on a machine with internet)")
    p.add_argument("models", nargs="+", help="registry keys, see `models`")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="reproduce the papers' tables on benchmark datasets")
    _add_eval_args(p)
    _add_shared_args(p)
    p.set_defaults(func=cmd_eval)

    from core.eval.repro_cli import add_parser as add_repro_parser  # python -m core repro
    from core.eval.seg_command import add_parser as add_seg_eval  # GPUA Tables 2 and 8
    from core.pipeline.extract_cmd import add_parser as add_extract  # extract; eval --engine

    add_seg_eval(sub)
    add_repro_parser(sub)
    add_extract(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; returns its exit code (see ``EXIT_CODES``), never a traceback for a
    user's mistake."""
    from core.data import NoImagesError
    from core.models import WeightsUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WeightsUnavailableError as exc:
        _PROGRESS.end_line()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    except NoImagesError as exc:
        return _no_images(exc)
    except (ValueError, OSError, RuntimeError) as exc:
        # User mistakes (bad options, unreadable or unusable files): the message says what to do.
        _PROGRESS.end_line()
        print(f"error: {_one_line_oserror(exc)}", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # a bug: say so plainly, traceback on request
        if os.environ.get("FUSIONLAB_DEBUG", "").strip() not in ("", "0"):
            traceback.print_exc()
        _PROGRESS.end_line()
        print(f"error: internal error ({type(exc).__name__}: {exc}); please report it. "
              "Set FUSIONLAB_DEBUG=1 to print the traceback.", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line_oserror(exc: BaseException) -> str:
    """``[Errno 36] File name too long: '...'`` is noise; say what failed, with a short name."""
    if isinstance(exc, OSError) and exc.strerror:
        name = str(exc.filename or "")
        name = name if len(name) <= 80 else name[:77] + "..."
        return f"{exc.strerror}: {name}" if name else exc.strerror
    return str(exc)
