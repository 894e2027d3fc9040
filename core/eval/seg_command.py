"""``python -m core seg-eval``: GPUA Tables 2 and 8 (open-vocabulary segmentation mIoU).

    python -m core seg-eval --dataset ade20k --root DATA --methods maskclip,maskclip+gpua
    python -m core seg-eval --dataset voc20 --root DATA --limit 50 --out results/

Reads the benchmark (``core.data.segmentation_sets``: official layouts), fits GPUA on a patch
pool from ``--fit-images`` images of the train split (``--fit-split val``: the evaluated images,
transductive, not the paper's protocol), evaluates every method with sliding windows
(``core.pipeline.seg_windows``) streaming one image at a time, and writes the report
(``core.eval.seg_report``) with the paper's number beside ours. Defaults: ``core.config``
(``SEG_*``). ``core.cli`` only calls :func:`add_parser`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from core import config
from core.data.coop import DatasetError
from core.data.segmentation_sets import SEGMENTATION_LAYOUTS, open_segmentation_set
from core.eval.seg_report import SEGMENTATION_TABLES, seg_report_markdown, write_seg_report

__all__ = ["SEGMENTATION_TABLES", "add_parser", "cmd_seg_eval", "seg_templates"]


def seg_templates(template: list[str] | None) -> tuple[str, ...]:
    """The prompt templates: those given, else ``config.SEG_TEMPLATES`` (CLIP's 80 ImageNet
    templates, as MaskCLIP and SCLIP)."""
    if template:
        bad = [t for t in template if "{}" not in t]
        if bad:
            raise ValueError(f"--template: expected a '{{}}' for the class name, got {bad[0]!r}.")
        return tuple(template)
    if config.SEG_TEMPLATES == "single":
        return (config.DEFAULT_TEMPLATE,)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``seg-eval`` on ``subparsers`` (``argparse`` sub-parsers of ``python -m core``)."""
    p = subparsers.add_parser("seg-eval", help="open-vocabulary segmentation mIoU on a benchmark "
                              "(GPUA Tables 2 and 8)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=tuple(SEGMENTATION_LAYOUTS))
    p.add_argument("--root", required=True, help="the dataset's folder, or a folder holding it")
    p.add_argument("--methods", default=",".join(config.SEG_METHODS),
                   help=f"comma list of {', '.join(config.SEG_METHODS)}")
    p.add_argument("--limit", type=int, default=None, help="first N images only (quick runs)")
    p.add_argument("--vlm", default=config.DEFAULT_VLM, help="a ViT CLIP (MaskCLIP dense path)")
    p.add_argument("--vfm", default=config.SEG_DEFAULT_VFM, help="GPUA's patch model")
    g = p.add_argument_group("inference (default: SCLIP's slide protocol)")
    g.add_argument("--mode", default="slide", choices=config.SEG_MODES)
    g.add_argument("--short-side", type=int, default=None,
                   help="resize short side (default per dataset: " + ", ".join(
                       f"{k} {v}" for k, v in config.SEG_SHORT_SIDE.items()) + ")")
    g.add_argument("--long-max", type=int, default=config.SEG_LONG_MAX)
    g.add_argument("--crop", type=int, default=config.SEG_CROP, help="window side")
    g.add_argument("--stride", type=int, default=config.SEG_STRIDE, help="window step")
    g.add_argument("--template", action="append",
                   help="prompt template with {} (repeatable); default CLIP's 80 ImageNet ones")
    g = p.add_argument_group("GPUA fit")
    g.add_argument("--fit-split", default="train", choices=("train", "val"))
    g.add_argument("--fit-images", type=int, default=config.SEG_FIT_IMAGES)
    g.add_argument("--per-class", type=int, default=config.SEG_POOL_PER_CLASS,
                   help="pool patches per class (paper: 1024)")
    g.add_argument("--gpua-recipe", default="paper", choices=config.RECIPE_NAMES)
    g.add_argument("--ths-steps", type=int, default=None, help="GPUA THS steps (recipe's)")
    g.add_argument("--seed", type=int, default=config.SEED, help="fit-image subset, THS")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None)
    g.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    g.add_argument("--precision", default=config.PRECISION, choices=config.PRECISIONS)
    g.add_argument("--cache-dir", default=None)
    g.add_argument("--no-cache", action="store_true")
    g.add_argument("--out", default="fusionlab-seg-eval")
    p.set_defaults(func=cmd_seg_eval)
    return p


