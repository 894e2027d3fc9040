"""The Embedding tab: CLIP image vs text before, GPUA-mapped VFM vs text after, and the
modality gap. The 2-D projections and the GPUA map are memoised in the session record.

The maps are linked to the gallery (``demo.linking``): every image point carries its index, a
search or a lasso selection (``subset``) is drawn as a Plotly selection, and the image picked in
the gallery or on a map is ringed.
"""

from __future__ import annotations

import base64
import html
import io
import time
from typing import Any, NamedTuple

import gradio as gr
import torch
from PIL import Image

from core.methods import gpua_inputs, run_method
from core.metrics import mean_assigned_cosine, modality_gap
from demo import plots
from demo.maps import HOVER_THUMBS_MAX
from demo.predictions import compare_method, md_cell, subset_indices, true_labels
from demo.state import Session, need_session, user_errors

PROJECTIONS = (("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap"))
# No fixed promise of a time: t-SNE and UMAP grow with the images and the server's load; the
# note under the maps says what they took (measured).
PROJECTION_INFO = ("PCA is instant; t-SNE and UMAP take longer, more with more images (the note "
                   "under the maps gives the time they took).")
TRUE_CLASS = "true class"
# Colour modes: radio value -> label. Right / wrong and prediction use the map's method.
COLOR_MODES = {TRUE_CLASS: "true class", "prediction": "prediction", "correctness":
               "right / wrong", "disagreement": "methods disagree"}
NEEDS_LABELS = (TRUE_CLASS, "correctness")
RIGHT_WRONG = {"right": "#2a9c3a", "wrong": "#d12b2b"}  # unlabelled images are gray "other"
# Number of different top-1 answers among the methods -> colour (agreement first).
DISAGREE_COLORS = ("#1f6fb4", "#f07d14", "#d12b2b", "#8a5cc2", "#222222")
HOVER_THUMB_SIDE = 96  # pixels; the hover thumbnail's longer side


def mapped_features(session: Session) -> torch.Tensor:
    """GPUA-mapped VFM features (n, d_t) of the session (fits GPUA once if it was not run)."""
    key = ("mapped", session.settings.gpua)  # the frozen GPUASettings: what the map depends on
    if key not in session.memo:
        res = session.results.get("gpua")
        if res is None:
            res = run_method("gpua", session.extraction.features, session.settings)
        z = gpua_inputs(session.extraction.features, session.settings.gpua)
        session.memo[key] = res.details.transform(z)
    return session.memo[key]


def _projection(session: Session, which: str, method: str):
    feats = session.extraction.features
    key = ("xy", which, method) if which == "before" else (
        "xy", which, method, session.settings.gpua)
    if key not in session.memo:
        image = feats.vlm_image if which == "before" else mapped_features(session)
        stacked = torch.cat([torch.nn.functional.normalize(image, dim=1),
                             torch.nn.functional.normalize(feats.text, dim=1)])
        start = time.perf_counter()
        xy = plots.project_2d(stacked, method=method)
        session.memo[key] = (xy, time.perf_counter() - start)  # the time: for the note
    xy, seconds = session.memo[key]
    n = feats.n_images
    return xy[:n], xy[n:], seconds


def is_drawn(session, projection: str) -> bool:
    """Whether this record's maps were drawn with ``projection`` (redraws are then cheap)."""
    return isinstance(session, Session) and ("xy", "before", projection) in session.memo


def color_choices(session: Session) -> list[tuple[str, str]]:
    """The colour modes this record supports (truth and right / wrong need labels)."""
    return [(label, mode) for mode, label in COLOR_MODES.items()
            if session.has_labels or mode not in NEEDS_LABELS]


def method_choices(session: Session) -> list[tuple[str, str]]:
    """The methods a map can be coloured by (every method of the record)."""
    return [(session.title(m), m) for m in session.methods]


