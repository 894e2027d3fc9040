"""The Predictions tab: gallery captions and filters, paging, the top-3 details of a clicked
image and the summary table (accuracy, changes vs CLIP and the settings each column ran with,
read from the session record).

Besides its filter the gallery can be narrowed to a *subset*: images lassoed on an embedding map or
matching the map's search (``demo.linking``). A subset is a small dict ``{"run", "indices",
"label"}`` kept in a ``gr.State``; it names the Run it was made for, so a new Run ignores it.
"""

from __future__ import annotations

import html
import math
import posixpath
from typing import Any, NamedTuple

import gradio as gr
import torch

from demo.overlays import topk
from demo.provenance import models_text, settings_text, sources_text
from demo.state import Session, user_errors

PAGE_SIZE = 60  # gallery images per page
FILTERS = ("all", "changed", "wrong", "fixed", "broken")
FILTER_HELP = {
    "all": "every image",
    "changed": "the method's prediction differs from CLIP's",
    "wrong": "the method is wrong (needs labels)",
    "fixed": "CLIP was wrong and the method is right (needs labels)",
    "broken": "CLIP was right and the method is wrong (needs labels)",
}


def md_cell(text) -> str:
    """Escape user text (file and class names) for a Markdown table cell."""
    return html.escape(str(text)).replace("|", "&#124;").replace("*", "&#42;").replace(
        "_", "&#95;")


def _top1(session: Session, method: str) -> tuple[list[int], list[float]]:
    res = session.results[method]
    conf = res.probs.gather(1, res.pred[:, None])[:, 0]
    return res.pred.tolist(), conf.tolist()


def true_labels(session: Session) -> list[int]:
    labels = session.labels
    return [-1] * len(session.names) if labels is None else labels.tolist()


def compare_method(session: Session, wanted: str | None) -> str:
    """The method compared with CLIP in captions and filters (the first non-CLIP by default)."""
    others = [m for m in session.methods if m != "clip"]
    if wanted in session.results:
        return wanted
    return others[0] if others else "clip"


def captions(session: Session, compare: str | None = None) -> list[str]:
    """One caption per image, as lines: the two shown under the thumbnail first (``"✓ cat 71%"``
    for the compared method, then ``"CLIP: dog"`` when it changed CLIP's answer, else the
    file's base name), then the full text shown on hover and beside the preview: every method's
    top-1 marked ✓/✗ and (changed), the true class and the file's path."""
    compare = compare_method(session, compare)
    names = session.class_names
    truth = true_labels(session)
    tops = {m: _top1(session, m) for m in session.methods}
    base_pred = tops["clip"][0]
    out = []
    for i, file in enumerate(session.names):
        pred, conf = tops[compare][0][i], tops[compare][1][i]
        head = f"{names[pred]} {conf:.0%}"
        if truth[i] >= 0:
            head = ("✓ " if pred == truth[i] else "✗ ") + head
        second = (f"CLIP: {names[base_pred[i]]}" if pred != base_pred[i]
                  else posixpath.basename(file))
        parts = [head, second]
        for m in session.methods:
            p, c = tops[m][0][i], tops[m][1][i]
            part = f"{session.title(m)}: {names[p]} {c:.0%}"
            if truth[i] >= 0:
                part += " ✓" if p == truth[i] else " ✗"
            if m != "clip" and p != base_pred[i]:
                part += " (changed)"
            parts.append(part)
        if truth[i] >= 0:
            parts.append(f"true: {names[truth[i]]}")
        parts.append(file)
        out.append("\n".join(parts))
    return out


def filter_indices(session: Session, compare: str, mode: str) -> list[int]:
    """Images shown under a filter (see ``FILTERS``), in upload order."""
    pred = session.results[compare].pred
    base = session.results["clip"].pred
    n = pred.shape[0]
    if mode == "all":
        keep = torch.ones(n, dtype=torch.bool)
    elif mode == "changed":
        keep = pred != base
    else:
        labels = session.labels
        if labels is None:
            return []
        known = labels >= 0
        right, base_right = pred == labels, base == labels
        keep = {"wrong": known & ~right, "fixed": known & ~base_right & right,
                "broken": known & base_right & ~right}.get(mode)
        if keep is None:
            raise ValueError(f"filter: expected one of {', '.join(FILTERS)}, got {mode!r}.")
    return torch.nonzero(keep).flatten().tolist()


def make_subset(session: Session, indices, label: str) -> dict:
    """A gallery subset of this record: image ``indices`` (sorted, in range) and a ``label``
    saying where they came from (e.g. "selected on the map")."""
    n = len(session.names)
    keep = sorted({int(i) for i in indices if 0 <= int(i) < n})
    return {"run": session.run_id, "indices": keep, "label": str(label)}


def subset_indices(session: Session, subset) -> list[int] | None:
    """The images of ``subset``, or None when there is none or it belongs to another Run."""
    if not isinstance(subset, dict) or subset.get("run") != session.run_id:
        return None
    return list(subset["indices"])


def view_indices(session: Session, compare: str, mode: str, subset=None) -> list[int]:
    """Images the gallery shows: the filter's, narrowed to the subset if any, in upload order."""
    idx = filter_indices(session, compare, mode)
    chosen = subset_indices(session, subset)
    if chosen is not None:
        inside = set(chosen)
        idx = [i for i in idx if i in inside]
    return idx


