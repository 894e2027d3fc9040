"""The app's live controls and the settings they stand for: one table, one conversion.

The live controls are named once, in :data:`CONTROLS` (control key -> the method and the field of
its settings dataclass in ``core.config``); :func:`method_settings` is the one place that turns
control values into ``MethodSettings``, :func:`control_default` / :func:`control_updates` the one
place that turns settings back into what the controls show, and ``demo.ui`` reads the sliders'
defaults and ranges from ``core.config`` through the same table.

Recipes: each method with recipes has a recipe control (:data:`RECIPE_CONTROLS`). A recipe named
in ``method_settings`` starts its method from that recipe (``core.config.with_recipe``: also the
fields no control shows, e.g. OTFusion's Sinkhorn iterations) and the other controls apply on
top; ``demo.run.switch_recipe`` (the app's radios) lets the recipe win instead and shows the result
in the controls. OTFusion's λ is None (uniform, 1/J per VLM) in the official recipe: the
``lam_uniform`` checkbox stands for that, and the λ slider is greyed out meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from core.config import (
    GPUA_TARGETS,
    OTFUSION_SETTINGS,
    OTFUSION_VARIANTS,
    RECIPE_NAMES,
    MethodSettings,
    with_recipe,
)
from core.methods import METHOD_TITLES, OTFUSION_WEIGHTS, otfusion_weights
from demo.provenance import LAM_LABELS

# The live controls: component key -> (method, field of that method's settings in core.config).
# Moving one re-solves its method only, from the cached features.
CONTROLS = {
    "otfusion_recipe": ("otfusion", "recipe"),
    "otfusion_setting": ("otfusion", "setting"),
    "otfusion_variant": ("otfusion", "variant"),
    "otfusion_weights": ("otfusion", "weights"),
    "lam_uniform": ("otfusion", "lam"),  # ticked: lam None, 1/J per VLM (the official recipe's)
    "lam": ("otfusion", "lam"),
    "eps": ("otfusion", "eps"),
    "n_iter": ("otfusion", "n_iter"),
    "gpua_recipe": ("gpua", "recipe"),
    "gpua_lam": ("gpua", "lam"),
    "gpua_eps": ("gpua", "eps"),
    "gpua_targets": ("gpua", "targets"),
    "gpua_ths_steps": ("gpua", "ths_steps"),
    "lazsl_recipe": ("lazsl", "recipe"),
    "lazsl_theta": ("lazsl", "theta"),
}
RECIPE_CONTROLS = {"otfusion": "otfusion_recipe", "gpua": "gpua_recipe", "lazsl": "lazsl_recipe"}
# Controls with a fixed set of values: control -> (its name in messages, the values).
_CHOICES = {
    "gpua_targets": ("GPUA targets", GPUA_TARGETS),
    "otfusion_setting": ("OTFusion setting", OTFUSION_SETTINGS),
    "otfusion_variant": ("OTFusion variant", OTFUSION_VARIANTS),
    "otfusion_weights": ("OTFusion weights", OTFUSION_WEIGHTS),
    **{key: (f"{METHOD_TITLES[m]} recipe", RECIPE_NAMES) for m, key in RECIPE_CONTROLS.items()},
}


def controls_of(method: str) -> tuple[str, ...]:
    """The control keys that belong to ``method`` (e.g. otfusion: lam, eps, n_iter)."""
    return tuple(k for k, (m, _) in CONTROLS.items() if m == method)


def control_default(key: str, settings: MethodSettings | None = None):
    """The value control ``key`` shows for ``settings`` (default: ``core.config``'s defaults).

    ``lam`` shows the paper's λ while the record's is None (uniform, ``lam_uniform`` ticked);
    ``otfusion_weights`` the weights the recipe runs with when the record leaves them to it."""
    settings = settings or MethodSettings()
    method, name = CONTROLS[key]
    own = getattr(settings, method)
    if key == "lam_uniform":
        return own.lam is None
    if key == "lam" and own.lam is None:
        return MethodSettings().otfusion.lam
    if key == "otfusion_weights":
        return otfusion_weights(own)
    return getattr(own, name)


def control_updates(method: str, settings: MethodSettings) -> dict:
    """``gr.update`` per control of ``method`` showing ``settings`` (λ greyed out while
    uniform)."""
    updates = {k: gr.update(value=control_default(k, settings)) for k in controls_of(method)}
    if method == "otfusion":
        updates["lam"] = lam_update(settings.otfusion.lam is None,
                                    value=control_default("lam", settings))
    return updates


def lam_update(uniform: bool, **changes):
    """OTFusion's λ slider greyed out and relabelled while λ is uniform (``lam_uniform``)."""
    return gr.update(interactive=not uniform, label=LAM_LABELS[bool(uniform)], **changes)


def control_value(key: str, value):
    """A control's value as its field's type (sliders send floats, n_iter must be an int)."""
    if key in _CHOICES:
        what, values = _CHOICES[key]
        if value not in values:
            raise ValueError(f"{what}: expected one of {', '.join(values)}, got {value!r}.")
        return value
    return type(control_default(key))(value)


def method_settings(controls: Mapping[str, Any],
                    base: MethodSettings | None = None) -> MethodSettings:
    """``MethodSettings`` from control values keyed as :data:`CONTROLS`; controls not given keep
    ``base``'s values (default: ``core.config``'s). A recipe control naming another recipe than
    ``base``'s starts that method from the recipe (``with_recipe``), then the other controls
    apply. Each value is cast to the type of the field it sets (sliders send floats)."""
    base = base or MethodSettings()
    unknown = [k for k in controls if k not in CONTROLS]
    if unknown:
        raise ValueError(f"Unknown control {unknown[0]!r}; expected any of {', '.join(CONTROLS)}.")
    values = {key: control_value(key, value) for key, value in controls.items()}
    for method, key in RECIPE_CONTROLS.items():
        own = getattr(base, method)
        if key in values and values[key] != own.recipe:
            base = base.replace(**{method: with_recipe(own, values[key])})
    changes: dict[str, dict] = {}
    for key, value in values.items():
        if key != "lam_uniform":
            method, name = CONTROLS[key]
            changes.setdefault(method, {})[name] = value
    if "lam_uniform" in values:  # ticked: uniform; unticked: the slider's λ (or the paper's)
        lam = changes.get("otfusion", {}).get("lam", base.otfusion.lam)
        lam = None if values["lam_uniform"] else (lam if lam is not None else
                                                  control_default("lam"))
        changes.setdefault("otfusion", {})["lam"] = lam
    return base.replace(**changes)
