"""What each tab shows, built from a Session: captions, galleries, figures, tables.

Pure functions of the session and the view controls (no model, no gradio events); the heavy
derived data (2-D projections, the embedding-map GPUA) is memoised in ``Session.memo``.
"""

from __future__ import annotations

import html
import math

import torch
from PIL import Image

from core.data import decode_image
from core.lazsl import explain, lazsl_scores
from core.methods import gpua_inputs, run_method
from core.metrics import confusion_matrix, mean_assigned_cosine, modality_gap, per_class_accuracy
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

PAGE_SIZE = 60  # gallery images per page
FILTERS = ("all", "changed", "wrong", "fixed", "broken")
FILTER_HELP = {
    "all": "every image",
    "changed": "the method's prediction differs from CLIP's",
    "wrong": "the method is wrong (needs labels)",
    "fixed": "CLIP was wrong and the method is right (needs labels)",
    "broken": "CLIP was right and the method is wrong (needs labels)",
}
MISTAKES_SHOWN = 24
PROJECTIONS = (("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap"))
PROJECTION_INFO = ("PCA is instant; t-SNE takes a few seconds per 1,000 images; UMAP ~10 s "
                   "the first time (it compiles), then a few seconds.")
TRUE_CLASS = "true class"


def _md(text) -> str:
    """Escape user text (file and class names) for a Markdown table cell."""
    return html.escape(str(text)).replace("|", "&#124;").replace("*", "&#42;").replace(
        "_", "&#95;")


def _top1(session: Session, method: str) -> tuple[list[int], list[float]]:
    res = session.results[method]
    conf = res.probs.gather(1, res.pred[:, None])[:, 0]
    return res.pred.tolist(), conf.tolist()


def _true(session: Session) -> list[int]:
    labels = session.labels
    return [-1] * len(session.names) if labels is None else labels.tolist()


def compare_method(session: Session, wanted: str | None) -> str:
    """The method compared with CLIP in captions and filters (the first non-CLIP by default)."""
    others = [m for m in session.methods if m != "clip"]
    if wanted in session.results:
        return wanted
    return others[0] if others else "clip"


# ----------------------------------------------------------------------------- predictions


def captions(session: Session, compare: str | None = None) -> list[str]:
    """One line per image, the visible start first: ``"✓ cat 71% ← CLIP dog"`` for the compared
    method (``← CLIP ...`` only when it changed CLIP's answer), then every method's top-1 marked
    ✓/✗ and (changed), the true class and the file name."""
    compare = compare_method(session, compare)
    names = session.class_names
    truth = _true(session)
    tops = {m: _top1(session, m) for m in session.methods}
    base_pred = tops["clip"][0]
    out = []
    for i, file in enumerate(session.names):
        pred, conf = tops[compare][0][i], tops[compare][1][i]
        head = f"{names[pred]} {conf:.0%}"
        if truth[i] >= 0:
            head = ("✓ " if pred == truth[i] else "✗ ") + head
        if pred != base_pred[i]:
            head += f" ← CLIP {names[base_pred[i]]}"
        parts = [head]
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
        out.append(" | ".join(parts))
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


