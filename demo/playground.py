"""The Playground tab: synthetic CLIP-like and DINO-like features (no weights needed): CLIP vs
OTFusion vs GPUA under either recipe, OTFusion's source weights, the embedding maps and the
modality gap.

A slider move re-does only what it changed: the data set, each method's result, the GPUA map and
each 2-D projection are cached by what they depend on (``_features``, ``_solved``, ``_panel``),
and the handler sends only the figures whose inputs differ from what the page shows (the
``shown`` state), skipping the others (``gr.skip()``). Moving λ re-solves OTFusion and redraws
the accuracy and source-weight charts; the maps, the gap chart and GPUA stay as they are.

The synthetic presets are read from ``core.synthetic.PRESETS`` when the app is built and when a
preset is picked, so a preset added there appears here without a change to this module.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import gradio as gr
import torch

import core.synthetic as synthetic
from core.config import GPUASettings, MethodSettings, OTFusionSettings, with_recipe
from core.methods import METHOD_TITLES, FeatureSet, gpua_inputs, otfusion_weights, run_method
from core.metrics import modality_gap
from demo import plots
from demo.state import user_errors

PLAYGROUND_THS_STEPS = 100  # GPUA in the playground regenerates on every slider release
# Sliders of the generator's knobs: (minimum, maximum, step); a preset may raise a maximum.
KNOB_SLIDERS = {"gap": (0.0, 2.0, 0.05), "vlm_noise": (0.0, 5.0, 0.05),
                "vfm_noise": (0.0, 4.0, 0.05)}
SECOND_VFM_NOISE = 3.0  # the second DINO-like model starts noisier than the first (2.0 in "hard")
NAMES = {"vlm": ("CLIP-like",), "vfm": ("DINO-like", "DINO-like #2")}
# Cached data sets (a few MB each at 3,000 samples), and results / projections per data set.
CACHE_DATA = 8
CACHE_RESULTS = 32
# The playground's tensors are small (at most 3,000 x 96): one torch thread solves them as fast
# as two, and on shared cores two threads wait on each other (measured under load 5 on 2 cores:
# OTFusion at 3,000 samples 0.13-0.3 s with one thread, 1.2-6 s with two). The setting is per
# thread (OpenMP), so the other handlers keep theirs.
PLAYGROUND_TORCH_THREADS = 1


class PlaygroundOutputs(NamedTuple):
    play_shown: Any  # what the page now shows (a gr.State); first so the API's last is the note
    play_gap: Any  # the knob sliders: set when a new preset is picked, else skipped
    play_vlm_noise: Any
    play_vfm_noise: Any
    play_accuracy: Any
    play_weights: Any
    play_before: Any
    play_after: Any
    play_gap_plot: Any
    play_note: str


class PresetKnobs(NamedTuple):
    play_gap: Any
    play_vlm_noise: Any
    play_vfm_noise: Any


class DataKey(NamedTuple):
    """Everything the synthetic data set depends on (the cache key of ``_features``)."""
    n_samples: int
    n_classes: int
    seed: int
    preset: str
    gap: float
    vlm_noise: float
    vfm_noise: float
    vfm2_noise: float | None  # None: no second DINO-like model


def preset_names() -> list[str]:
    """The synthetic presets, as ``core.synthetic`` defines them now."""
    return list(synthetic.PRESETS)


def _knob(preset, name: str):
    """A preset's value of one knob (a preset is a mapping or a record), or None."""
    return preset.get(name) if isinstance(preset, Mapping) else getattr(preset, name, None)


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


def _settings(recipe: str, lam: float) -> MethodSettings:
    """The recipe's settings; λ from the slider where the recipe has a numeric λ (the official
    recipe's is uniform), GPUA's THS capped at ``PLAYGROUND_THS_STEPS``."""
    o = with_recipe(OTFusionSettings(), recipe)
    o = o if o.lam is None else replace(o, lam=float(lam))
    g = with_recipe(GPUASettings(), recipe)
    return MethodSettings(otfusion=o, gpua=replace(g, ths_steps=min(g.ths_steps,
                                                                      PLAYGROUND_THS_STEPS)))


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=CACHE_DATA)
def _features(key: DataKey):
    """(SyntheticData, FeatureSet) of ``key``: generated once per key."""
    data = synthetic.make_synthetic(
        key.n_samples, key.n_classes, seed=key.seed, difficulty=key.preset, gap=key.gap,
        vlm_noise=key.vlm_noise, vfm_noise=key.vfm_noise,
        extra_vfm_noise=None if key.vfm2_noise is None else (key.vfm2_noise,))
    extra = data.vfm_extra
    feats = FeatureSet(vlm_image=data.vlm_image, text=data.vlm_text, vfm_image=data.vfm_image,
                       labels=data.labels, extra_vfm_images=extra, vlm_names=NAMES["vlm"],
                       vfm_names=NAMES["vfm"][:1 + len(extra)])
    return data, feats


