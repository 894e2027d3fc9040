"""The inputs side of a Run: uploads, class lists, prompt templates, LaZSL attributes, the
checks that catch user mistakes before a solver does, the weights banner, and the handlers of
the dataset preset and class-file controls."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

import core.config as config
from core.config import (
    DEFAULT_TEMPLATE,
    LAZSL_CROPS,
    LAZSL_CROPS_PAPER,
    OTFUSION_OFFICIAL_VFMS,
    OTFUSION_OFFICIAL_VLMS,
)
from core.data import ImageSet, get_preset, load_attributes, load_classes_file, load_image_set
from core.data import parse_classes as _parse_classes
from core.methods import METHOD_TITLES
from core.models import WeightsUnavailableError, ensure_weights, get_spec
from core.pipeline import parse_size
from demo.examples import example_paths
from demo.state import user_errors, warn_user

TRANSDUCTIVE = ("otfusion", "gpua")  # methods that spread the images over the classes
# Upload limits besides Gradio's per-file max_file_size: the image bytes one Run may read (they
# stay in the session, whose bytes the session store caps) and the class names (as many as
# ImageNet: every class is a prompt to encode on the shared model slot).
MAX_UPLOAD_BYTES = config.APP_MAX_UPLOAD_BYTES
MAX_CLASSES = config.APP_MAX_CLASSES

# ----------------------------------------------------------------------------- inputs


def _paths(files) -> list[str]:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    out = []
    for f in files:
        path = getattr(f, "name", f) if not isinstance(f, (str, os.PathLike, dict)) else f
        if isinstance(path, dict):  # gradio FileData-like dict
            path = path.get("path") or path.get("name")
        if path:
            out.append(str(path))
    return out


def read_images(files, labels_csv=None) -> ImageSet:
    """The uploaded images (files and / or zips) as an ImageSet; folders in a zip give labels."""
    paths = _paths(files)
    if not paths:
        raise ValueError(
            "No images: upload image files (PNG, JPEG, WEBP, BMP, GIF) or a .zip of them, or "
            "click one of the examples below the upload box."
        )
    csv_paths = _paths(labels_csv)
    return load_image_set(paths, labels_csv=csv_paths[0] if csv_paths else None,
                          max_total_bytes=upload_limit())


def upload_limit() -> int:
    """``FUSIONLAB_MAX_UPLOAD_BYTES`` (a size such as 500MB) or ``MAX_UPLOAD_BYTES``."""
    text = os.environ.get("FUSIONLAB_MAX_UPLOAD_BYTES", "").strip()
    return parse_size(text, "FUSIONLAB_MAX_UPLOAD_BYTES") if text else MAX_UPLOAD_BYTES


def resolve_classes(classes_text: str | None, image_set: ImageSet) -> tuple[tuple[str, ...], list]:
    """Class names from the textbox, else the zip's folder names. Returns (names, notes)."""
    text = (classes_text or "").strip()
    if not text:
        # "night_sky" -> "night sky" for the prompts; labels still match (core ignores "_").
        folders = list(dict.fromkeys(" ".join(f.replace("_", " ").split())
                                     for f in image_set.class_names))
        if len(folders) >= 2:
            return tuple(folders), [
                f"No class list given: using the {len(folders)} folder names of the upload as "
                "the classes (" + ", ".join(folders[:12]) + (", ..." if len(folders) > 12 else "")
                + ")."
            ]
        raise ValueError(
            "No classes: type the class names (one per line, or comma-separated), upload a class "
            "file, or pick a dataset preset."
        )
    parsed = _parse_classes(text)
    if len(parsed.names) > MAX_CLASSES:
        raise ValueError(
            f"{len(parsed.names):,} classes: this app takes at most {MAX_CLASSES:,} (every class "
            "is a prompt to encode); use fewer, or the command line (python -m core run) for more."
        )
    return parsed.names, list(parsed.warnings)


def parse_templates(text: str | None) -> tuple[str, ...]:
    """Prompt templates, one per line, each with one ``{}`` for the class name."""
    lines = [" ".join(t.split()) for t in (text or "").splitlines()]
    lines = [t for t in lines if t]
    if not lines:
        return (DEFAULT_TEMPLATE,)
    bad = [t for t in lines if t.count("{}") != 1]
    if bad:
        raise ValueError(
            f"Prompt template {bad[0]!r} needs exactly one {{}} where the class name goes, e.g. "
            f"{DEFAULT_TEMPLATE!r}"
        )
    return tuple(dict.fromkeys(lines))


