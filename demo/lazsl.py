"""The LaZSL tab: the crops of one image and the attribute descriptions LaZSL transports them
to, scored with the session record's LaZSL settings."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from PIL import Image

from core.data import decode_image
from core.methods import explain, lazsl_scores
from demo.crop_views import crop_thumbnails, crop_view
from demo.overlays import enlarged
from demo.predictions import md_cell
from demo.state import VIEW_SIDE, Session, user_errors


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
                       recipe=s.lazsl.recipe, return_plans=True)
    k = names.index(class_name) if class_name in names else int(res.pred[0])
    item = ex.items[i]
    view = enlarged(decode_image(item, max_side=VIEW_SIDE), Image.BICUBIC)
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
    gallery = [(t, f"{r + 1}: {lab}\n{mass:.1%} of the plan") for r, (t, lab, (_, _, mass)) in
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


class LazslOutputs(NamedTuple):
    crop_image: Any
    crop_gallery: list
    class_scores: Any
    lazsl_table: str


NO_RUN = "Run with **LaZSL** ticked, then pick an image."
NO_CROPS = ("This run has no crops: tick **LaZSL** (crops per image > 0 in Advanced) and Run "
            "again.")


def blank(session: Session | None = None) -> LazslOutputs:
    """What the tab shows before an image is explained for the current Run."""
    if session is not None and session.extraction.features.crops is None:
        return LazslOutputs(None, [], None, NO_CROPS)
    return LazslOutputs(None, [], None, NO_RUN if session is None else
                        "Pick an image (or click one in the gallery) and press **Explain**.")


@user_errors
def lazsl_explain(session, index, class_name=None) -> LazslOutputs:
    """Crops of one image and the attributes LaZSL transports them to (the record's θ, ε)."""
    if not isinstance(session, Session) or index is None:
        return blank()
    if session.extraction.features.crops is None:
        return blank(session)
    return LazslOutputs(*lazsl_view(session, int(index), class_name))