@functools.lru_cache(maxsize=CACHE_RESULTS)
def _solved(key: DataKey, method: str, part=None):
    """``method``'s result on ``key``'s data under ``part`` (its OTFusionSettings or
    GPUASettings; None for CLIP): solved once per (data, settings)."""
    settings = MethodSettings() if part is None else MethodSettings(**{method: part})
    return run_method(method, _features(key)[1], settings)


@functools.lru_cache(maxsize=CACHE_RESULTS)
def _mapped(key: DataKey, g: GPUASettings) -> torch.Tensor:
    """GPUA-mapped VFM features (n, d_t) of ``key``'s data under ``g``."""
    return _solved(key, "gpua", g).details.transform(gpua_inputs(_features(key)[1], g))


@functools.lru_cache(maxsize=CACHE_RESULTS)
def _panel(key: DataKey, projection: str, g: GPUASettings | None = None):
    """One map projected (``plots.project_panel``): the CLIP image features vs text (``g``
    None) or the GPUA-mapped ones. Returns (image_xy (n, 2), text_xy (k, 2), gap, seconds the
    projection took)."""
    feats = _features(key)[1]
    image = feats.vlm_image if g is None else _mapped(key, g)
    start = time.perf_counter()
    panel = plots.project_panel(image, feats.text, method=projection,
                                name="before" if g is None else "after")
    return (*panel, time.perf_counter() - start)


def clear_cache() -> None:
    """Forget every cached data set, result and projection (tests)."""
    for cached in (_features, _solved, _mapped, _panel):
        cached.cache_clear()


@user_errors
def playground(n_classes=10, n_samples=500, gap=0.8, vlm_noise=2.95, vfm_noise=2.0, seed=0,
               projection="pca", lam=OTFusionSettings.lam, recipe="paper", preset="hard",
               second_vfm=False, vfm2_noise=SECOND_VFM_NOISE, shown=None) -> PlaygroundOutputs:
    """Synthetic CLIP-like and DINO-like features (``preset`` of ``core.synthetic.PRESETS``, the
    noise and gap sliders overriding it): CLIP vs OTFusion vs GPUA under ``recipe``, OTFusion's
    source weights, maps and gaps. ``second_vfm`` adds a second DINO-like model with noise
    ``vfm2_noise`` (``make_synthetic``'s ``extra_vfm_noise``), which OTFusion fuses too.

    ``shown``: what the page shows (the ``play_shown`` this returned last time; None: nothing).
    Figures whose inputs did not change since are skipped, and a preset other than the one
    shown sets the knob sliders to its values (as picking it in the dropdown means)."""
    n_classes, n_samples = int(n_classes), int(n_samples)
    if n_samples < n_classes:
        raise ValueError(f"Playground: {n_samples} samples cannot cover {n_classes} classes; "
                         "raise the samples or lower the classes.")
    if preset not in synthetic.PRESETS:
        raise ValueError(f"Playground preset: expected one of {', '.join(preset_names())}, got "
                         f"{preset!r}.")
    shown = dict(shown or {})
    knobs = PresetKnobs(gr.skip(), gr.skip(), gr.skip())
    if shown and shown.get("preset") != preset:  # a new preset sets the knobs
        knobs = preset_knobs(preset)
        values = synthetic.PRESETS[preset]
        gap, vlm_noise, vfm_noise = (v if _knob(values, name) is None else _knob(values, name)
                                     for name, v in (("gap", gap), ("vlm_noise", vlm_noise),
                                                     ("vfm_noise", vfm_noise)))
    key = DataKey(n_samples, n_classes, int(seed), preset, float(gap), float(vlm_noise),
                  float(vfm_noise), float(vfm2_noise) if second_vfm else None)
    settings = _settings(recipe, lam)
    o, g = settings.otfusion, settings.gpua
    wanted = {"play_accuracy": (key, o, g), "play_weights": (key, o),
              "play_before": (key, projection), "play_after": (key, g, projection),
              "play_gap_plot": (key, g)}
    with _torch_threads(PLAYGROUND_TORCH_THREADS):
        figs, note = _views(key, settings, projection, recipe, preset,
                            {f for f, k in wanted.items() if shown.get(f) != k})
    shown.update(wanted, preset=preset)
    return PlaygroundOutputs(shown, *knobs, *(figs.get(f, gr.skip()) for f in wanted), note)