def image_groups(session: Session, mode: str, method: str):
    """(group label per image, {group: colour} or None for class colours, words for the title).

    ``mode``: a key of ``COLOR_MODES``; ``method``: whose prediction / correctness is shown.
    """
    names = session.class_names
    truth = true_labels(session)
    if mode == TRUE_CLASS and session.has_labels:
        return [names[t] if t >= 0 else "no label" for t in truth], None, "true class"
    pred = session.results[method].pred
    title = session.title(method)
    if mode == "correctness" and session.has_labels:
        groups = ["no label" if t < 0 else "right" if p == t else "wrong"
                  for p, t in zip(pred.tolist(), truth)]
        return groups, RIGHT_WRONG, f"{title} right / wrong"
    if mode == "disagreement":
        preds = torch.stack([session.results[m].pred for m in session.methods])  # (M, n)
        answers = (preds.sort(dim=0).values.diff(dim=0) != 0).sum(dim=0) + 1  # (n,) distinct
        m = len(session.methods)
        labels = [f"all {m} agree"] + [f"{a} different answers" for a in range(2, m + 1)]
        colors = dict(zip(labels, DISAGREE_COLORS))
        return ([labels[a - 1] for a in answers.tolist()], colors,
                f"agreement of the {m} methods")
    return [names[p] for p in pred.tolist()], None, f"{title} prediction"


def hover_texts(session: Session) -> list[str]:
    """Per image: file name, true class and every method's top-1 with its probability
    (memoised under a "captions" key, which a re-solve drops)."""
    key = ("captions", "map-hover")
    if key not in session.memo:
        session.memo[key] = _hover_texts(session)
    return session.memo[key]


def _hover_texts(session: Session) -> list[str]:
    names = session.class_names
    truth = true_labels(session)
    tops = {}
    for m in session.methods:
        res = session.results[m]
        conf = res.probs.gather(1, res.pred[:, None])[:, 0]
        tops[m] = (res.pred.tolist(), conf.tolist())
    out = []
    for i, file in enumerate(session.names):
        lines = [f"<b>{html.escape(file)}</b>"]
        if truth[i] >= 0:
            lines.append(f"true: {html.escape(names[truth[i]])}")
        for m in session.methods:
            p, c = tops[m][0][i], tops[m][1][i]
            mark = "" if truth[i] < 0 else " ✓" if p == truth[i] else " ✗"
            lines.append(f"{session.title(m)}: {html.escape(names[p])} {c:.0%}{mark}")
        out.append("<br>".join(lines))
    return out


def hover_thumbs(session: Session) -> list[str] | None:
    """Small JPEG data URIs of every image for the hover, or None above ``HOVER_THUMBS_MAX``
    images (they travel inside each map's JSON: ~3 KB apiece)."""
    n = len(session.names)
    if n > HOVER_THUMBS_MAX:
        return None
    if ("hover_thumbs",) not in session.memo:
        uris = []
        for path in session.thumbs:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((HOVER_THUMB_SIDE, HOVER_THUMB_SIDE))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=75)
            uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
        session.memo[("hover_thumbs",)] = uris
    return session.memo[("hover_thumbs",)]