def _methods(text: str) -> tuple[str, ...]:
    """``--methods`` as a tuple (``evaluate_segmentation`` checks the names)."""
    return tuple(m.strip().lower() for m in text.split(",") if m.strip())


def _fit_pool(args, dataset, notes: list[str]):
    """(fit set, indices): a seeded subset of the train split, or the evaluated images."""
    fit_set = dataset
    if args.fit_split == "train":
        try:
            fit_set = open_segmentation_set(args.dataset, args.root, split="train")
        except DatasetError as exc:
            notes.append(f"no train split ({exc.args[0].splitlines()[0]}); GPUA fitted on the "
                         "evaluated images (transductive, not the paper's protocol)")
    else:
        notes.append("GPUA fitted on the evaluated images (--fit-split val: transductive)")
    n = min(len(fit_set), max(1, args.fit_images))
    order = torch.randperm(len(fit_set), generator=torch.Generator().manual_seed(args.seed))
    return fit_set, sorted(order[:n].tolist())


def cmd_seg_eval(args) -> int:
    from core.pipeline.cache import FeatureCache
    from core.pipeline.progress import LineProgress
    from core.pipeline.seg_eval import evaluate_segmentation
    from core.pipeline.seg_windows import SlideSettings

    methods = _methods(args.methods)
    dataset = open_segmentation_set(args.dataset, args.root, split="val", limit=args.limit)
    full = len(open_segmentation_set(args.dataset, args.root, split="val")) if args.limit else 0
    notes = [f"first {len(dataset)} of {full} images (--limit): not comparable with the paper"
             ] if full > len(dataset) else []
    slide = SlideSettings(short_side=args.short_side or config.SEG_SHORT_SIDE[args.dataset],
                          long_max=args.long_max, crop=args.crop, stride=args.stride,
                          mode=args.mode)
    if slide.mode != "slide" or args.short_side not in (None, config.SEG_SHORT_SIDE[args.dataset]):
        notes.append("inference differs from SCLIP's slide protocol (mode / short side)")
    gpua = replace(config.recipe("gpua", args.gpua_recipe), seed=args.seed)
    if args.ths_steps is not None:
        gpua = replace(gpua, ths_steps=args.ths_steps)
    solver = config.MethodSettings(gpua=gpua)
    fit_set, fit_idx = (_fit_pool(args, dataset, notes) if "maskclip+gpua" in methods
                        else (None, []))
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    run = evaluate_segmentation(
        dataset, vlm=args.vlm, vfm=args.vfm, methods=methods, slide=slide,
        templates=seg_templates(args.template), solver=solver, fit_set=fit_set,
        fit_indices=fit_idx, per_class=args.per_class, cache=cache, device=args.device,
        precision=args.precision, batch_size=args.batch_size, progress=LineProgress())
    run = replace(run, notes=tuple(notes), settings={
        **run.settings, "gpua_recipe": args.gpua_recipe, "gpua_lam": gpua.lam,
        "gpua_eps": gpua.eps, "gpua_concat_vlm": gpua.concat_vlm, "ths_steps": gpua.ths_steps,
        "seed": args.seed, "fit_split": fit_set.split if fit_set else None,
        "precision": args.precision, "first_template": seg_templates(args.template)[0]})
    print(seg_report_markdown(run))
    for path in write_seg_report(run, dataset.class_names, Path(args.out)):
        print(f"wrote {path}")
    return 0