def resolve_attributes(attributes_file, class_names) -> tuple[dict | None, list[str]]:
    """LaZSL descriptors: the uploaded JSON, else the built-in file for the example classes."""
    uploaded = _paths(attributes_file)
    source = uploaded[0] if uploaded else str(example_paths()["attributes"])
    if not uploaded and not Path(source).is_file():
        return None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attrs = load_attributes(source, class_names=list(class_names), on_missing="warn")
    notes = []
    if uploaded:
        notes += [f"LaZSL: {w.message}" for w in caught]
    missing = [c for c in class_names if c not in attrs]
    if missing and not uploaded:
        notes.append(
            f"LaZSL: no attribute descriptors for {len(missing)} of {len(class_names)} classes, "
            "so those use their class name as the only description; upload a JSON "
            '{"class": ["descriptor", ...]} in Advanced for crop-level explanations.'
        )
    return (attrs or None), notes


def check_run_request(n_images: int, class_names: Sequence[str], methods: Sequence[str],
                      n_crops: int) -> None:
    """User mistakes that would otherwise surface deep in a solver."""
    transductive = [m for m in methods if m in TRANSDUCTIVE]
    if transductive and n_images < len(class_names):
        titles = " and ".join(METHOD_TITLES[m] for m in transductive)
        raise ValueError(
            f"{titles} {'is' if len(transductive) == 1 else 'are'} transductive: they spread the "
            f"images evenly over the classes, so they need at least as many images as classes; "
            f"got {n_images} image(s) for {len(class_names)} classes. Add images, remove classes, "
            f"or untick {titles}."
        )
    if "lazsl" in methods and int(n_crops) < 1:
        raise ValueError(
            "LaZSL needs crops: set 'LaZSL crops per image' (Advanced) to at least 1 (the paper "
            f"uses {LAZSL_CROPS_PAPER}; the default {LAZSL_CROPS} is a good CPU compromise), or "
            "untick LaZSL."
        )


# ----------------------------------------------------------------------------- models


def missing_weights(keys: Sequence[str]) -> list[str]:
    """Keys among ``keys`` whose weights are not in the local Hugging Face cache (no network)."""
    missing = []
    for key in dict.fromkeys(keys):
        spec = get_spec(key)
        if spec.random_init:
            continue
        try:
            ensure_weights(spec, allow_download=False)
        except WeightsUnavailableError:
            missing.append(key)
    return missing


def weights_banner(keys: Sequence[str]) -> str:
    """Landing note: plain words about which default models are missing and what still works."""
    missing = missing_weights(keys)
    if not missing:
        return ""
    names = ", ".join(f"**{get_spec(k).display_name}**" for k in missing)
    cmd = " ".join(missing)
    return (
        f"**Model weights not found on this machine:** {names}. The image tabs need them: a Run "
        "downloads them when this machine can reach the Hugging Face Hub; offline, run "
        f"`python -m core download {cmd}` on a machine with internet and copy its Hugging Face "
        "cache here (then set `HF_HUB_OFFLINE=1`). **The Playground tab works without any "
        "weights.**"
    )


def models_banner(vlms, vfms):
    """The banner for the models chosen in the pickers (lists of keys): which of them have no
    weights here; hidden when all do."""
    keys = [k for value in (vlms, vfms) for k in ([value] if isinstance(value, str) else
                                                  list(value or ())) if k]
    text = weights_banner(keys)
    return gr.update(value=text, visible=bool(text))


class SourcesOutputs(NamedTuple):
    vlm: Any
    vfm: Any


def official_sources() -> SourcesOutputs:
    """The model pickers set to the official OTFusion code's sources (CLIP ViT-B/16 with
    DINOv2-with-registers ViT-L/14 and DINOv3 ViT-L/16); a model this build's registry lacks is
    left out, with a note saying so."""
    def known(key: str) -> bool:
        try:
            get_spec(key)
        except ValueError:
            return False
        return True

    chosen = {kind: [k for k in keys if known(k)] for kind, keys in
              (("vlm", OTFUSION_OFFICIAL_VLMS), ("vfm", OTFUSION_OFFICIAL_VFMS))}
    absent = [k for k in (*OTFUSION_OFFICIAL_VLMS, *OTFUSION_OFFICIAL_VFMS) if not known(k)]
    if absent:
        warn_user(f"The official sources include {', '.join(absent)}, which this build's model "
                  "registry does not list; chose the others.")
    return SourcesOutputs(chosen["vlm"], chosen["vfm"])


class PresetOutputs(NamedTuple):
    classes_text: Any
    templates_text: Any


@user_errors
def preset_selected(key) -> PresetOutputs:
    """A dataset preset fills the class list and its CoOp prompt."""
    if not key:
        return PresetOutputs(gr.skip(), gr.skip())
    preset = get_preset(key)
    return PresetOutputs("\n".join(preset.class_names), preset.template)


@user_errors
def classes_file_selected(file) -> str:
    """An uploaded class file (.txt one per line, or a .json list) fills the class list."""
    if not file:
        return gr.skip()
    path = getattr(file, "name", file)
    parsed = load_classes_file(path)
    for w in parsed.warnings:
        warn_user(w)
    return "\n".join(parsed.names)
