"""The per-session record of the app: one immutable :class:`Session` per Run, and the helpers
every handler shares (work folder, thumbnails, readable errors, the ZeroGPU decorator).

The state model: a Run produces a :class:`Session` (the inputs' identity ``run_id``, the models
and features in ``extraction``, and per method the settings and the result); a slider produces a
new record for its method only (``with_method``), keeping ``run_id``; every view is derived from
the current record, never from widget defaults. A :class:`Session` lives in one ``gr.State`` per
browser tab (never in module globals). Models are shared read-only through ``core.models``' loader
cache.

Storage (session time-to-live, work folders): ``new_workdir``, ``remove_workdir``,
``delete_session``, ``SESSION_ROOT`` and ``THUMBS_ROOT`` below.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from core.config import MethodSettings
from core.data import NoImagesError, decode_image
from core.methods import METHOD_TITLES, MethodResult
from core.models import WeightsUnavailableError, get_spec
from core.pipeline import Extraction, FeatureCache
from demo.messages import scrub_paths

log = logging.getLogger("fusionlab.app")

THUMB_SIDE = 256  # gallery thumbnails (longer side, pixels)
VIEW_SIDE = 768  # images decoded for overlays and crop views
SESSION_ROOT = Path(tempfile.gettempdir()) / "fusionlab-sessions"
SESSION_MAX_AGE_S = 6 * 3600  # work folders older than this are swept at the next Run
# Gallery thumbnails live apart from the work folders, in one folder per Run named like its work
# folder, because this root alone is served as Gradio static files (``serve_thumbnails``): Gradio
# then skips its per-file allowed-path checks and cache copies, which cost ~2 ms per thumbnail on
# every slider move (60 per gallery page; benchmarks/README.md, "App"). A thumbnail is written
# once, under a Run's fresh folder, so a URL never changes content (browsers may cache it).
# Exports and other files stay in the work folder and go through Gradio's cache as before.
THUMBS_ROOT = Path(tempfile.gettempdir()) / "fusionlab-thumbs"

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
    settings : MethodSettings
        The settings of every method (``core.config``) that produced ``results``.
    results : dict method -> MethodResult
    workdir : str
        Private folder: ``thumbs/`` (one JPEG per image) and ``export-*/`` downloads.
    thumbs : tuple of str, one path per image
    notes : tuple of str
        Warnings of the run, shown in the notes panel.
    run_id : str
        Identity of the Run that produced the features (new at every Run, kept by slider
        re-solves): a derived view is shown only for the Run it was computed for.
    memo : dict
        Cached derived views (2-D projections, segmentations, the embedding-map GPUA); keys
        include what they depend on, so a re-solve never shows a stale one.
    """

    extraction: Extraction
    methods: tuple[str, ...]
    settings: MethodSettings
    results: dict[str, MethodResult]
    workdir: str
    thumbs: tuple[str, ...]
    notes: tuple[str, ...] = ()
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
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

    def with_method(self, method: str, settings: MethodSettings,
                    result: MethodResult | None) -> Session:
        """A new record where only ``method`` changed: its settings (taken from ``settings``) and
        its result; every other method keeps its settings and result, and ``run_id`` stays.

        Memos that show predictions (captions) or depend on the changed settings are dropped.
        """
        mine = getattr(settings, method)
        new_settings = self.settings.replace(**{method: mine})
        results = dict(self.results)
        if result is not None:
            results[method] = result
        memo = {k: v for k, v in self.memo.items() if k[0] != "captions"}
        return replace(self, settings=new_settings, results=results, memo=memo)


def need_session(session) -> Session:
    """The current record, or a readable error when nothing was run yet."""
    if not isinstance(session, Session):
        raise ValueError("Nothing to show yet: upload images, enter classes and press Run first.")
    return session


def delete_session(session) -> None:
    """``gr.State`` delete callback: remove the session's work folder."""
    if isinstance(session, Session):
        remove_workdir(session.workdir)


def remove_workdir(workdir: str | os.PathLike) -> None:
    """Remove a Run's work folder and its thumbnails folder (``THUMBS_ROOT``)."""
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(thumbs_dir(workdir), ignore_errors=True)


