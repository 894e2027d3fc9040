"""The Segmentation tab: dense CLIP (MaskCLIP) vs VFM patches mapped by GPUA, for one image
(the models run once per image; the maps are memoised in the session record)."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
import torch
from PIL import Image

from core.pipeline import NOT_SEEN, UNLABELED, segment
from demo.overlays import enlarged, legend_html, segmentation_overlay, side_by_side
from demo.state import (
    Session,
    cache_from_env,
    gpu,
    need_session,
    pipeline_progress,
    user_errors,
)

SEGMENT_POOL = 8  # images whose patches GPUA is fitted on when segmenting one
SEGMENT_MAX_THS_STEPS = 100  # patch pools are larger than image sets: cap the THS refinement
NOT_COMPUTED = "<em>Press <b>Segment</b> to compute this image.</em>"


def segmentation_view(session: Session, index: int, visible: list[str] | None,
                      threshold: float, alpha: float = 0.5):
    """(side-by-side overlay image, legend HTML) from a memoised segmentation of ``index``."""
    steps = min(SEGMENT_MAX_THS_STEPS, session.settings.gpua.ths_steps)
    seg = session.memo.get(("seg", int(index), steps))
    if seg is None:
        return None, NOT_COMPUTED
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
        # An opaque border in the legend's exact colour: the fill blends with the photo.
        overlay = segmentation_overlay(seg.images[0], labels, names, alpha=alpha, visible=shown,
                                       outline=max(1, min(seg.images[0].size) // 112))
        overlays.append(enlarged(overlay, Image.NEAREST))
        counts = torch.bincount(labels[labels >= 0].flatten(), minlength=len(names))
        present += [c for c in torch.argsort(counts, descending=True).tolist() if counts[c] > 0]
    image = side_by_side(overlays, ["Dense CLIP (MaskCLIP)", "GPUA-aligned VFM patches"])
    legend = legend_html([c for c in present if shown is None or c in shown], names,
                         not_seen=not_seen)
    return image, legend


class SegmentOutputs(NamedTuple):
    seg_image: Any
    seg_legend: str


def blank() -> SegmentOutputs:
    """What the tab shows before anything is computed for the current Run."""
    return SegmentOutputs(None, NOT_COMPUTED)


@gpu(duration=60)
def _segment(extraction, index, pool, cache, ths_steps, progress):
    return segment(extraction, [index], pool_indices=pool, cache=cache, ths_steps=ths_steps,
                   per_class=128, progress=progress)


@user_errors
def segment_image(session, index, visible=None, threshold=0.0, alpha=0.5, *, cache_dir=None,
                  progress=None) -> SegmentOutputs:
    """Dense CLIP vs GPUA-aligned VFM patches for one image (models run once per image)."""
    session = need_session(session)
    if index is None:
        raise ValueError("Pick an image to segment (or click one in the Predictions gallery).")
    index = int(index)
    steps = min(SEGMENT_MAX_THS_STEPS, session.settings.gpua.ths_steps)
    if ("seg", index, steps) not in session.memo:
        n = len(session.names)
        pool = sorted({index} | set(range(min(n, SEGMENT_POOL))))
        session.memo[("seg", index, steps)] = _segment(session.extraction, index, pool,
                                                       cache_from_env(cache_dir), steps,
                                                       pipeline_progress(progress))
    return SegmentOutputs(*segmentation_view(session, index, visible, threshold,
                                                           alpha))


@user_errors
def redraw_segmentation(session, index, visible=None, threshold=0.0, alpha=0.5):
    """Class toggles / threshold / opacity moved: redraw from the memoised maps (no model)."""
    if not isinstance(session, Session) or index is None:
        return SegmentOutputs(gr.skip(), gr.skip())
    return SegmentOutputs(*segmentation_view(session, int(index), visible,
                                                           threshold, alpha))
