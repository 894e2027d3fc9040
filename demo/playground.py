"""The Playground tab: synthetic CLIP-like and DINO-like features (no weights needed): CLIP vs
OTFusion vs GPUA under either recipe, OTFusion's source weights, the embedding maps and the
modality gap.

The synthetic presets are read from ``core.synthetic.PRESETS`` when the app is built and when a
preset is picked, so a preset added there appears here without a change to this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import gradio as gr

import core.synthetic as synthetic
from core.config import GPUASettings, MethodSettings, OTFusionSettings, with_recipe
from core.methods import METHOD_TITLES, FeatureSet, gpua_inputs, otfusion_weights, run_methods
from core.metrics import modality_gap
from demo import plots
from demo.state import user_errors

PLAYGROUND_THS_STEPS = 100  # GPUA in the playground regenerates on every slider release
# Sliders of the generator's knobs: (minimum, maximum, step); a preset may raise a maximum.
KNOB_SLIDERS = {"gap": (0.0, 2.0, 0.05), "vlm_noise": (0.0, 5.0, 0.05),
                "vfm_noise": (0.0, 4.0, 0.05)}
SECOND_VFM_NOISE = 3.0  # the second DINO-like model starts noisier than the first (2.0 in "hard")
NAMES = {"vlm": ("CLIP-like",), "vfm": ("DINO-like", "DINO-like #2")}


class PlaygroundOutputs(NamedTuple):
    play_accuracy: Any
    play_weights: Any
    play_before: Any
    play_after: Any
    play_gap_plot: Any
    play_note: str


def preset_names() -> list[str]:
    """The synthetic presets, as ``core.synthetic`` defines them now."""
    return list(synthetic.PRESETS)


def _knob(preset, name: str):
    """A preset's value of one knob (a preset is a mapping or a record), or None."""
    return preset.get(name) if isinstance(preset, Mapping) else getattr(preset, name, None)


def _settings(recipe: str, lam: float) -> MethodSettings:
    """The recipe's settings; λ from the slider where the recipe has a numeric λ (the official
    recipe's is uniform), GPUA's THS capped at ``PLAYGROUND_THS_STEPS``."""
    o = with_recipe(OTFusionSettings(), recipe)
    o = o if o.lam is None else replace(o, lam=float(lam))
    g = with_recipe(GPUASettings(), recipe)
    return MethodSettings(otfusion=o, gpua=replace(g, ths_steps=min(g.ths_steps,
                                                                      PLAYGROUND_THS_STEPS)))


@user_errors
def playground(n_classes=10, n_samples=500, gap=0.8, vlm_noise=2.95, vfm_noise=2.0, seed=0,
               projection="pca", lam=OTFusionSettings.lam, recipe="paper", preset="hard",
               second_vfm=False, vfm2_noise=SECOND_VFM_NOISE) -> PlaygroundOutputs:
    """Synthetic CLIP-like and DINO-like features (``preset`` of ``core.synthetic.PRESETS``, the
    noise and gap sliders overriding it): CLIP vs OTFusion vs GPUA under ``recipe``, OTFusion's
    source weights, maps and gaps. ``second_vfm`` adds a second DINO-like model with noise
    ``vfm2_noise`` (``make_synthetic``'s ``extra_vfm_noise``), which OTFusion fuses too."""
    n_classes, n_samples = int(n_classes), int(n_samples)
    if n_samples < n_classes:
        raise ValueError(f"Playground: {n_samples} samples cannot cover {n_classes} classes; "
                         "raise the samples or lower the classes.")
    if preset not in synthetic.PRESETS:
        raise ValueError(f"Playground preset: expected one of {', '.join(preset_names())}, got "
                         f"{preset!r}.")
    data = synthetic.make_synthetic(n_samples, n_classes, seed=int(seed), difficulty=preset,
                                    gap=float(gap), vlm_noise=float(vlm_noise),
                                    vfm_noise=float(vfm_noise),
                                    extra_vfm_noise=(float(vfm2_noise),) if second_vfm else None)
    extra = data.vfm_extra
    feats = FeatureSet(vlm_image=data.vlm_image, text=data.vlm_text, vfm_image=data.vfm_image,
                       labels=data.labels, extra_vfm_images=extra, vlm_names=NAMES["vlm"],
                       vfm_names=NAMES["vfm"][:1 + len(extra)])
    settings = _settings(recipe, lam)
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
    otf = results["otfusion"]
    weights = plots.source_weights_figure(
        otf.details.history, visual_names=[n for n in otf.sources if not n.startswith("Y: ")],
        vlm_names=NAMES["vlm"],
        title=f"OTFusion source weights ({otfusion_weights(settings.otfusion)})")
    note = (f"{n_samples} synthetic images of {n_classes} classes (preset '{preset}', coloured by "
            f"true class), {recipe} recipe. CLIP zero-shot {acc['CLIP zero-shot']:.1%} -> "
            f"OTFusion {acc['OTFusion']:.1%}, GPUA {acc['GPUA']:.1%}. Modality gap "
            f"{gaps['CLIP image vs text']:.2f} -> {gaps['GPUA-mapped VFM vs text']:.2f} after "
            "GPUA's orthogonal map. Raise the VLM noise to make CLIP worse; raise the VFM noise to "
            "blur the clusters fusion relies on.")
    if settings.otfusion.lam is None:
        note += " OTFusion's λ is uniform (1/J) in the official recipe: the λ slider is unused."
    recipe_steps = with_recipe(GPUASettings(), recipe).ths_steps
    if settings.gpua.ths_steps < recipe_steps:
        note += (f" GPUA's THS runs {settings.gpua.ths_steps} steps here (the {recipe} recipe: "
                 f"{recipe_steps}).")
    return PlaygroundOutputs(
        plots.accuracy_figure(acc, title="Accuracy on synthetic features"), weights, before,
        after, plots.modality_gap_figure(gaps, height=240), note)


class PresetKnobs(NamedTuple):
    play_gap: Any
    play_vlm_noise: Any
    play_vfm_noise: Any


def preset_knobs(preset) -> PresetKnobs:
    """The knob sliders set to ``preset``'s values (a slider's maximum grows to fit one)."""
    values = synthetic.PRESETS.get(preset)
    if values is None:
        return PresetKnobs(gr.skip(), gr.skip(), gr.skip())
    updates = []
    for name, (_, high, _) in KNOB_SLIDERS.items():
        v = _knob(values, name)
        updates.append(gr.skip() if v is None else gr.update(value=float(v),
                                                             maximum=max(high, float(v))))
    return PresetKnobs(*updates)


def lam_slider(recipe):
    """The playground's λ slider is used only by a recipe with a numeric λ."""
    return gr.update(interactive=with_recipe(OTFusionSettings(), recipe).lam is not None)


# The playground's inputs as the app opens them (demo.ui's sliders read these): its signature.
PLAYGROUND_DEFAULTS = {name: p.default
                       for name, p in inspect.signature(playground).parameters.items()}