def thumbs_dir(workdir: str | os.PathLike) -> Path:
    """Where the thumbnails of the Run whose work folder is ``workdir`` go."""
    return THUMBS_ROOT / Path(workdir).name


def serve_thumbnails() -> None:
    """Serve ``THUMBS_ROOT`` as Gradio static files (process-wide; once, however many apps are
    built in the process: Gradio appends to its list on every call)."""
    global _THUMBS_SERVED
    if not _THUMBS_SERVED:
        THUMBS_ROOT.mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([THUMBS_ROOT])
        _THUMBS_SERVED = True


_THUMBS_SERVED = False


def new_workdir() -> str:
    """A fresh private folder under the system temp dir (Gradio may serve files from there)."""
    now = time.time()
    for root in (SESSION_ROOT, THUMBS_ROOT):  # sweep folders of sessions that never said goodbye
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            try:
                if now - old.stat().st_mtime > SESSION_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
    path = SESSION_ROOT / uuid.uuid4().hex
    path.mkdir()
    return str(path)


def write_thumbnails(extraction: Extraction, workdir: str, progress=None) -> tuple[str, ...]:
    """One small JPEG per image for the galleries (decoded once per Run), in
    ``thumbs_dir(workdir)``."""
    out = thumbs_dir(workdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    n = len(extraction.items)
    for i, item in enumerate(extraction.items):
        if progress is not None and i % 50 == 0:
            progress(i, n, "making thumbnails")
        path = out / f"{i:06d}.jpg"
        decode_image(item, max_side=THUMB_SIDE).save(path, format="JPEG", quality=85)
        paths.append(str(path))
    return tuple(paths)


def pipeline_progress(progress):
    """Pipeline-style ``cb(done, total, desc)`` over a ``gr.Progress`` (or nothing)."""
    if progress is None:
        return None
    return lambda done, total, desc: progress((int(done), int(max(total, 1))), desc=desc)


def cache_from_env(cache_dir: str | None = None) -> FeatureCache | None:
    """The on-disk feature cache: ``cache_dir``, else $FUSIONLAB_CACHE_DIR, else the default;
    $FUSIONLAB_FEATURE_CACHE=0 turns it off."""
    if os.environ.get("FUSIONLAB_FEATURE_CACHE", "1").strip() in ("0", "off", "false"):
        return None
    return FeatureCache(cache_dir or os.environ.get("FUSIONLAB_CACHE_DIR") or None)


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
    the user gets a short note. Generator handlers (a Run streaming its stages) are wrapped as
    generators, so what they yielded before failing stays on the page.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _as_user_error(exc, fn) from None

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _as_user_error(exc, fn) from None

    return wrapper


def _as_user_error(exc: Exception, fn) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, WeightsUnavailableError):
        log.warning("weights unavailable: %s", exc)  # the full text (paths) stays on the server
        return user_error(weights_message(exc.key), title=WEIGHTS_TITLE, duration=None)
    if isinstance(exc, (ValueError, NoImagesError)):
        return user_error(str(exc))
    log.exception("handler %s failed", getattr(fn, "__name__", fn), exc_info=exc)
    return user_error(
        f"Something went wrong on the server ({type(exc).__name__}). Try again, or with "
        "fewer images; the details are in the server log.", title="Internal error")


WEIGHTS_TITLE = "Model weights are not available"


def weights_message(*keys: str) -> str:
    """What a user can do about missing weights (of one or more models), without the server's
    paths or network errors."""
    names = [get_spec(k).display_name for k in keys]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"The weights of {listed} are not on this machine and cannot be downloaded now. On "
            f"a machine with internet run `python -m core download {' '.join(keys)}`, copy its "
            "Hugging Face cache here and set HF_HUB_OFFLINE=1 (or give this machine access to the "
            "Hub). The Playground tab works without any weights.")


def warn_user(message: str) -> None:
    """A toast that does not stop the handler (file names escaped)."""
    gr.Warning(html.escape(scrub_paths(message)))

