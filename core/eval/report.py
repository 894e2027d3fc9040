"""Tables of the evaluation harness: Markdown, CSV and JSON, per dataset, summary and sweep.

Accuracies are percentages; "Paper" is the number the papers report for the same method, protocol
(OTFusion: setting and variant, ``paper_numbers.otfusion_protocol``), dataset and backbones
(``core.eval.paper_numbers``), marked ``*`` when the paper used another VFM or fewer models, and
Δ = ours - paper. Each row names its recipe and the features behind it. Pure functions of
``DatasetReport`` objects: nothing here computes features or solves.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict
from pathlib import Path

from core.eval.records import DatasetReport, MethodRow


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def _paper_cell(row: MethodRow) -> str:
    if row.paper is None:
        return "–"
    return f"{row.paper:.2f}" + ("" if row.paper_exact else "*")


def _ours_cell(row: MethodRow) -> str:
    if row.status != "ok":
        return row.status
    return "n/a" if row.accuracy is None else f"{row.accuracy:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _models(settings: dict) -> tuple[str, str]:
    """The VLM and VFM keys of a report's settings, several joined by "+" ("" without a VFM)."""
    vlms = settings.get("vlms") or [settings["vlm"]]
    vfms = settings.get("vfms", [settings["vfm"]] if settings.get("vfm") else [])
    return "+".join(vlms), "+".join(vfms)


def stem(report: DatasetReport) -> str:
    """File name stem: dataset and models, so runs with other models do not overwrite."""
    vlm, vfm = _models(report.settings)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{report.dataset}_{vlm}_{vfm or 'none'}")


def _note(row: MethodRow) -> str:
    """The last column: paper source, sources of our number, then the row's note."""
    parts = [row.paper_source, "sources: " + ", ".join(row.sources) if row.sources else "",
             row.note]
    return "; ".join(p for p in parts if p)


def markdown_report(report: DatasetReport) -> str:
    vlm, vfm = _models(report.settings)
    lines = [
        f"## {report.display_name} ({report.dataset}): {vlm} + {vfm or 'no VFM'}",
        "",
        f"{report.n_test:,} test images, {report.n_classes} classes, prompt \"{report.template}\""
        + (f"; GPUA pool {report.n_gpua_pool:,} train images" if report.n_gpua_pool else "")
        + ".",
        "Feature extraction: "
        + "; ".join(f"{k} {v}" for k, v in report.settings["extraction"].items())
        + ". Solve times below (features are cached: reruns only re-solve).",
        "",
        "| Method | Recipe | Protocol | Accuracy (%) | Paper (%) | Δ | n | Solve (s) | "
        "Paper source / sources / note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        lines.append(f"| {r.title} | {r.recipe or '–'} | {r.protocol} | {_ours_cell(r)} | "
                     f"{_paper_cell(r)} | {_signed(r.diff)} | {r.n_images:,} | "
                     f"{_num(r.seconds, 3)} | {_cell(_note(r))} |")
    if any(r.paper is not None and not r.paper_exact for r in report.rows):
        lines += ["", "\\* the paper used another VFM, or fewer models than this run (see the "
                  "source); compare with care."]
    notes = list(report.notes)
    if report.skipped:
        shown = "; ".join(f"{x.name}: {x.reason}" for x in report.skipped[:5])
        notes.append(f"{len(report.skipped)} file(s) skipped ({shown}"
                     + (", ..." if len(report.skipped) > 5 else "") + ")")
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    if report.sweep:
        lines += ["", sweep_markdown(report)]
    return "\n".join(lines) + "\n"


_CSV_FIELDS = ("dataset", "method", "title", "recipe", "protocol", "status", "accuracy", "paper",
               "diff", "paper_exact", "paper_source", "sources", "n_images", "solve_seconds",
               "extract_seconds", "vlm", "vfm", "template", "note")


def _csv_rows(report: DatasetReport) -> list[dict]:
    vlm, vfm = _models(report.settings)
    return [{
        "dataset": report.dataset, "method": r.method, "title": r.title, "recipe": r.recipe,
        "protocol": r.protocol, "status": r.status, "accuracy": _num(r.accuracy, 4),
        "paper": _num(r.paper), "diff": _num(r.diff, 4),
        "paper_exact": r.paper_exact if r.paper is not None else "",
        "paper_source": r.paper_source, "sources": "; ".join(r.sources),
        "n_images": r.n_images, "solve_seconds": _num(r.seconds, 4),
        "extract_seconds": sum(report.extract_seconds.values()), "vlm": vlm,
        "vfm": vfm or "none", "template": report.template, "note": r.note,
    } for r in report.rows]


def _csv(rows: list[dict], fields) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def report_json(report: DatasetReport) -> dict:
    out = asdict(report)
    out["rows"] = [dict(asdict(r), diff=r.diff, key=r.key) for r in report.rows]
    out["skipped"] = [{"name": x.name, "reason": x.reason} for x in report.skipped]
    return out


