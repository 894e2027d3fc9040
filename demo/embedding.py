"""The Embedding tab: CLIP image vs text before, GPUA-mapped VFM vs text after, and the
modality gap. The 2-D projections and the GPUA map are memoised in the session record."""

from __future__ import annotations

import html
from typing import Any, NamedTuple

import gradio as gr
import torch

from core.methods import gpua_inputs, run_method
from core.metrics import mean_assigned_cosine, modality_gap
from demo import plots
from demo.overlays import topk
from demo.predictions import compare_method, md_cell, true_labels
from demo.state import Session, need_session, user_errors

PROJECTIONS = (("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap"))
PROJECTION_INFO = ("PCA is instant; t-SNE takes a few seconds per 1,000 images; UMAP ~10 s "
                   "the first time (it compiles), then a few seconds.")
TRUE_CLASS = "true class"


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
        session.memo[key] = plots.project_2d(stacked, method=method)
    xy = session.memo[key]
    n = feats.n_images
    return xy[:n], xy[n:]


def color_choices(session: Session) -> list[tuple[str, str]]:
    out = [(f"predicted by {session.title(m)}", m) for m in session.methods]
    if session.has_labels:
        out.insert(0, ("true class", TRUE_CLASS))
    return out


def embedding_views(session: Session, projection: str, color_by: str, highlight: int | None):
    """(before fig, after fig, gap fig, note): CLIP image vs text, GPUA-mapped VFM vs text."""
    feats = session.extraction.features
    if feats.n_images + feats.n_classes < 3:
        raise ValueError("The embedding map needs at least 3 points (images + classes).")
    names = session.class_names
    if color_by == TRUE_CLASS and session.has_labels:
        color_labels = [names[t] if t >= 0 else "unknown" for t in true_labels(session)]
        hover_method = compare_method(session, None)
    else:
        method = color_by if color_by in session.results else "clip"
        color_labels = [names[p] for p in session.results[method].pred.tolist()]
        hover_method = method
    tops = topk(session.results[hover_method].probs, names, k=3)
    truth = true_labels(session)
    hover = []
    for i, file in enumerate(session.names):
        top = ", ".join(f"{html.escape(c)} {p:.0%}" for c, p in tops[i])
        line = f"{html.escape(file)}<br>{session.title(hover_method)}: {top}"
        if truth[i] >= 0:
            line += f"<br>true: {html.escape(names[truth[i]])}"
        hover.append(line)
    mapped = mapped_features(session)
    gap_before = modality_gap(feats.vlm_image, feats.text)
    gap_after = modality_gap(mapped, feats.text)
    if highlight is not None and not 0 <= int(highlight) < feats.n_images:
        highlight = None
    figs = []
    for which, title in (("before", f"Before: CLIP image vs text | gap {gap_before:.2f}"),
                         ("after", f"After: GPUA-mapped VFM vs text | gap {gap_before:.2f} -> "
                                   f"{gap_after:.2f}")):
        img_xy, txt_xy = _projection(session, which, projection)
        fig = plots.embedding_figure(img_xy, txt_xy, image_color_labels=color_labels,
                                     class_names=names, hover=hover, title=title,
                                     highlight=highlight, height=480)
        axis = projection.upper()
        fig.update_layout(xaxis_title=f"{axis} 1", yaxis_title=f"{axis} 2")
        figs.append(fig)
    gap_fig = plots.modality_gap_figure({"CLIP image vs text": gap_before,
                                         "GPUA-mapped VFM vs text": gap_after}, height=240)
    assign = session.results[hover_method].pred
    cos_before = mean_assigned_cosine(feats.vlm_image, feats.text, assign)
    cos_after = mean_assigned_cosine(mapped, feats.text, assign)
    note = (f"Circles are images, stars the class text prototypes. Mean cosine of each image to "
            f"its predicted class prototype: {cos_before:.3f} before, {cos_after:.3f} after "
            "GPUA's map.")
    if highlight is not None:
        note += f" The ringed point is **{md_cell(session.names[int(highlight)])}**."
    return figs[0], figs[1], gap_fig, note


class EmbeddingOutputs(NamedTuple):
    embed_before: Any
    embed_after: Any
    gap_plot: Any
    embed_note: str


NOT_DRAWN = ("Press **Draw maps** after a Run. Hover a point for its file and top-3; the image "
             "clicked in the gallery is ringed.")


def blank() -> EmbeddingOutputs:
    """What the tab shows before the maps of the current Run are drawn."""
    return EmbeddingOutputs(None, None, None, NOT_DRAWN)


@user_errors
def embedding(session, projection="pca", color_by="clip", selected=None) -> EmbeddingOutputs:
    """Before / after embedding maps and the modality gap (projection memoised per session)."""
    session = need_session(session)
    return EmbeddingOutputs(*embedding_views(session, projection, color_by, selected))


@user_errors
def embedding_highlight(session, projection="pca", color_by="clip", selected=None):
    """Gallery selection changed: redraw the maps only if their projection is already computed."""
    if not isinstance(session, Session) or ("xy", "before", projection) not in session.memo:
        return EmbeddingOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return EmbeddingOutputs(*embedding_views(session, projection, color_by, selected))
