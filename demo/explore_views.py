"""What the exploration tabs show: the embedding map, segmentation overlays, LaZSL explanations.

Pure functions of the session and the view controls, like ``demo.views`` (predictions, summary,
metrics, dynamics), whose shared helpers they use; the heavy derived data (2-D projections, the
embedding-map GPUA, segmentations) is memoised in ``Session.memo``.
"""

from __future__ import annotations

import html

import torch
from PIL import Image

from core.data import decode_image
from core.methods import explain, gpua_inputs, lazsl_scores, run_method
from core.metrics import mean_assigned_cosine, modality_gap
from core.pipeline import NOT_SEEN, UNLABELED
from demo import plots
from demo.overlays import (
    crop_thumbnails,
    crop_view,
    legend_html,
    segmentation_overlay,
    side_by_side,
    topk,
)
from demo.session import VIEW_SIDE, Session
from demo.views import compare_method, md_cell, true_labels

PROJECTIONS = (("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap"))
PROJECTION_INFO = ("PCA is instant; t-SNE takes a few seconds per 1,000 images; UMAP ~10 s "
                   "the first time (it compiles), then a few seconds.")
TRUE_CLASS = "true class"


# ----------------------------------------------------------------------------- embedding map


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


# ----------------------------------------------------------------------------- segmentation


def segmentation_view(session: Session, index: int, visible: list[str] | None,
                      threshold: float, alpha: float = 0.5):
    """(side-by-side overlay image, legend HTML) from a memoised segmentation of ``index``."""
    seg = session.memo.get(("seg", int(index)))
    if seg is None:
        return None, "<em>Press <b>Segment</b> to compute this image.</em>"
    names = session.class_names
    shown = None if visible is None else {names.index(v) for v in visible if v in names}
    overlays, present = [], []
    not_seen = False
    for probs, seen in ((seg.clip_probs[0], seg.clip_seen[0]),
                        (seg.gpua_probs[0], seg.gpua_seen[0])):
        top, labels = probs.max(dim=0)  # (H, W)
        if threshold and threshold > 0:
            labels = labels.masked_fill(top < float(threshold), UNLABELED)
        labels = labels.masked_fill(~seen, NOT_SEEN)  # outside the model's crop
        not_seen |= not bool(seen.all())
        overlay = segmentation_overlay(seg.images[0], labels, names, alpha=alpha, visible=shown)
        overlays.append(_enlarged(overlay, Image.NEAREST))
        counts = torch.bincount(labels[labels >= 0].flatten(), minlength=len(names))
        present += [c for c in torch.argsort(counts, descending=True).tolist() if counts[c] > 0]
    image = side_by_side(overlays, ["Dense CLIP (MaskCLIP)", "GPUA-aligned VFM patches"])
    legend = legend_html([c for c in present if shown is None or c in shown], names,
                         not_seen=not_seen)
    return image, legend


# ----------------------------------------------------------------------------- LaZSL


MIN_VIEW_SIDE = 480  # small images are enlarged for display so labels and overlays stay legible


def _enlarged(image, resample):
    side = max(image.size)
    if side >= MIN_VIEW_SIDE:
        return image
    f = MIN_VIEW_SIDE / side
    return image.resize((round(image.width * f), round(image.height * f)), resample)


def _short(sentence: str, class_name: str) -> str:
    """"cat, which has pointed ears" -> "has pointed ears"."""
    prefix = f"{class_name}, "
    text = sentence[len(prefix):] if sentence.startswith(prefix) else sentence
    return text[len("which "):] if text.startswith("which ") else text


def lazsl_view(session: Session, index: int, class_name: str | None, *, top_k: int = 4):
    """(crop view, crop gallery items, class scores {name: prob}, table markdown) for one image."""
    ex = session.extraction
    feats = ex.features
    if feats.crops is None or ex.crop_boxes is None:
        raise ValueError("LaZSL needs crops: tick LaZSL (crops per image > 0 in Advanced) and "
                         "Run again.")
    i = int(index)
    names = session.class_names
    s = session.settings
    res = lazsl_scores(feats.crops[i: i + 1, 0], feats.crops[i: i + 1, 1:], feats.attributes,
                       feats.attribute_mask, theta=s.lazsl.theta, eps=s.lazsl.eps,
                       return_plans=True)
    k = names.index(class_name) if class_name in names else int(res.pred[0])
    item = ex.items[i]
    view = _enlarged(decode_image(item, max_side=VIEW_SIDE), Image.BICUBIC)
    scale = torch.tensor([view.width / item.size[0], view.height / item.size[1]] * 2)
    boxes = ex.crop_boxes[i] * scale  # (m, 4) in pixels of the view
    slots = [j for j in ex.attribute_index[k].tolist() if j >= 0]
    sentences = [ex.attribute_sentences[j] for j in slots]
    rows = explain(res, 0, k, boxes, sentences, top_k=top_k)
    where = {tuple(int(v) for v in b.tolist()): m for m, b in enumerate(boxes)}
    crops = [where[box] for box, _, _ in rows]
    labels = [_short(sent, names[k]) for _, sent, _ in rows]
    picture = crop_view(view, boxes, highlight=crops, kept=res.kept[0],
                        labels=[f"{r + 1}: {lab}" for r, lab in enumerate(labels)])
    thumbs = crop_thumbnails(view, boxes, crops, size=128)
    gallery = [(t, f"{r + 1}: {lab} ({mass:.1%} of the plan)") for r, (t, lab, (_, _, mass)) in
               enumerate(zip(thumbs, labels, rows))]
    probs = torch.softmax(s.clip.temperature * res.scores[0], dim=0)
    scores = {names[c]: float(probs[c]) for c in range(len(names))}
    kept = int(res.kept[0].sum())
    table = [f"**{md_cell(item.name)}**: crops matched to the attributes of "
             f"**{md_cell(names[k])}** "
             f"({'LaZSL prediction' if k == int(res.pred[0]) else 'chosen class'}); {kept} of "
             f"{res.kept.shape[1]} crops kept by vision selection.", "",
             "| # | crop | attribute it is transported to | plan mass |", "|---|---|---|---|"]
    table += [f"| {r + 1} | {c} | {md_cell(lab)} | {mass:.1%} |" for r, (c, lab, (_, _, mass)) in
              enumerate(zip(crops, labels, rows))]
    return picture, gallery, scores, "\n".join(table)
