"""What produced each number: the words the app uses for recipes, settings and sources.

One copy of every label, shared by the controls (``demo.ui``), the summary table
(``demo.predictions``) and the Dynamics notes, and read from the session record only (the
settings in ``Session.settings``, the features' names in ``MethodResult.sources``), never from
widget defaults.
"""

from __future__ import annotations

from core.config import MethodSettings, OTFusionSettings
from core.methods import otfusion_weights

# "paper": our reading of the paper's text; "official": the authors' released code.
RECIPE_LABELS = {"paper": "paper", "official": "official"}
# OTFusion's settings (core.config.OTFUSION_SETTINGS) and variants, with the paper rows they
# reproduce (OTFusion Tables 1 and 2; papers/README.md).
SETTING_LABELS = {
    "main": "main (Table 1: VLM image + VFMs)",
    "vfm_only": "VFMs only (Table 2 'DINOv2-only')",
    "vlm_only": "VLM images only (Table 2 'CLIP-only')",
}
VARIANT_LABELS = {
    "joint": "joint (full OTFusion)",
    "concat": "concat (Table 2 'concatenation')",
    "semantic_only": "semantic only (Table 2 'Y-only')",
    "no_joint": "no joint (Table 2 'no joint learning')",
}
# What the two dropdowns show: short enough for a dropdown a quarter of the row wide (the long
# labels above, with their paper rows, are in the summary table and the Dynamics note).
SETTING_CHOICES = {"main": "main: VLM img + VFMs", "vfm_only": "VFMs only",
                   "vlm_only": "VLM images only"}
VARIANT_CHOICES = {"joint": "joint (full)", "concat": "concat", "semantic_only": "semantic only",
                   "no_joint": "no joint"}
WEIGHT_LABELS = {"fixed": "fixed", "adaptive": "adaptive"}  # adaptive: by agreement with Q
# OTFusion's λ slider, by whether λ is uniform (1/J per VLM, the official recipe's) or its own.
LAM_LABELS = {False: "OTFusion λ (weight of each VLM)",
              True: "OTFusion λ: unused, uniform 1/J"}


def choices(labels: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs for a Gradio radio or dropdown."""
    return [(label, value) for value, label in labels.items()]


def lam_text(o: OTFusionSettings) -> str:
    return "λ 1/J (uniform)" if o.lam is None else f"λ {o.lam:g}"


def settings_text(method: str, s: MethodSettings) -> str:
    """The settings that produced one method's numbers, recipe first (``s``: the record's)."""
    if method == "otfusion":
        o = s.otfusion
        return (f"{o.recipe} recipe: {lam_text(o)}, ε {o.eps:g}, {o.n_iter} iter, "
                f"{otfusion_weights(o)} weights; {SETTING_LABELS[o.setting]}, "
                f"{VARIANT_LABELS[o.variant]}")
    if method == "gpua":
        g = s.gpua
        return (f"{g.recipe} recipe: λ {g.lam:g}, ε {g.eps:g}, {g.targets} targets, THS "
                f"{g.ths_steps} steps")
    if method == "lazsl":
        return f"{s.lazsl.recipe} recipe: θ {s.lazsl.theta:g}, ε {s.lazsl.eps:g}"
    return f"τ {s.clip.temperature:g}"


def sources_text(sources) -> str:
    """``MethodResult.sources`` as one line ("CLIP ViT-B/16 image + DINOv2 + Y: CLIP ...")."""
    return " + ".join(sources) if sources else "-"


def models_text(extraction) -> str:
    """Every model of a Run, the first of each kind marked primary."""
    feats = extraction.features
    vlms = [name for name, _, _ in feats.vlms()]
    vfms = [name for name, _ in feats.vfms()]

    def listing(names: list[str]) -> str:
        if not names:
            return "none"
        more = f" (+ {', '.join(names[1:])})" if len(names) > 1 else ""
        return f"{names[0]}{more}"

    return f"VLM {listing(vlms)}; VFM {listing(vfms)}"