def sweep_markdown(report: DatasetReport) -> str:
    """Fig. 2 of OTFusion as a table: rows eps, columns lam (accuracy, else agreement with CLIP)."""
    rows = report.sweep
    metric = "accuracy" if any(r["accuracy"] is not None for r in rows) else "agreement_with_clip"
    lams = sorted({r["lam"] for r in rows})
    epss = sorted({r["eps"] for r in rows})
    cell = {(r["eps"], r["lam"]): r[metric] for r in rows}
    what = "accuracy (%)" if metric == "accuracy" else "agreement with CLIP (%) (no labels)"
    lines = [f"### OTFusion sensitivity on {report.dataset}: {what}, eps (rows) x lam (columns)",
             "", "| eps \\ lam | " + " | ".join(f"{lam:g}" for lam in lams) + " |",
             "|---|" + "---:|" * len(lams)]
    for eps in epss:
        vals = [cell.get((eps, lam)) for lam in lams]
        lines.append(f"| {eps:g} | " + " | ".join(
            "" if v is None else f"{100 * v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: DatasetReport, out: str | Path) -> list[Path]:
    """``<stem>.md``, ``.csv``, ``.json`` (and ``sweep_<stem>.md/.csv`` with a sweep) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = stem(report)
    paths = [out / f"{base}.md", out / f"{base}.csv", out / f"{base}.json"]
    paths[0].write_text(markdown_report(report), encoding="utf-8")
    paths[1].write_text(_csv(_csv_rows(report), _CSV_FIELDS), encoding="utf-8")
    paths[2].write_text(json.dumps(report_json(report), indent=2, default=str), encoding="utf-8")
    if report.sweep:
        paths += [out / f"sweep_{base}.md", out / f"sweep_{base}.csv"]
        paths[3].write_text(sweep_markdown(report), encoding="utf-8")
        paths[4].write_text(_csv([dict(r, dataset=report.dataset) for r in report.sweep],
                                 ("dataset", "lam", "eps", "accuracy", "agreement_with_clip")),
                            encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------- summary (--all)


def _methods(reports: list[DatasetReport]) -> list[tuple[str, str]]:
    """``(row key, column title)`` of every row seen, in order (a recipe in brackets)."""
    seen: dict[str, str] = {}
    for rep in reports:
        for r in rep.rows:
            seen.setdefault(r.key, f"{r.title} [{r.recipe} recipe]" if r.recipe else r.title)
    return list(seen.items())


def summary_rows(reports: list[DatasetReport]) -> list[dict]:
    """One dict per dataset plus an "Avg" row; paper averages use the same datasets as ours."""
    methods = _methods(reports)
    rows = []
    for rep in reports:
        row = {"dataset": rep.dataset, "n_test": rep.n_test}
        for m, _ in methods:
            r = next((r for r in rep.rows if r.key == m), None)
            row[m] = r.accuracy if r is not None and r.status == "ok" else None
            row[f"{m}_paper"] = r.paper if r is not None else None
        rows.append(row)
    avg = {"dataset": "Avg", "n_test": sum(r["n_test"] for r in rows)}
    for m, _ in methods:
        ours = [r[m] for r in rows if r[m] is not None]
        both = [(r[m], r[f"{m}_paper"]) for r in rows
                if r[m] is not None and r[f"{m}_paper"] is not None]
        avg[m] = sum(ours) / len(ours) if ours else None
        avg[f"{m}_paper"] = sum(p for _, p in both) / len(both) if both else None
        avg[f"{m}_n"] = len(ours)
    return rows + [avg]


def summary_markdown(reports: list[DatasetReport], failures: dict | None = None) -> str:
    methods = _methods(reports)
    lines = ["## Summary: accuracy (%), ours / paper", ""]
    if reports:
        vlm, vfm = _models(reports[0].settings)
        lines += [f"Models: {vlm} + {vfm or 'no VFM'}.", ""]
    lines.append("| Dataset | n | " + " | ".join(f"{t} | {t} (paper)" for _, t in methods) + " |")
    lines.append("|---|---:|" + "---:|---:|" * len(methods))
    for row in summary_rows(reports):
        name = f"**{row['dataset']}**" if row["dataset"] == "Avg" else row["dataset"]
        cells = []
        for m, _ in methods:
            cells += [_num(row[m]) or "–", _num(row[f"{m}_paper"]) or "–"]
        lines.append(f"| {name} | {row['n_test']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Avg: ours over the datasets each method ran on; paper over the datasets where "
              "both numbers exist (the papers' own 11-dataset averages are in "
              "core.eval.paper_numbers)."]
    for name, why in (failures or {}).items():
        first = why.splitlines()[0].removesuffix(" Expected:")
        lines.append(f"- not evaluated: {name}: {first}")
    return "\n".join(lines) + "\n"


def write_summary(reports: list[DatasetReport], failures: dict, out: str | Path) -> list[Path]:
    """``summary_<vlm>_<vfm>.md/.csv/.json`` in ``out`` (the models of the first report)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vlm, vfm = _models(reports[0].settings) if reports else ("none", "")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"summary_{vlm}_{vfm or 'none'}")
    rows = summary_rows(reports)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    paths = [out / f"{base}.md", out / f"{base}.csv", out / f"{base}.json"]
    paths[0].write_text(summary_markdown(reports, failures), encoding="utf-8")
    paths[1].write_text(_csv(rows, fields), encoding="utf-8")
    paths[2].write_text(json.dumps({"rows": rows, "not_evaluated": failures,
                                    "datasets": [report_json(r) for r in reports]},
                                   indent=2, default=str), encoding="utf-8")
    return paths