def gallery_page(session: Session, compare: str, mode: str, page: int):
    """(gallery items, info markdown, number of pages, page shown) for one filter and page."""
    idx = filter_indices(session, compare, mode)
    pages = max(1, math.ceil(len(idx) / PAGE_SIZE))
    page = min(max(1, int(page or 1)), pages)
    shown = idx[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    caps = session.memo.get(("captions", compare))
    if caps is None:
        caps = session.memo[("captions", compare)] = captions(session, compare)
    items = [(session.thumbs[i], caps[i]) for i in shown]
    total = len(session.names)
    what = f"**{len(idx)}** of {total} images ({FILTER_HELP[mode]}"
    what += f", {session.title(compare)} vs CLIP)" if mode != "all" else ")"
    if mode in ("wrong", "fixed", "broken") and not session.has_labels:
        what = ("This filter needs labels: put each class's images in a folder named after it "
                "inside the zip, or upload a labels CSV.")
    elif idx:
        what += f"; showing {(page - 1) * PAGE_SIZE + 1}-{(page - 1) * PAGE_SIZE + len(shown)}"
        if pages > 1:
            what += f" (page {page} of {pages})"
    return items, what + ". Click an image for its top-3 under every method.", pages, page, shown


def details_markdown(session: Session, index: int | None) -> str:
    """Top-3 of every method for one image, side by side."""
    if index is None or not 0 <= int(index) < len(session.names):
        return "Click an image in the gallery to see its top-3 under every method."
    i = int(index)
    names = session.class_names
    truth = _true(session)[i]
    head = f"**{_md(session.names[i])}**"
    if truth >= 0:
        head += f" - true class: **{_md(names[truth])}**"
    tops = {m: topk(session.results[m].probs[i: i + 1], names, k=3)[0] for m in session.methods}
    rows = ["| rank | " + " | ".join(session.title(m) for m in session.methods) + " |",
            "|---|" + "---|" * len(session.methods)]
    for r in range(min(3, len(names))):
        cells = []
        for m in session.methods:
            cls, p = tops[m][r]
            mark = " ✓" if truth >= 0 and r == 0 and cls == names[truth] else ""
            cells.append(f"{_md(cls)} {p:.0%}{mark}")
        rows.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(rows)


def settings_text(method: str, s) -> str:
    """The hyper-parameters that produced one method's column, so a summary says what it shows."""
    if method == "otfusion":
        return (f"λ {s.otfusion_lam:g}, ε {s.otfusion_eps:g}, {s.otfusion_iter} iter, "
                f"{s.otfusion_variant}")
    if method == "gpua":
        return (f"λ {s.gpua_lam:g}, ε {s.gpua_eps:g}, {s.gpua_targets} targets, "
                f"THS {s.gpua_ths_steps} steps")
    if method == "lazsl":
        return f"θ {s.lazsl_theta:g}, ε {s.lazsl_eps:g}"
    return f"τ {s.temperature:g}"


def summary_markdown(session: Session) -> str:
    """Accuracy, changes vs CLIP and solve time per method."""
    ex = session.extraction
    base = session.results["clip"].pred
    known = int((session.labels >= 0).sum()) if session.labels is not None else 0
    rows = ["| method | accuracy | changed vs CLIP | settings | solve time |",
            "|---|---|---|---|---|"]
    for m in session.methods:
        r = session.results[m]
        acc = "-" if r.accuracy is None else f"{r.accuracy:.1%}"
        changed = "-" if m == "clip" else f"{int((r.pred != base).sum())}"
        rows.append(f"| {session.title(m)} | {acc} | {changed} | "
                    f"{settings_text(m, session.settings)} | {r.seconds * 1000:.0f} ms |")
    vfm = ex.settings.vfm or ex.settings.vlm
    label_note = (f"{known} labelled" if known else "no labels (accuracy needs folder names or a "
                  "labels CSV)")
    return (f"{len(ex.items)} images ({label_note}), {len(ex.class_names)} classes, "
            f"VLM `{ex.settings.vlm}`, VFM `{vfm}`.\n\n" + "\n".join(rows))


# ----------------------------------------------------------------------------- metrics


def metrics_views(session: Session, compare: str):
    """(note, accuracy fig, per-class fig, confusion fig, mistakes gallery items)."""
    if not session.has_labels:
        note = ("**No labels, so no accuracy.** Put each class's images in a folder named after "
                "the class inside the zip (e.g. `cat/001.jpg`), or upload a labels CSV "
                "(`filename,label`), and Run again. The Predictions tab still compares methods.")
        return note, None, None, None, []
    labels = session.labels
    known = labels >= 0
    names = session.class_names
    k = len(names)
    acc = {session.title(m): session.results[m].accuracy for m in session.methods}
    per_class = {
        session.title(m): per_class_accuracy(session.results[m].pred[known], labels[known],
                                             k).tolist()
        for m in session.methods
    }
    res = session.results[compare]
    conf = confusion_matrix(res.pred[known], labels[known], k)
    title = session.title(compare)
    n_known = int(known.sum())
    note = (f"Accuracy over the {n_known} labelled image(s). The confusion matrix and the "
            f"mistakes below are for **{title}** (pick another method in the Predictions tab).")
    if n_known < len(labels):
        note += f" {len(labels) - n_known} image(s) have no label in the class list."
    wrong = torch.nonzero(known & (res.pred != labels)).flatten()
    confidence = res.probs[wrong, res.pred[wrong]]
    order = wrong[torch.argsort(confidence, descending=True)][:MISTAKES_SHOWN].tolist()
    mistakes = []
    for i in order:
        pred = int(res.pred[i])
        mistakes.append((session.thumbs[i], f"{names[pred]} {float(res.probs[i, pred]):.0%}, "
                         f"true {names[int(labels[i])]} | {title} | {session.names[i]}"))
    return (
        note,
        plots.accuracy_figure(acc, baseline=session.title("clip"), title="Accuracy per method"),
        plots.per_class_figure(per_class, names),
        plots.confusion_figure(conf, names, title=f"Confusion matrix - {title}"),
        mistakes,
    )


def convergence_view(session: Session):
    """(OTFusion convergence figure or None, note)."""
    res = session.results.get("otfusion")
    if res is None:
        return None, "Tick **OTFusion** and Run to see its convergence."
    history = list(res.details.history)
    s = session.settings
    note = (f"OTFusion ran {res.details.n_iter} outer iteration(s) "
            f"({'converged' if res.details.converged else 'stopped at the limit'}) with "
            f"λ = {s.otfusion_lam:g}, ε = {s.otfusion_eps:g}.")
    if not any(h.accuracy is not None for h in history):
        note += " Accuracy per iteration is drawn when every image has a label."
    return plots.convergence_figure(history, title="OTFusion convergence (paper Fig. 3)"), note


def sensitivity_views(session: Session):
    """Accuracy (or changed fraction) over a λ x ε grid, against λ and against ε."""
    from core.methods import sensitivity_sweep

    rows = sensitivity_sweep(session.extraction.features, settings=session.settings)
    for r in rows:
        r["changed_fraction"] = 1.0 - r["agreement_with_clip"]
    return (plots.sensitivity_figure(rows, x="lam", title="OTFusion sensitivity to λ (Fig. 2)"),
            plots.sensitivity_figure(rows, x="eps", title="OTFusion sensitivity to ε"))


# ----------------------------------------------------------------------------- embedding map


def _gpua_settings_key(session: Session) -> tuple:
    s = session.settings
    return (s.gpua_lam, s.gpua_eps, s.gpua_targets, s.gpua_ths_steps, s.gpua_ths_k,
            s.gpua_reorthogonalize, s.gpua_concat_vlm, s.seed)


def mapped_features(session: Session) -> torch.Tensor:
    """GPUA-mapped VFM features (n, d_t) of the session (fits GPUA once if it was not run)."""
    key = ("mapped", _gpua_settings_key(session))
    if key not in session.memo:
        res = session.results.get("gpua")
        if res is None:
            res = run_method("gpua", session.extraction.features, session.settings)
        z = gpua_inputs(session.extraction.features, session.settings)
        session.memo[key] = res.details.transform(z)
    return session.memo[key]


def _projection(session: Session, which: str, method: str):
    feats = session.extraction.features
    key = ("xy", which, method) if which == "before" else (
        "xy", which, method, _gpua_settings_key(session))
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
        color_labels = [names[t] if t >= 0 else "unknown" for t in _true(session)]
        hover_method = compare_method(session, None)
    else:
        method = color_by if color_by in session.results else "clip"
        color_labels = [names[p] for p in session.results[method].pred.tolist()]
        hover_method = method
    tops = topk(session.results[hover_method].probs, names, k=3)
    truth = _true(session)
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
        note += f" The ringed point is **{_md(session.names[int(highlight)])}**."
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
    for probs in (seg.clip_probs[0], seg.gpua_probs[0]):
        top, labels = probs.max(dim=0)  # (H, W)
        if threshold and threshold > 0:
            labels = labels.masked_fill(top < float(threshold), -1)
        overlay = segmentation_overlay(seg.images[0], labels, names, alpha=alpha, visible=shown)
        overlays.append(_enlarged(overlay, Image.NEAREST))
        counts = torch.bincount(labels[labels >= 0].flatten(), minlength=len(names))
        present += [c for c in torch.argsort(counts, descending=True).tolist() if counts[c] > 0]
    image = side_by_side(overlays, ["Dense CLIP (MaskCLIP)", "GPUA-aligned VFM patches"])
    legend = legend_html([c for c in present if shown is None or c in shown], names)
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
                       feats.attribute_mask, theta=s.lazsl_theta, eps=s.lazsl_eps,
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
    probs = torch.softmax(s.temperature * res.scores[0], dim=0)
    scores = {names[c]: float(probs[c]) for c in range(len(names))}
    kept = int(res.kept[0].sum())
    table = [f"**{_md(item.name)}**: crops matched to the attributes of **{_md(names[k])}** "
             f"({'LaZSL prediction' if k == int(res.pred[0]) else 'chosen class'}); {kept} of "
             f"{res.kept.shape[1]} crops kept by vision selection.", "",
             "| # | crop | attribute it is transported to | plan mass |", "|---|---|---|---|"]
    table += [f"| {r + 1} | {c} | {_md(lab)} | {mass:.1%} |" for r, (c, lab, (_, _, mass)) in
              enumerate(zip(crops, labels, rows))]
    return picture, gallery, scores, "\n".join(table)
