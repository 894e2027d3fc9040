"""Run one registry table (``core.eval.tables``) through the evaluation harness and report it.

``run_table`` runs every row of the table on every dataset (one ``evaluate_dataset`` call per
row and dataset: features are cached per image content, so the rows of a dataset share them;
with the cache off each row encodes again; a dataset's folder is listed once) and returns a
:class:`TableReport`; ``write_table_report`` writes ``<id>.md`` (the grid, "ours / paper (Δ)"
per cell, then each row's exact settings), ``<id>.csv`` (one line per row and dataset) and
``<id>.json`` (everything, the full solver settings included). Paper numbers come from
``core.eval.paper_numbers`` through ``tables.paper_row``.

Overrides (``--vlm`` / ``--vfm`` / ``--ths-steps`` / ``--max-images`` ...) are recorded in the
report and flagged: a run with other models or fewer images is not the paper's protocol. A row
without a VFM keeps none when ``--vfm`` is given (it is the "no VFM" ablation).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from core.config import MethodSettings
from core.data.benchmarks import DatasetError, open_benchmark
from core.eval.harness import evaluate_dataset
from core.eval.records import EvalConfig, MethodRow
from core.eval.tables import ReproRow, ReproTable, paper_row

__all__ = ["NO_PAPER", "Cell", "TableReport", "check_runnable", "run_table", "table_markdown",
           "write_table_report"]

_EVAL_FIELDS = {f.name for f in fields(EvalConfig)} - {"solver"}
NO_PAPER = "no paper number held"  # a table (row) whose paper numbers we do not have


@dataclass(frozen=True)
class Cell:
    """One row on one dataset: ours and the paper's number (percent), how it ran."""

    row: str
    dataset: str
    status: str  # ok, skipped, failed (MethodRow.status), missing (the dataset is not there)
    ours: float | None = None
    paper: float | None = None
    protocol: str = ""
    n_images: int = 0
    note: str = ""

    @property
    def diff(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


@dataclass(frozen=True)
class TableReport:
    """A table's cells, the paper's printed averages and every row's exact settings."""

    table_id: str
    paper: str
    table: str
    title: str
    command: str
    datasets: tuple[str, ...]
    rows: tuple[str, ...]
    cells: tuple[Cell, ...]
    paper_averages: dict  # row label -> the paper's printed average (None if not printed)
    paper_sources: dict  # row label -> "GPUA Table 7 (CLIP ViT-B/16 + ...)"
    settings: dict  # row label -> {"eval": {...}, "solver": {...}}
    overrides: dict
    notes: tuple[str, ...] = ()

    def cell(self, row: str, dataset: str) -> Cell:
        return next(c for c in self.cells if c.row == row and c.dataset == dataset)


def _merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged one level down (per-method solver changes)."""
    out = {k: dict(v) for k, v in base.items()}
    for method, change in extra.items():
        out.setdefault(method, {}).update(change)
    return out


def _row_config(table: ReproTable, row: ReproRow, overrides: dict, solver: dict) -> EvalConfig:
    values = {**table.config, **row.config, "methods": (row.method,)}
    for name, value in overrides.items():
        if name == "vfm" and values.get("vfm", "") is None:
            continue  # the row's "no VFM" is the ablation itself
        values[name] = value
    return EvalConfig(**values, solver=MethodSettings().replace(**_merge(row.solver, solver)))


def _pick(rows: tuple[MethodRow, ...], row: ReproRow) -> MethodRow | None:
    """The harness row of ``row``: its method, the expected protocol first."""
    mine = [r for r in rows if r.method == row.method]
    return next((r for r in mine if r.protocol == row.protocol), mine[0] if mine else None)


def check_runnable(table: ReproTable) -> None:
    """ValueError naming what ``table`` needs when ``repro`` cannot run it."""
    if table.kind != "classification" or not table.runnable:
        raise ValueError(f"{table.id}: not run by `repro` ({table.note or table.kind}); "
                         f"needs: {'; '.join(table.needs)}.")


def run_table(table: ReproTable, root, *, overrides: dict | None = None,
              solver: dict | None = None, options: dict | None = None, datasets=None,
              cache=None, progress=None) -> TableReport:
    """Run ``table`` on the datasets under ``root``.

    overrides : ``EvalConfig`` fields applied to every row (e.g. ``{"vlm": ..., "max_images":
        8}``); solver : ``MethodSettings.replace`` changes applied to every row (e.g.
        ``{"gpua": {"ths_steps": 5}}``); both are flagged in the report as not the paper's
        protocol. options : ``EvalConfig`` fields that do not change the protocol (device,
        batch size, descriptors folder). datasets : a subset of the table's datasets.
    A dataset missing under ``root`` gives "missing" cells with the reader's message.
    """
    check_runnable(table)
    overrides, solver, options = dict(overrides or {}), dict(solver or {}), dict(options or {})
    unknown = (set(overrides) | set(options)) - _EVAL_FIELDS
    if unknown:
        raise ValueError(f"overrides: unknown EvalConfig field(s) {sorted(unknown)}.")
    wanted = tuple(datasets or table.datasets)
    bad = [d for d in wanted if d not in table.datasets]
    if bad:
        raise ValueError(f"{table.id}: datasets {bad} are not in the table; it has "
                         f"{', '.join(table.datasets)}.")
    configs = {row.label: _row_config(table, row, {**options, **overrides}, solver)
               for row in table.rows}
    papers = {row.label: paper_row(table, row) for row in table.rows}  # None: none held
    printed = {k: {} if p is None else p.values for k, p in papers.items()}
    cells, notes = [], []
    for ds in wanted:
        try:
            data = open_benchmark(ds, root)
        except DatasetError as exc:
            first = str(exc).splitlines()[0].removesuffix(" Expected:")
            first += " (the expected layout is in the notes)"
            notes.append(f"{ds}: not evaluated: {exc}")
            cells += [Cell(r.label, ds, "missing", paper=printed[r.label].get(ds),
                           note=first) for r in table.rows]
            continue
        notes += [f"{ds}: {n}" for n in data.notes]  # the reader's, once per dataset
        for row in table.rows:
            report = evaluate_dataset(data, config=configs[row.label], cache=cache,
                                      progress=progress)
            notes += [f"{ds} ({row.label}): {n}" for n in report.notes if n not in data.notes]
            got = _pick(report.rows, row)
            note = f"the harness gave no {row.method} row" if got is None else got.note
            if got is not None and got.protocol != row.protocol:
                note = (f"ran as {got.protocol!r}, the paper's row is {row.protocol!r}; "
                        + note).rstrip("; ")
            cells.append(Cell(row.label, ds, "failed" if got is None else got.status,
                              None if got is None else got.accuracy,
                              printed[row.label].get(ds),
                              "" if got is None else got.protocol,
                              0 if got is None else got.n_images, note))
    if overrides or solver:
        notes.insert(0, "overridden for this run (not the paper's protocol): "
                     + ", ".join(f"{k}={v}" for k, v in {**overrides, **solver}.items()))
    if table.note:
        notes.insert(0, table.note)
    settings = {label: {"eval": {k: v for k, v in asdict(c).items() if k != "solver"},
                        "solver": c.solver.as_dict()} for label, c in configs.items()}
    return TableReport(
        table_id=table.id, paper=table.paper, table=table.table, title=table.title,
        command=table.command, datasets=wanted, rows=tuple(r.label for r in table.rows),
        cells=tuple(cells),
        paper_averages={k: None if p is None else p.average for k, p in papers.items()},
        paper_sources={k: NO_PAPER if p is None else p.source for k, p in papers.items()},
        settings=settings,
        overrides={**overrides, **{f"solver.{k}": v for k, v in solver.items()}},
        notes=tuple(dict.fromkeys(notes)))


# ----------------------------------------------------------------------------- report


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _paper(x: float | None) -> str:
    return "–" if x is None else f"{x:g}"  # as printed (66.6, 74.95)


def _cell_text(c: Cell, held: bool) -> str:
    ours = _fmt(c.ours) if c.status == "ok" else c.status
    if c.paper is None:
        return ours if held else f"{ours} / no paper number"
    diff = "" if c.diff is None else f" ({c.diff:+.2f})"
    return f"{ours} / {_paper(c.paper)}{diff}"


def _averages(report: TableReport, row: str) -> tuple[float | None, float | None]:
    """Our mean over the datasets we have a number for, the paper's over the same ones."""
    both = [(c.ours, c.paper) for c in report.cells
            if c.row == row and c.ours is not None and c.paper is not None]
    if not both:
        return None, None
    return (sum(o for o, _ in both) / len(both), sum(p for _, p in both) / len(both))


def _changes(settings: dict) -> str:
    """A row's settings that differ from the defaults, compactly."""
    ev = settings["eval"]
    default_solver = MethodSettings().as_dict()
    shown = {"vlm": True, "vfm": True, "gpua_shots": "gpua" in ev["methods"],
             "n_crops": "lazsl" in ev["methods"], "max_images": ev["max_images"] is not None,
             "otfusion_recipes": "otfusion" in ev["methods"]}
    parts = [f"{k}={ev[k]}" for k, show in shown.items() if show]
    for method, values in settings["solver"].items():
        if method not in ev["methods"]:
            continue  # a knob of a method this row does not run
        parts += [f"{method}.{k}={v}" for k, v in values.items()
                  if default_solver[method].get(k) != v]
    return ", ".join(parts)


def table_markdown(report: TableReport) -> str:
    cells_are = ("ours / paper (Δ = ours - paper), accuracy in %; the last columns average "
                 "ours and the paper's over the datasets both have, then the paper's printed "
                 "average" if any(s != NO_PAPER for s in report.paper_sources.values()) else
                 f"ours, accuracy in % ({NO_PAPER}: we do not have this paper's numbers)")
    lines = [f"## {report.paper} {report.table}: {report.title} ({report.table_id})", "",
             f"Command: `{report.command}`. Cells: {cells_are}.", "",
             "| Row | " + " | ".join(report.datasets) + " | Avg ours / paper | Paper avg |",
             "|---|" + "---:|" * (len(report.datasets) + 2)]
    for row in report.rows:
        held = report.paper_sources[row] != NO_PAPER
        cells = [_cell_text(report.cell(row, d), held) for d in report.datasets]
        ours, paper = _averages(report, row)
        avg = "–" if ours is None else f"{ours:.2f} / {paper:.2f}"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {avg} | "
                     f"{_paper(report.paper_averages.get(row))} |")
    lines += ["", "Settings (each row; the JSON holds every solver knob):"]
    lines += [f"- {row}: {_changes(report.settings[row])}; paper: {report.paper_sources[row]}"
              for row in report.rows]
    odd = [c for c in report.cells if c.note]
    if odd:
        lines += ["", "Cell notes:"] + [f"- {c.row} on {c.dataset}: {c.note}" for c in odd]
    if report.notes:  # a reader's message keeps its expected layout, indented
        lines += ["", "Notes:"] + ["- " + n.replace("\n", "\n  ") for n in report.notes]
    return "\n".join(lines) + "\n"


_CSV_FIELDS = ("table", "row", "dataset", "status", "ours", "paper", "diff", "protocol",
               "n_images", "paper_source", "settings", "note")


def _csv(report: TableReport) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for c in report.cells:
        writer.writerow({"table": report.table_id, "row": c.row, "dataset": c.dataset,
                         "status": c.status, "ours": "" if c.ours is None else f"{c.ours:.4f}",
                         "paper": "" if c.paper is None else c.paper,
                         "diff": "" if c.diff is None else f"{c.diff:.4f}",
                         "protocol": c.protocol, "n_images": c.n_images,
                         "paper_source": report.paper_sources[c.row],
                         "settings": _changes(report.settings[c.row]), "note": c.note})
    return buf.getvalue()


def write_table_report(report: TableReport, out) -> list[Path]:
    """``<id>.md``, ``<id>.csv`` and ``<id>.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{report.table_id}.{ext}" for ext in ("md", "csv", "json")]
    paths[0].write_text(table_markdown(report), encoding="utf-8")
    paths[1].write_text(_csv(report), encoding="utf-8")
    data = asdict(report)
    data["cells"] = [dict(asdict(c), diff=c.diff) for c in report.cells]
    paths[2].write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return paths
