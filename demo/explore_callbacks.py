"""Event handlers of the exploration tabs: embedding map, λ x ε sweep, segmentation, LaZSL
explanation and the synthetic playground.

Same contract as ``demo.callbacks`` (the core flow: Run, re-solves, paging, presets): plain
functions callable without a browser, each returning a NamedTuple whose field names are the keys
of the components ``demo.ui`` wires them to; user mistakes raise ``gr.Error``.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import gradio as gr

from core.config import MethodSettings, OTFusionSettings
from core.methods import METHOD_TITLES, FeatureSet, gpua_inputs, run_methods
from core.metrics import modality_gap
from core.pipeline import segment
from core.synthetic import make_synthetic
from demo import explore_views, plots, views
from demo.callbacks import cache_from_env, pipeline_progress
from demo.session import Session, gpu, user_errors

SEGMENT_POOL = 8  # images whose patches GPUA is fitted on when segmenting one
SEGMENT_MAX_THS_STEPS = 100  # patch pools are larger than image sets: cap the THS refinement
PLAYGROUND_THS_STEPS = 100  # GPUA in the playground regenerates on every slider release


class EmbeddingOutputs(NamedTuple):
    embed_before: Any
    embed_after: Any
    gap_plot: Any
    embed_note: str


def _need_session(session) -> Session:
    if not isinstance(session, Session):
        raise ValueError("Nothing to show yet: upload images, enter classes and press Run first.")
    return session


@user_errors
def embedding(session, projection="pca", color_by="clip", selected=None) -> EmbeddingOutputs:
    """Before / after embedding maps and the modality gap (projection memoised per session)."""
    session = _need_session(session)
    return EmbeddingOutputs(*explore_views.embedding_views(session, projection, color_by, selected))


@user_errors
def embedding_highlight(session, projection="pca", color_by="clip", selected=None):
    """Gallery selection changed: redraw the maps only if their projection is already computed."""
    if not isinstance(session, Session) or ("xy", "before", projection) not in session.memo:
        return EmbeddingOutputs(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return EmbeddingOutputs(*explore_views.embedding_views(session, projection, color_by, selected))


class SweepOutputs(NamedTuple):
    sweep_lam: Any
    sweep_eps: Any


@user_errors
def sweep(session) -> SweepOutputs:
    """OTFusion over a λ x ε grid on the cached features (papers' Fig. 2)."""
    return SweepOutputs(*views.sensitivity_views(_need_session(session)))


class SegmentOutputs(NamedTuple):
    seg_image: Any
    seg_legend: str


@gpu(duration=60)
def _segment(extraction, index, pool, cache, ths_steps, progress):
    return segment(extraction, [index], pool_indices=pool, cache=cache, ths_steps=ths_steps,
                   per_class=128, progress=progress)


@user_errors
def segment_image(session, index, visible=None, threshold=0.0, alpha=0.5, *, cache_dir=None,
                  progress=None) -> SegmentOutputs:
    """Dense CLIP vs GPUA-aligned VFM patches for one image (models run once per image)."""
    session = _need_session(session)
    if index is None:
        raise ValueError("Pick an image to segment (or click one in the Predictions gallery).")
    index = int(index)
    if ("seg", index) not in session.memo:
        n = len(session.names)
        pool = sorted({index} | set(range(min(n, SEGMENT_POOL))))
        steps = min(SEGMENT_MAX_THS_STEPS, session.settings.gpua.ths_steps)
        session.memo[("seg", index)] = _segment(session.extraction, index, pool,
                                                cache_from_env(cache_dir), steps,
                                                pipeline_progress(progress))
    return SegmentOutputs(*explore_views.segmentation_view(session, index, visible, threshold,
                                                           alpha))


@user_errors
def redraw_segmentation(session, index, visible=None, threshold=0.0, alpha=0.5):
    """Class toggles / threshold / opacity moved: redraw from the memoised maps (no model)."""
    if not isinstance(session, Session) or index is None:
        return SegmentOutputs(gr.skip(), gr.skip())
    return SegmentOutputs(*explore_views.segmentation_view(session, int(index), visible,
                                                           threshold, alpha))


class LazslOutputs(NamedTuple):
    crop_image: Any
    crop_gallery: list
    class_scores: Any
    lazsl_table: str


@user_errors
def lazsl_explain(session, index, class_name=None) -> LazslOutputs:
    """Crops of one image and the attributes LaZSL transports them to."""
    if not isinstance(session, Session) or index is None:
        return LazslOutputs(None, [], None, "Run with **LaZSL** ticked, then pick an image.")
    if session.extraction.features.crops is None:
        return LazslOutputs(None, [], None, "This run has no crops: tick **LaZSL** (crops per "
                            "image > 0 in Advanced) and Run again.")
    return LazslOutputs(*explore_views.lazsl_view(session, int(index), class_name))


class PlaygroundOutputs(NamedTuple):
    play_accuracy: Any
    play_before: Any
    play_after: Any
    play_gap_plot: Any
    play_note: str


@user_errors
def playground(n_classes=10, n_samples=500, gap=0.8, vlm_noise=2.95, vfm_noise=2.0, seed=0,
               projection="pca", lam=OTFusionSettings.lam) -> PlaygroundOutputs:
    """Synthetic CLIP-like and DINO-like features: CLIP vs OTFusion vs GPUA, maps and gaps."""
    n_classes, n_samples = int(n_classes), int(n_samples)
    if n_samples < n_classes:
        raise ValueError(f"Playground: {n_samples} samples cannot cover {n_classes} classes; "
                         "raise the samples or lower the classes.")
    data = make_synthetic(n_samples, n_classes, seed=int(seed), difficulty="hard", gap=float(gap),
                          vlm_noise=float(vlm_noise), vfm_noise=float(vfm_noise))
    feats = FeatureSet(vlm_image=data.vlm_image, text=data.vlm_text, vfm_image=data.vfm_image,
                       labels=data.labels)
    settings = MethodSettings().replace(otfusion={"lam": float(lam)},
                                        gpua={"ths_steps": PLAYGROUND_THS_STEPS})
    results = run_methods(feats, ("otfusion", "gpua"), settings)
    acc = {METHOD_TITLES[m]: r.accuracy for m, r in results.items()}
    mapped = results["gpua"].details.transform(gpua_inputs(feats, settings.gpua))
    names = list(data.class_names)
    truth = [names[t] for t in data.labels.tolist()]
    before, after = plots.embedding_maps(
        feats.vlm_image, feats.text, mapped, feats.text, image_color_labels=truth,
        class_names=names, method=projection, hover=[f"sample {i}: {t}" for i, t in
                                                     enumerate(truth)])
    gaps = {"CLIP image vs text": modality_gap(feats.vlm_image, feats.text),
            "GPUA-mapped VFM vs text": modality_gap(mapped, feats.text)}
    note = (f"{n_samples} synthetic images of {n_classes} classes (coloured by true class). CLIP "
            f"zero-shot {acc['CLIP zero-shot']:.1%} -> OTFusion {acc['OTFusion']:.1%}, GPUA "
            f"{acc['GPUA']:.1%}. Modality gap {gaps['CLIP image vs text']:.2f} -> "
            f"{gaps['GPUA-mapped VFM vs text']:.2f} after GPUA's orthogonal map. Raise the VLM "
            "noise to make CLIP worse; raise the VFM noise to blur the clusters fusion relies on.")
    return PlaygroundOutputs(
        plots.accuracy_figure(acc, title="Accuracy on synthetic features"), before, after,
        plots.modality_gap_figure(gaps, height=240), note)


# The playground's inputs as the app opens them (demo.ui's sliders read these): its signature.
PLAYGROUND_DEFAULTS = {name: p.default
                       for name, p in inspect.signature(playground).parameters.items()}