def _views(key: DataKey, settings: MethodSettings, projection: str, recipe: str, preset: str,
           changed: set[str]) -> tuple[dict, str]:
    """({output field: figure} for the ``changed`` fields, the note)."""
    data, feats = _features(key)
    o, g = settings.otfusion, settings.gpua
    results = {"clip": _solved(key, "clip"), "otfusion": _solved(key, "otfusion", o),
               "gpua": _solved(key, "gpua", g)}
    acc = {METHOD_TITLES[m]: r.accuracy for m, r in results.items()}
    gaps = {"CLIP image vs text": modality_gap(feats.vlm_image, feats.text),
            "GPUA-mapped VFM vs text": modality_gap(_mapped(key, g), feats.text)}
    figs = {}
    if "play_accuracy" in changed:
        figs["play_accuracy"] = plots.accuracy_figure(acc, title="Accuracy on synthetic features")
    if "play_weights" in changed:
        otf = results["otfusion"]
        figs["play_weights"] = plots.source_weights_figure(
            otf.details.history, visual_names=[n for n in otf.sources if not n.startswith("Y: ")],
            vlm_names=NAMES["vlm"], title=f"OTFusion source weights ({otfusion_weights(o)})")
    if "play_gap_plot" in changed:
        figs["play_gap_plot"] = plots.modality_gap_figure(gaps, height=240)
    panels = {"play_before": _panel(key, projection), "play_after": _panel(key, projection, g)}
    if changed & set(panels):
        names = list(data.class_names)
        truth = [names[t] for t in data.labels.tolist()]
        hover = [f"sample {i}: {t}" for i, t in enumerate(truth)]
        heads = plots.map_heads(projection, panels["play_before"][2], panels["play_after"][2])
        for (field, (ixy, txy, _, _)), (title, subtitle) in zip(panels.items(), heads):
            if field in changed:
                figs[field] = plots.embedding_figure(
                    ixy, txy, image_color_labels=truth, class_names=names, hover=hover,
                    title=title, subtitle=subtitle)
    seconds = sum(p[3] for p in panels.values())
    note = (f"{key.n_samples} synthetic images of {key.n_classes} classes (preset '{preset}', "
            f"coloured by true class), {recipe} recipe. CLIP zero-shot "
            f"{acc['CLIP zero-shot']:.1%} -> OTFusion {acc['OTFusion']:.1%}, GPUA "
            f"{acc['GPUA']:.1%}. Modality gap {gaps['CLIP image vs text']:.2f} -> "
            f"{gaps['GPUA-mapped VFM vs text']:.2f} after GPUA's orthogonal map. Raise the VLM "
            "noise to make CLIP worse; raise the VFM noise to blur the clusters fusion relies "
            f"on. The two {projection.upper()} maps took {seconds:.1f} s to compute; moving λ "
            "reuses them.")
    if o.lam is None:
        note += " OTFusion's λ is uniform (1/J) in the official recipe: the λ slider is unused."
    recipe_steps = with_recipe(GPUASettings(), recipe).ths_steps
    if g.ths_steps < recipe_steps:
        note += (f" GPUA's THS runs {g.ths_steps} steps here (the {recipe} recipe: "
                 f"{recipe_steps}).")
    return figs, note


def lam_slider(recipe):
    """The playground's λ slider is used only by a recipe with a numeric λ."""
    return gr.update(interactive=with_recipe(OTFusionSettings(), recipe).lam is not None)


# The playground's inputs as the app opens them (demo.ui's sliders read these): its signature.
PLAYGROUND_DEFAULTS = {name: p.default
                       for name, p in inspect.signature(playground).parameters.items()}
