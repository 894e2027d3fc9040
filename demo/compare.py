"""Two records of a session side by side: pure functions on ``demo.history.RunRecord``.

What the Compare tab shows (``demo.compare_view`` lays it out): per method the accuracy of run A
and run B and their difference, the number of images where their predictions differ, the
settings of each, and the images where they disagree (A's answer, B's answer, the truth).
Predictions are compared by class *name*, so two runs with differently ordered class lists still
compare. Image by image needs the same images: :func:`align` pairs them by the sha256 of their
bytes (upload order may differ); runs on different image sets get the summary numbers only.
"""

from __future__ import annotations

import csv
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from core.methods import METHOD_TITLES
from demo.history import METHOD_ORDER, RunRecord
from demo.predictions import md_cell
from demo.provenance import settings_text

# Which disagreements the list shows: key -> what it means (labels needed for the last two).
SHOW = {
    "differ": "A and B differ",
    "a_right": "only A is right",
    "b_right": "only B is right",
}


@dataclass(frozen=True)
class MethodRow:
    """One method's line of the comparison; None where it does not apply (method not run by
    one side, no labels, or images that cannot be paired)."""

    method: str
    acc_a: float | None
    acc_b: float | None
    n_differ: int | None

    @property
    def delta(self) -> float | None:
        """Accuracy of B minus accuracy of A."""
        if self.acc_a is None or self.acc_b is None:
            return None
        return self.acc_b - self.acc_a


@dataclass(frozen=True)
class Disagreement:
    """An image where A and B predict different classes (``index``: its position in A)."""

    index: int
    name: str
    truth: str | None
    pred_a: str
    pred_b: str


def align(a: RunRecord, b: RunRecord) -> list[int] | None:
    """For each image of ``a``, the index of the same image (same bytes) in ``b``; None when the
    two image sets differ. Duplicated files pair in order of appearance."""
    if len(a.shas) != len(b.shas) or sorted(a.shas) != sorted(b.shas):
        return None
    slots: dict[str, deque] = defaultdict(deque)
    for j, sha in enumerate(b.shas):
        slots[sha].append(j)
    return [slots[sha].popleft() for sha in a.shas]


def methods_of(a: RunRecord, b: RunRecord) -> list[str]:
    """Methods run by A or B, in the app's order."""
    return [m for m in METHOD_ORDER if m in a.methods or m in b.methods]


def common_methods(a: RunRecord, b: RunRecord) -> list[str]:
    return [m for m in METHOD_ORDER if m in a.methods and m in b.methods]


def _paired(a: RunRecord, b: RunRecord, method: str, order: list[int]):
    """(A's, B's) predicted class names of ``method``, B's put in A's image order."""
    pa, pb = a.predicted(method), b.predicted(method)
    return pa, [pb[j] for j in order]


def method_rows(a: RunRecord, b: RunRecord, order: list[int] | None) -> list[MethodRow]:
    """One row per method of :func:`methods_of`; ``order``: :func:`align`'s pairing or None."""
    rows = []
    for m in methods_of(a, b):
        n_differ = None
        if order is not None and m in a.methods and m in b.methods:
            pa, pb = _paired(a, b, m, order)
            n_differ = sum(x != y for x, y in zip(pa, pb))
        rows.append(MethodRow(m, a.accuracy.get(m), b.accuracy.get(m), n_differ))
    return rows


def truths(a: RunRecord, b: RunRecord, order: list[int]) -> list[str | None]:
    """True class per image of A: A's label, else B's (a labels CSV given to one run only)."""
    tb = b.true_names()
    return [x if x is not None else tb[j] for x, j in zip(a.true_names(), order)]


def disagreements(a: RunRecord, b: RunRecord, method: str, order: list[int],
                  show: str = "differ") -> list[Disagreement]:
    """The images where ``method``'s predictions differ between A and B, in A's order, narrowed
    by ``show`` (:data:`SHOW`; "a_right" / "b_right" keep only labelled images)."""
    if show not in SHOW:
        raise ValueError(f"compare: expected one of {', '.join(SHOW)}, got {show!r}.")
    if method not in a.methods or method not in b.methods:
        return []
    pa, pb = _paired(a, b, method, order)
    out = []
    for i, (x, y, t) in enumerate(zip(pa, pb, truths(a, b, order))):
        if x == y:
            continue
        if show == "a_right" and not (t is not None and x == t):
            continue
        if show == "b_right" and not (t is not None and y == t):
            continue
        out.append(Disagreement(i, a.names[i], t, x, y))
    return out


