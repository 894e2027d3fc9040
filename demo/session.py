"""Per-session state of the app and the input checks shared by the handlers.

A :class:`Session` holds what one user computed: the extraction (features), the solver settings,
every method's result and a private work folder for thumbnails and downloads. In the app it lives
in the server-side store of ``demo.store`` (time to live, caps, least recently used eviction),
never in module globals; the handlers take and return it, so tests call them directly. Models are
shared read-only through ``core.models.load``' loader cache.

Upload limits (besides Gradio's per-file ``max_file_size``): one Run reads at most
``MAX_UPLOAD_BYTES`` of image bytes (``FUSIONLAB_MAX_UPLOAD_BYTES``, default 1 GiB; they stay in
the session, whose bytes the store caps) and at most ``MAX_CLASSES`` class names (1,000, as many as
ImageNet: every class is a prompt to encode on the shared model slot).
"""

from __future__ import annotations

import functools
import html
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from core.data import ImageSet, NoImagesError, decode_image, load_attributes, load_image_set
from core.data import parse_classes as _parse_classes
from core.methods import METHOD_TITLES, MethodResult, SolverSettings
from core.models import WeightsUnavailableError, ensure_weights, get_spec, list_models
from core.pipeline import Extraction, parse_size
from demo.examples import example_paths
from demo.messages import scrub_paths, weights_message

log = logging.getLogger("fusionlab.app")

MAX_UPLOAD_BYTES = 1024**3  # image bytes one Run may read (and its session keep)
MAX_CLASSES = 1000
THUMB_SIDE = 256  # gallery thumbnails (longer side, pixels)
VIEW_SIDE = 768  # images decoded for overlays and crop views
SESSION_ROOT = Path(tempfile.gettempdir()) / "fusionlab-sessions"
SESSION_MAX_AGE_S = 6 * 3600  # work folders older than this are swept at the next Run
TRANSDUCTIVE = ("otfusion", "gpua")  # methods that spread the images over the classes
DEFAULT_VLM = "clip-vit-b16"
DEFAULT_VFM = "dinov2-base"

try:  # Hugging Face ZeroGPU: the model step runs on a GPU slot; a no-op everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment

    def gpu(fn=None, **_options):
        return fn if fn is not None else (lambda f: f)


@dataclass(frozen=True)
class Session:
    """What one user computed: features, settings, results, and derived-view memos.

    Attributes
    ----------
    extraction : Extraction
        Features of the user's images (the expensive part; never recomputed by sliders).
    methods : tuple of str
        Methods run, CLIP first.
    settings : SolverSettings
    results : dict method -> MethodResult
    workdir : str
        Private folder: ``thumbs/`` (one JPEG per image) and ``export-*/`` downloads.
    thumbs : tuple of str, one path per image
    notes : tuple of str
        Warnings of the run, shown in the notes panel.
    memo : dict
        Cached derived views (2-D projections, segmentations, the embedding-map GPUA); keys
        include what they depend on, so a re-solve never shows a stale one.
    """

    extraction: Extraction
    methods: tuple[str, ...]
    settings: SolverSettings
    results: dict[str, MethodResult]
    workdir: str
    thumbs: tuple[str, ...]
    notes: tuple[str, ...] = ()
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.extraction.class_names)

    @property
    def names(self) -> list[str]:
        return self.extraction.names

    @property
    def labels(self):
        """(n,) long tensor with -1 where unknown, or None."""
        return self.extraction.features.labels

    @property
    def has_labels(self) -> bool:
        labels = self.labels
        return labels is not None and bool((labels >= 0).any())

    def title(self, method: str) -> str:
        return METHOD_TITLES.get(method, method)


def delete_session(session) -> None:
    """``gr.State`` delete callback: remove the session's work folder."""
    if isinstance(session, Session):
        shutil.rmtree(session.workdir, ignore_errors=True)


def new_workdir() -> str:
    """A fresh private folder under the system temp dir (Gradio may serve files from there)."""
    SESSION_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in SESSION_ROOT.iterdir():  # sweep folders of sessions that never said goodbye
        try:
            if now - old.stat().st_mtime > SESSION_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    path = SESSION_ROOT / uuid.uuid4().hex
    path.mkdir()
    return str(path)


def write_thumbnails(extraction: Extraction, workdir: str, progress=None) -> tuple[str, ...]:
    """One small JPEG per image for the galleries (decoded once per Run)."""
    out = Path(workdir) / "thumbs"
    out.mkdir(exist_ok=True)
    paths = []
    n = len(extraction.items)
    for i, item in enumerate(extraction.items):
        if progress is not None and i % 50 == 0:
            progress(i, n, "making thumbnails")
        path = out / f"{i:06d}.jpg"
        decode_image(item, max_side=THUMB_SIDE).save(path, format="JPEG", quality=85)
        paths.append(str(path))
    return tuple(paths)


# ----------------------------------------------------------------------------- errors


def user_error(message: str, *, title: str = "Please check the inputs",
               duration: float | None = 12) -> gr.Error:
    """A ``gr.Error`` whose text is escaped (file names come from uploads) and keeps line breaks;
    paths of server folders are shortened to their last component (``scrub_paths``)."""
    text = html.escape(scrub_paths(message)).replace("\n", "<br>")
    return gr.Error(text, title=title, duration=duration, print_exception=False)


def user_errors(fn):
    """Turn every failure of a handler into a readable ``gr.Error``; never a traceback.

    ValueError (our validation and core's, whose messages say what to fix) and missing weights
    go to the user as they are; anything else is logged with its traceback on the server and
    the user gets a short note.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except WeightsUnavailableError as exc:
            log.warning("weights unavailable: %s", exc.key)
            raise user_error(weights_message(exc), title="Model weights are not available",
                             duration=None) from None
        except (ValueError, NoImagesError) as exc:
            raise user_error(str(exc)) from None
        except Exception as exc:
            log.exception("handler %s failed", getattr(fn, "__name__", fn))
            raise user_error(
                f"Something went wrong on the server ({type(exc).__name__}). Try again, or with "
                "fewer images; the details are in the server log.", title="Internal error"
            ) from None

    return wrapper


def warn_user(message: str) -> None:
    """A toast that does not stop the handler (file names escaped)."""
    gr.Warning(html.escape(scrub_paths(message)))


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
        return ("a photo of a {}.",)
    bad = [t for t in lines if t.count("{}") != 1]
    if bad:
        raise ValueError(
            f"Prompt template {bad[0]!r} needs exactly one {{}} where the class name goes, e.g. "
            "'a photo of a {}.'"
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
            "uses 90; 16-32 is a good CPU compromise), or untick LaZSL."
        )


# ----------------------------------------------------------------------------- models


def model_choices(kind: str, extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Dropdown choices: the visible registry entries plus explicitly enabled hidden ones."""
    extra_specs = [get_spec(k) for k in extra]
    if kind == "vlm":
        specs = [s for s in extra_specs if s.kind == "vlm"] + list_models("vlm")
        return [(s.display_name, s.key) for s in specs]
    vfms = [s for s in extra_specs if s.kind == "vfm"] + list_models("vfm")
    towers = [s for s in extra_specs if s.kind == "vlm"] + list_models("vlm")
    return [(s.display_name, s.key) for s in vfms] + [
        (f"{s.display_name} - image tower", s.key) for s in towers
    ]


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
