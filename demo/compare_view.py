"""The Compare tab: two of the session's last records side by side (layout, handler, wiring).

The records come from the session store (``demo.store.SessionStore.history``: the last
``core.config.APP_RUN_HISTORY``, one per Run and recipes; ``demo.history``); the comparison itself
is ``demo.compare``'s pure functions. Run A and run B default to the previous and the current
record, and follow a new record when one arrives (a Run, a recipe switch); a slider move updates
the current record in place and keeps the user's picks. Runs on different image sets get the
summary numbers and a plain sentence saying why nothing is compared image by image.

The picks (runs A and B, the method) live in a ``gr.State`` (``cmp_picks``), which the
refreshes read, and reach the dropdowns in a second step (:func:`show_picks`): a Gradio 6
dropdown given new choices and a new value in one update may keep showing, and send back, its
old value (seen in Chromium after a second Run), so choices go first and values after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from core.config import APP_RUN_HISTORY
from core.methods import METHOD_TITLES
from demo import compare
from demo.history import RunRecord
from demo.predictions import PAGE_SIZE
from demo.provenance import choices
from demo.state import Session, user_errors

LIST_ROWS = 200  # disagreements listed as a table (the CSV has all of them)
# The tab's tables on a phone: names and numbers on one line (the table scrolls sideways, as
# ``demo.ui``'s tables do), the settings' values wrapping at word boundaries.
CSS = """
#cmp-table td, #cmp-list td, #cmp-settings td:first-child {white-space: nowrap;}
#cmp-settings td {min-width: 11em;}
#cmp-settings td:first-child {min-width: 0;}
"""
EMPTY = ("Nothing to compare yet. Every Run is kept here (the last "
         f"{APP_RUN_HISTORY}, one per Run and recipe; moving a slider updates the current one): "
         "Run once, then Run again with other models or settings, or switch a recipe.")


class CompareOutputs(NamedTuple):
    cmp_a: Any
    cmp_b: Any
    cmp_method: Any
    cmp_picks: Any
    cmp_note: str
    cmp_table: str
    cmp_settings: str
    cmp_info: str
    cmp_gallery: Any
    cmp_list: str
    cmp_downloads: Any


def pick(history: tuple[RunRecord, ...], run_a, run_b, seen) -> tuple[str, str]:
    """The entries to show (ids as strings): the user's picks while they exist and no new record
    arrived since ``seen`` (the newest id last shown), else the previous and the newest."""
    ids = [str(r.id) for r in history]
    newest = ids[-1]
    if str(seen) == newest and str(run_a) in ids and str(run_b) in ids:
        return str(run_a), str(run_b)
    return (ids[-2] if len(ids) > 1 else newest), newest


def thumbnails(a: RunRecord, history: tuple[RunRecord, ...]) -> list[str] | None:
    """A thumbnail per image of ``a``, from any record of the same images whose work folder
    still exists (an older Run's folder is removed by the next Run); None if there is none."""
    for r in (a, *reversed(history)):
        if not r.thumbs or not os.path.exists(r.thumbs[0]):
            continue
        order = compare.align(a, r)
        if order is not None:
            return [r.thumbs[j] for j in order]
    return None


def _blank(note: str, a=None, b=None, picks=None) -> CompareOutputs:
    none = gr.update(choices=[])
    return CompareOutputs(
        cmp_a=a or none, cmp_b=b or none, cmp_method=none, cmp_picks=picks, cmp_note=note,
        cmp_table="", cmp_settings="", cmp_info="", cmp_gallery=[], cmp_list="",
        cmp_downloads=None)


@user_errors
def compare_runs(session, run_a=None, run_b=None, method=None, show="differ", seen=None, *,
                 history: tuple[RunRecord, ...] = ()) -> CompareOutputs:
    """The Compare tab for records ``run_a`` and ``run_b`` (entry ids) of ``history`` (the
    session's records, oldest first), ``method``'s disagreements narrowed by ``show``
    (``demo.compare.SHOW``; None: the first fused method both ran); ``seen``: the newest id the
    tab showed last (see :func:`pick`). ``cmp_picks`` holds what is shown, for the next refresh
    and for :func:`show_picks` (the dropdowns get their choices here, their values there)."""
    history = tuple(history)
    if not history:
        return _blank(EMPTY)
    run_a, run_b = pick(history, run_a, run_b, seen)
    by_id = {str(r.id): r for r in history}
    live = [str(r.id) for r in history if isinstance(session, Session)
            and r.run == session.workdir and r.settings == session.settings]
    entries = [(r.label + (" (current)" if str(r.id) in live else ""), str(r.id))
               for r in reversed(history)]
    dropdowns = dict(a=gr.update(choices=entries), b=gr.update(choices=entries))
    newest = str(history[-1].id)
    picks = {"a": run_a, "b": run_b, "method": method, "seen": newest, "shown": None}
    if len(history) == 1:
        return _blank("Only one run so far (#" + newest + "). " + EMPTY, **dropdowns,
                      picks=picks)
    if run_a == run_b:
        return _blank("Run A and run B are the same record: pick another one.", **dropdowns,
                      picks=picks)
    a, b = by_id[run_a], by_id[run_b]
    order = compare.align(a, b)
    rows = compare.method_rows(a, b, order)
    notes = [f"**A**: {a.label}", f"**B**: {b.label}"]
    if order is None:
        notes.append(f"**Different image sets** (A: {a.n_images} images, B: {b.n_images}): they "
                     "cannot be compared image by image, only by the summary numbers below.")
    if sorted(a.class_names) != sorted(b.class_names):
        notes.append("The class lists differ: predictions are compared by class name.")
    both = compare.common_methods(a, b)
    if method not in both:  # not the user's pick (or no longer possible): a default, not kept
        picks["method"] = None
        method = next((m for m in both if m != "clip"), both[0] if both else None)
    picks["shown"] = method
    out = dict(cmp_a=dropdowns["a"], cmp_b=dropdowns["b"], cmp_picks=picks,
               cmp_note="<br>".join(notes), cmp_table=compare.accuracy_markdown(rows),
               cmp_settings=compare.settings_markdown(a, b),
               cmp_method=gr.update(choices=[(METHOD_TITLES.get(m, m), m) for m in both]))
    out.update(_disagreement_views(a, b, order, method, show, history))
    out["cmp_downloads"] = (compare.write_csv(Path(session.workdir) / "compare", a, b, rows,
                                              order) if isinstance(session, Session) else None)
    return CompareOutputs(**out)


def _disagreement_views(a, b, order, method, show, history) -> dict:
    """The info line, gallery and table of the images where A and B disagree."""
    if order is None or method is None:
        why = ("no method was run by both" if method is None else "different image sets")
        return dict(cmp_info=f"No image-by-image comparison: {why}.", cmp_gallery=[],
                    cmp_list="")
    show = show if show in compare.SHOW else "differ"
    items = compare.disagreements(a, b, method, order, show)
    title = METHOD_TITLES.get(method, method)
    info = f"**{len(items)}** of {a.n_images} images where {title} disagrees between A and B"
    if show != "differ":
        info += f" and {compare.SHOW[show]}"
    if show != "differ" and not any(t is not None for t in compare.truths(a, b, order)):
        info = ("This filter needs labels: put each class's images in a folder named after it "
                "inside the zip, or upload a labels CSV")
    thumbs = thumbnails(a, history)
    gallery = []
    if thumbs is not None:
        gallery = [(thumbs[d.index], compare.caption(d)) for d in items[:PAGE_SIZE]]
        if len(items) > PAGE_SIZE:
            info += f"; the first {PAGE_SIZE} shown"
    elif items:
        info += "; no thumbnails (this run's folder was replaced by a later Run)"
    return dict(cmp_info=info + ".", cmp_gallery=gallery,
                cmp_list=compare.list_markdown(items, LIST_ROWS))


# ----------------------------------------------------------------------------- layout, wiring


def layout(c: dict) -> None:
    """The Compare tab (call inside ``gr.Tabs``); its components go into ``c``."""
    with gr.Tab("Compare", id="compare") as c["cmp_tab"]:
        c["cmp_picks"] = gr.State(None)  # what compare_runs showed: runs, method, newest id
        with gr.Row():
            c["cmp_a"] = gr.Dropdown([], label="Run A", elem_id="cmp-a", scale=1, min_width=300)
            c["cmp_b"] = gr.Dropdown([], label="Run B", elem_id="cmp-b", scale=1, min_width=300)
        c["cmp_note"] = gr.Markdown(EMPTY, elem_id="cmp-note")
        c["cmp_table"] = gr.Markdown(elem_id="cmp-table")
        with gr.Accordion("What produced A and B", open=True):
            c["cmp_settings"] = gr.Markdown(elem_id="cmp-settings")
        with gr.Row():
            c["cmp_method"] = gr.Dropdown([], label="Method", elem_id="cmp-method", scale=1)
            c["cmp_show"] = gr.Radio(choices(compare.SHOW), value="differ", label="Show",
                                     elem_id="cmp-show", scale=2)
        c["cmp_info"] = gr.Markdown(elem_id="cmp-info")
        c["cmp_gallery"] = gr.Gallery(label="Images where A and B disagree", columns=5,
                                      height=420, object_fit="contain", allow_preview=True,
                                      elem_id="cmp-gallery", elem_classes="short-captions")
        c["cmp_list"] = gr.Markdown(elem_id="cmp-list")
        c["cmp_downloads"] = gr.File(label="Download the comparison (CSV)",
                                     file_count="multiple", interactive=False)


def _picked(picks) -> dict:
    return picks if isinstance(picks, dict) else {}


def refresh(session, picks=None, show="differ", *, history=()) -> CompareOutputs:
    """The tab opened, the filter changed, or a record was made: the kept picks."""
    p = _picked(picks)
    return compare_runs(session, p.get("a"), p.get("b"), p.get("method"), show, p.get("seen"),
                        history=history)


def pick_runs(session, run_a, run_b, picks=None, show="differ", *, history=()) -> CompareOutputs:
    """The user picked run A or run B (the dropdowns' values are theirs)."""
    seen = str(history[-1].id) if history else None
    return compare_runs(session, run_a, run_b, _picked(picks).get("method"), show, seen,
                        history=history)


def pick_method(session, method, picks=None, show="differ", *, history=()) -> CompareOutputs:
    """The user picked the method whose disagreements are listed."""
    p = _picked(picks)
    return compare_runs(session, p.get("a"), p.get("b"), method, show, p.get("seen"),
                        history=history)


class PickValues(NamedTuple):
    cmp_a: Any
    cmp_b: Any
    cmp_method: Any


def show_picks(picks) -> PickValues:
    """The dropdowns' values, once their choices are there (see the module docstring)."""
    p = _picked(picks)
    return PickValues(gr.update(value=p.get("a")), gr.update(value=p.get("b")),
                      gr.update(value=p.get("shown")))


def wire(c: dict, keep, after=()) -> None:
    """Refresh the tab when it is opened, the filter or a pick changes, and after each of the
    ``after`` events (a Run, a re-solve: they make or update records); every refresh then shows
    its picks in the dropdowns. ``keep``: ``demo.store.stored`` bound to the app's store."""
    outputs = [c[f] for f in CompareOutputs._fields]
    state = [c["cmp_picks"], c["cmp_show"]]
    values = dict(fn=show_picks, inputs=c["cmp_picks"],
                  outputs=[c[f] for f in PickValues._fields], queue=False,
                  api_visibility="private")
    options = dict(concurrency_id="solve", trigger_mode="always_last")
    gr.on([c["cmp_tab"].select, c["cmp_show"].input], keep(refresh), [c["session"], *state],
          outputs, api_name="compare", **options).then(**values)
    gr.on([c["cmp_a"].input, c["cmp_b"].input], keep(pick_runs),
          [c["session"], c["cmp_a"], c["cmp_b"], *state], outputs, api_visibility="private",
          **options).then(**values)
    c["cmp_method"].input(keep(pick_method), [c["session"], c["cmp_method"], *state], outputs,
                          api_visibility="private", **options).then(**values)
    for event in after:
        event.then(keep(refresh), [c["session"], *state], outputs, api_visibility="private",
                   concurrency_id="solve").then(**values)