# ----------------------------------------------------------------------------- text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _delta(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f} pt"


def accuracy_markdown(rows: list[MethodRow]) -> str:
    """The per-method table: accuracy of A, of B, B - A, images where they differ."""
    lines = ["| method | accuracy A | accuracy B | B − A | images where A and B differ |",
             "|---|---|---|---|---|"]
    for r in rows:
        differ = "-" if r.n_differ is None else str(r.n_differ)
        lines.append(f"| {METHOD_TITLES.get(r.method, r.method)} | {_pct(r.acc_a)} | "
                     f"{_pct(r.acc_b)} | {_delta(r.delta)} | {differ} |")
    return "\n".join(lines)


def _setting_rows(a: RunRecord, b: RunRecord) -> list[tuple[str, str, str]]:
    def images(r: RunRecord) -> str:
        return (f"{r.n_images} ({r.n_labelled} labelled), {len(r.class_names)} classes")

    rows = [("models", a.models, b.models), ("images", images(a), images(b)),
            ("prompt templates", " / ".join(a.templates), " / ".join(b.templates)),
            ("precision", a.precisions or a.precision, b.precisions or b.precision)]
    for m in methods_of(a, b):
        rows.append((METHOD_TITLES.get(m, m),
                     settings_text(m, a.settings) if m in a.methods else "not run",
                     settings_text(m, b.settings) if m in b.methods else "not run"))
    return rows


def settings_markdown(a: RunRecord, b: RunRecord) -> str:
    """What produced each run, read from the records; rows that differ are marked ≠."""
    lines = [f"| | A: #{a.id} | B: #{b.id} |", "|---|---|---|"]
    for what, x, y in _setting_rows(a, b):
        mark = " ≠" if x != y else ""
        lines.append(f"| **{what}**{mark} | {md_cell(x)} | {md_cell(y)} |")
    return "\n".join(lines)


def caption(d: Disagreement) -> str:
    """A gallery caption: A's answer, B's answer (✓/✗ when the truth is known), then the file
    and the truth (the full text is shown on hover)."""
    def mark(pred: str) -> str:
        return "" if d.truth is None else (" ✓" if pred == d.truth else " ✗")

    lines = [f"A: {d.pred_a}{mark(d.pred_a)}", f"B: {d.pred_b}{mark(d.pred_b)}", d.name]
    if d.truth is not None:
        lines.append(f"true: {d.truth}")
    return "\n".join(lines)


def list_markdown(items: list[Disagreement], limit: int) -> str:
    """The disagreements as a table (the first ``limit``)."""
    if not items:
        return ""
    lines = ["| # | file | true | A | B |", "|---|---|---|---|---|"]
    for d in items[:limit]:
        lines.append(f"| {d.index + 1} | {md_cell(d.name)} | {md_cell(d.truth or '-')} | "
                     f"{md_cell(d.pred_a)} | {md_cell(d.pred_b)} |")
    if len(items) > limit:
        lines.append(f"\n... and {len(items) - limit} more (all of them in the CSV).")
    return "\n".join(lines)


def write_csv(folder: Path, a: RunRecord, b: RunRecord, rows: list[MethodRow],
              order: list[int] | None) -> list[str]:
    """The comparison as CSV: a summary per method, and (same image set) one row per image with
    each method's A and B answers. Returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"compare_A{a.id}_B{b.id}"
    summary = folder / f"{stem}_summary.csv"
    with open(summary, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "accuracy_A", "accuracy_B", "delta_B_minus_A", "n_differ",
                    "settings_A", "settings_B"])
        for r in rows:
            w.writerow([r.method, _num(r.acc_a), _num(r.acc_b), _num(r.delta), _num(r.n_differ),
                        settings_text(r.method, a.settings) if r.method in a.methods else "",
                        settings_text(r.method, b.settings) if r.method in b.methods else ""])
        w.writerow([])
        w.writerow(["run", "label"])
        w.writerows([["A", a.label], ["B", b.label]])
    paths = [str(summary)]
    if order is not None:
        both = common_methods(a, b)
        paired = {m: _paired(a, b, m, order) for m in both}
        images = folder / f"{stem}_images.csv"
        with open(images, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "true"] + [f"{m}_{s}" for m in both for s in ("A", "B", "differ")])
            for i, t in enumerate(truths(a, b, order)):
                row = [a.names[i], t or ""]
                for m in both:
                    x, y = paired[m][0][i], paired[m][1][i]
                    row += [x, y, int(x != y)]
                w.writerow(row)
        paths.append(str(images))
    return paths


def _num(x) -> str:
    return "" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))
