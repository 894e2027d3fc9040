"""The Playground tab: synthetic CLIP-like and DINO-like features (no weights needed): CLIP vs
OTFusion vs GPUA, the embedding maps and the modality gap."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from core.config import MethodSettings, OTFusionSettings
from core.methods import METHOD_TITLES, FeatureSet, gpua_inputs, run_methods
from core.metrics import modality_gap
from core.synthetic import make_synthetic
from demo import plots
from demo.state import user_errors

PLAYGROUND_THS_STEPS = 100  # GPUA in the playground regenerates on every slider release


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


# The playground's inputs as the app opens them (demo.ui's sliders read these): its signature.
PLAYGROUND_DEFAULTS = {name: p.default
                       for name, p in inspect.signature(playground).parameters.items()}