def embedding_views(session: Session, projection: str, color_by: str, highlight: int | None,
                    method: str | None = None, subset=None):
    """(before fig, after fig, gap fig, note): CLIP image vs text, GPUA-mapped VFM vs text.

    ``color_by``: a key of ``COLOR_MODES``; ``method``: the method a prediction or right / wrong
    colouring shows (default: the first one compared with CLIP); ``subset``: the gallery subset
    (``demo.predictions``), drawn as a selection.
    """
    feats = session.extraction.features
    if feats.n_images + feats.n_classes < 3:
        raise ValueError("The embedding map needs at least 3 points (images + classes).")
    method = method if method in session.results else compare_method(session, None)
    mode = color_by if color_by in COLOR_MODES else "prediction"
    groups, group_colors, colour_words = image_groups(session, mode, method)
    hover = hover_texts(session)
    thumbs = hover_thumbs(session)
    chosen = subset_indices(session, subset)
    mapped = mapped_features(session)
    gap_before = modality_gap(feats.vlm_image, feats.text)
    gap_after = modality_gap(mapped, feats.text)
    if highlight is not None and not 0 <= int(highlight) < feats.n_images:
        highlight = None
    figs, seconds = [], 0.0
    for which, title, gaps in (("before", "Before: CLIP image vs text", f"{gap_before:.2f}"),
                               ("after", "After: GPUA-mapped VFM vs text",
                                f"{gap_before:.2f} -> {gap_after:.2f}")):
        img_xy, txt_xy, took = _projection(session, which, projection)
        seconds += took
        fig = plots.embedding_figure(
            img_xy, txt_xy, image_color_labels=groups, class_names=session.class_names,
            hover=hover, title=title,
            subtitle=f"{projection.upper()} · gap {gaps} · {colour_words}",
            highlight=highlight, height=500, group_colors=group_colors, selected=chosen,
            thumbs=thumbs, uirevision=f"{session.run_id}:{projection}")
        figs.append(fig)
    gap_fig = plots.modality_gap_figure({"CLIP image vs text": gap_before,
                                         "GPUA-mapped VFM vs text": gap_after}, height=240)
    assign = session.results[method].pred
    cos_before = mean_assigned_cosine(feats.vlm_image, feats.text, assign)
    cos_after = mean_assigned_cosine(mapped, feats.text, assign)
    note = (f"Circles are images, stars the class text prototypes. **Click** a point to open that "
            "image in the gallery; **drag** to lasso images and filter the gallery to them "
            "(double-click the map to clear); hover for the file, its true class and every "
            f"method's answer{' with a thumbnail' if thumbs else ''}. Mean cosine of each image "
            f"to its {session.title(method)} class prototype: {cos_before:.3f} before, "
            f"{cos_after:.3f} after GPUA's map. The {projection.upper()} projections took "
            f"{seconds:.1f} s (once per Run; redraws reuse them).")
    if highlight is not None:
        note += f" The ringed point is **{md_cell(session.names[int(highlight)])}**."
    return figs[0], figs[1], gap_fig, note


class EmbeddingOutputs(NamedTuple):
    embed_before: Any
    embed_after: Any
    gap_plot: Any
    embed_note: str
    map_method: Any
    map_search: Any  # a Run clears the search and the map selection (``demo.linking``)
    subset_clear: Any


NOT_DRAWN = ("Press **Draw maps** after a Run. Then click a point to open its image in the "
             "gallery, lasso points to filter the gallery, and search by file or class.")


def blank(session: Session | None = None) -> EmbeddingOutputs:
    """What the tab shows before the maps of the current Run are drawn (``session``: the new
    record, whose methods the map's method picker lists)."""
    pick = gr.skip() if session is None else gr.update(
        choices=method_choices(session), value=compare_method(session, None))
    return EmbeddingOutputs(None, None, None, NOT_DRAWN, pick, "", gr.update(visible=False))


@user_errors
def embedding(session, projection="pca", color_by=TRUE_CLASS, selected=None, method=None,
              subset=None) -> EmbeddingOutputs:
    """Before / after embedding maps and the modality gap (projection memoised per session)."""
    session = need_session(session)
    return EmbeddingOutputs(*embedding_views(session, projection, color_by, selected, method,
                                             subset), gr.skip(), gr.skip(), gr.skip())


@user_errors
def embedding_highlight(session, projection="pca", color_by=TRUE_CLASS, selected=None,
                        method=None, subset=None) -> EmbeddingOutputs:
    """Gallery selection changed: redraw the maps only if their projection is already computed."""
    if not is_drawn(session, projection):
        return EmbeddingOutputs(*([gr.skip()] * len(EmbeddingOutputs._fields)))
    return embedding(session, projection, color_by, selected, method, subset)