def gallery_page(session: Session, compare: str, mode: str, page: int, subset=None):
    """(gallery items, info markdown, number of pages, page shown, image index per position) for
    one filter, subset and page."""
    idx = view_indices(session, compare, mode, subset)
    pages = max(1, math.ceil(len(idx) / PAGE_SIZE))
    page = min(max(1, int(page or 1)), pages)
    shown = idx[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    caps = session.memo.get(("captions", compare))
    if caps is None:
        caps = session.memo[("captions", compare)] = captions(session, compare)
    items = [(session.thumbs[i], caps[i]) for i in shown]
    total = len(session.names)
    what = f"**{len(idx)}** of {total} images ({FILTER_HELP[mode]}"
    what += f", {session.title(compare)} vs CLIP" if mode != "all" else ""
    if subset_indices(session, subset) is not None:
        what += f"; {md_cell(subset['label'])}"
    what += ")"
    if mode in ("wrong", "fixed", "broken") and not session.has_labels:
        what = ("This filter needs labels: put each class's images in a folder named after it "
                "inside the zip, or upload a labels CSV.")
    elif idx:
        what += f"; showing {(page - 1) * PAGE_SIZE + 1}-{(page - 1) * PAGE_SIZE + len(shown)}"
        if pages > 1:
            what += f" (page {page} of {pages})"
    return items, what + ". Click an image for its top-3 under every method.", pages, page, shown


def details_markdown(session: Session, index: int | None) -> str:
    """Top-3 of every method for one image (a row per method, the best in bold)."""
    if index is None or not 0 <= int(index) < len(session.names):
        return "Click an image in the gallery to see its top-3 under every method."
    i = int(index)
    names = session.class_names
    truth = true_labels(session)[i]
    head = f"**{md_cell(session.names[i])}**"
    if truth >= 0:
        head += f" - true class: **{md_cell(names[truth])}**"
    # One row per method, its top-3 stacked in one cell: narrow enough to sit beside the gallery.
    rows = ["| method | top 3 |", "|---|---|"]
    for m in session.methods:
        lines = []
        for r, (cls, p) in enumerate(topk(session.results[m].probs[i: i + 1], names, k=3)[0]):
            mark = " ✓" if truth >= 0 and r == 0 and cls == names[truth] else ""
            text = f"{md_cell(cls)} {p:.0%}{mark}"
            lines.append(f"**{text}**" if r == 0 else text)
        rows.append(f"| {session.title(m)} | " + "<br>".join(lines) + " |")
    return head + "\n\n" + "\n".join(rows)


def summary_markdown(session: Session) -> str:
    """Accuracy, changes vs CLIP and solve time per method."""
    ex = session.extraction
    base = session.results["clip"].pred
    known = int((session.labels >= 0).sum()) if session.labels is not None else 0
    rows = ["| method | accuracy | changed vs CLIP | settings | sources | solve time |",
            "|---|---|---|---|---|---|"]
    for m in session.methods:
        r = session.results[m]
        acc = "-" if r.accuracy is None else f"{r.accuracy:.1%}"
        changed = "-" if m == "clip" else f"{int((r.pred != base).sum())}"
        rows.append(f"| {session.title(m)} | {acc} | {changed} | "
                    f"{settings_text(m, session.settings)} | {md_cell(sources_text(r.sources))} "
                    f"| {r.seconds * 1000:.0f} ms |")
    label_note = (f"{known} labelled" if known else "no labels (accuracy needs folder names or a "
                  "labels CSV)")
    notes = [ths_note(session.results["gpua"])] if "gpua" in session.results else []
    return (f"{len(ex.items)} images ({label_note}), {len(ex.class_names)} classes, "
            f"{md_cell(models_text(ex))}.\n\n" + "\n".join(rows)
            + "".join(f"\n\n{n}" for n in notes if n))


def ths_note(result) -> str:
    """One sentence on what GPUA's THS refinement changed against the Procrustes map alone."""
    d = result.diagnostics
    if "changed_by_ths" not in d:
        return ""
    text = (f"GPUA's THS refinement changed {d['changed_by_ths']} of {len(result.pred)} "
            "predictions of the Procrustes map W0")
    if d["procrustes_accuracy"] is not None and result.accuracy is not None:
        text += (f" (accuracy {d['procrustes_accuracy']:.1%} with W0 alone, "
                 f"{result.accuracy:.1%} after)")
    text += "; set 'THS refinement steps' to 0 (Advanced) to use W0."
    align = result.details
    if getattr(align, "orthogonality_error", None) is not None:
        text += f" The refined W is {align.orthogonality_error:.1e} from orthogonal (‖WᵀW − I‖)."
    return text


def page_update(pages: int, page: int):
    # A slider needs minimum < maximum; with one page it is hidden anyway.
    return gr.update(maximum=max(2, pages), value=page, visible=pages > 1)


class PageOutputs(NamedTuple):
    gallery: list
    gallery_info: str
    page: Any
    shown: list


@user_errors
def show_page(session, compare=None, filter_mode="all", page=1, subset=None) -> PageOutputs:
    """Another gallery page (no solver, no downloads)."""
    if not isinstance(session, Session):
        return PageOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    compare = compare_method(session, compare)
    items, info, pages, page, shown = gallery_page(session, compare, filter_mode, page, subset)
    # The preview closes: its position now holds another image than the top-3 table shows.
    return PageOutputs(gr.Gallery(value=items, selected_index=None), info,
                       page_update(pages, page), shown)


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
    return SelectOutputs(index, details_markdown(session, index), gr.update(value=index),
                         gr.update(value=index))
