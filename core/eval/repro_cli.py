"""``python -m core repro``: list the reproducible tables, or run one and write its report.

    python -m core repro --tables
    python -m core repro gpua-t7 --root DATA --out results/
    python -m core repro gpua-t6 --root DATA --datasets eurosat,dtd --ths-steps 50

``core.cli`` calls :func:`add_parser` on its subparsers; the registry is ``core.eval.tables``,
the runner ``core.eval.repro``. Errors are raised as ``ValueError`` / ``OSError`` and printed by
``core.cli.main`` without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from core import config


def _comma(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def tables_listing() -> str:
    """Every registry table: id, paper and table, title, datasets, what it needs, its command."""
    from core.eval.tables import REPRO_TABLES

    lines = []
    for t in REPRO_TABLES.values():
        state = "" if t.runnable else "  [not yet runnable]"
        lines.append(f"{t.id:18s} {t.paper} {t.table}: {t.title}{state}")
        if t.datasets:
            lines.append(f"{'':18s} datasets: {', '.join(t.datasets)}")
        if t.rows:
            lines.append(f"{'':18s} rows: {'; '.join(r.label for r in t.rows)}")
        for need in t.needs:
            lines.append(f"{'':18s} needs: {need}")
        if t.runnable:
            lines.append(f"{'':18s} run: {t.command}")
        if t.note:  # a runnable table's note says how it departs from the paper
            lines.append(f"{'':18s} {t.note}")
    return "\n".join(lines)


def cmd_repro(args) -> int:
    from core.eval.repro import check_runnable, run_table, table_markdown, write_table_report
    from core.eval.tables import get_table
    from core.pipeline.cache import FeatureCache
    from core.pipeline.progress import LineProgress

    if args.tables:
        print(tables_listing())
        return 0
    if not args.table:
        raise ValueError("repro: give a table id (see `python -m core repro --tables`) and "
                         "--root DATA.")
    table = get_table(args.table)
    check_runnable(table)
    if not args.root:
        raise ValueError(f"repro {table.id}: pass --root, the folder holding the datasets "
                         f"({'; '.join(table.needs)}).")
    def given(*names):
        return {n: getattr(args, n) for n in names if getattr(args, n) is not None}

    overrides = given("vlm", "vfm", "max_images", "n_crops", "seed")  # change the protocol
    if str(overrides.get("vfm", "")).lower() == "none":
        overrides["vfm"] = None
    options = given("attributes_dir", "device", "batch_size", "precision")  # do not
    solver = {"gpua": {"ths_steps": args.ths_steps}} if args.ths_steps is not None else {}
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    report = run_table(table, args.root, overrides=overrides, solver=solver, options=options,
                       datasets=_comma(args.datasets) or None, cache=cache,
                       progress=LineProgress())
    print(table_markdown(report))
    for path in write_table_report(report, args.out):
        print(f"wrote {path}")
    ran = [c for c in report.cells if c.status == "ok"]
    if not ran:
        print("error: no cell of the table could be run (see the notes above).", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``repro`` on ``core.cli``'s subparsers."""
    p = subparsers.add_parser(
        "repro", help="reproduce one of the papers' tables (--tables lists them)",
        description="Run a paper's table through the evaluation harness and write "
        "<id>.md/.csv/.json: the paper's number beside ours, with the settings.")
    p.add_argument("table", nargs="?", help="table id, e.g. gpua-t7 (see --tables)")
    p.add_argument("--tables", action="store_true",
                   help="list every reproducible table and what it needs on disk")
    p.add_argument("--root", help="folder holding the datasets")
    p.add_argument("--out", default="fusionlab-repro", help="folder for the report")
    p.add_argument("--datasets", help="comma list: a subset of the table's datasets")
    g = p.add_argument_group("overrides (recorded in the report as not the paper's protocol)")
    g.add_argument("--vlm", help="another VLM for every row (default: the paper's)")
    g.add_argument("--vfm", help="another VFM for every row that has one, or 'none'")
    g.add_argument("--ths-steps", type=int, help="GPUA THS steps (quick runs)")
    g.add_argument("--max-images", type=int, help="class-balanced subset of each split")
    g.add_argument("--n-crops", type=int, help=f"LaZSL crops (paper {config.LAZSL_CROPS_PAPER})")
    g.add_argument("--seed", type=int, help=f"GPUA* pool and THS seed (default {config.SEED})")
    g = p.add_argument_group("run options")
    g.add_argument("--attributes-dir", help="LaZSL descriptors: <dataset>.json (DCLIP format)")
    g.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--precision", choices=config.PRECISIONS)
    g.add_argument("--cache-dir", help="feature cache (default $FUSIONLAB_CACHE_DIR)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.set_defaults(func=cmd_repro)
    return p
