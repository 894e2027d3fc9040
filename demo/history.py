"""The last few records of a session, for the Compare tab: small snapshots of each Run.

A :class:`RunRecord` is what the Compare tab needs of one :class:`~demo.state.Session` and
nothing heavier: per method the predictions (class indices), accuracy and settings, the image
set's identity (file names, content hashes, labels), the models and a work-folder path for
thumbnails. No features and no image bytes, so keeping ``core.config.APP_RUN_HISTORY`` of them
per session costs a few integers per image and method.

Which records are kept (:func:`remember`): one entry per Run *and* combination of recipes. A
Run is identified by its work folder (new at every Run, shared by the Run's streamed stages and
by every slider re-solve of it: ``demo.run``). So a slider move updates the current entry (its
label then says the new settings) instead of filling the history; a recipe switch makes its own
entry (paper vs official is the A/B users want), and switching back updates that one again. The
entry touched last is the newest; the oldest beyond the cap are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.config import APP_RUN_HISTORY, DEFAULT_TEMPLATE, MethodSettings
from core.methods import METHOD_TITLES
from demo.precision import app_precision, precision_text
from demo.provenance import lam_text, models_text

METHOD_ORDER = ("clip", "otfusion", "gpua", "lazsl")  # rows of every comparison
LABEL_PROMPT_CHARS = 32  # a prompt template in a record's label is cut after this many


@dataclass(frozen=True)
class RunRecord:
    """One entry of a session's history (see the module docstring).

    Attributes
    ----------
    id : int
        Entry number in this session (1, 2, ...), kept when the entry is updated.
    run : str
        The Run's identity (its work folder); ``thumbs`` live there while the Run is current.
    created : float
        Wall-clock time of the last change (``time.time()``).
    methods : tuple of str
        Methods with a result, CLIP first.
    settings : MethodSettings
        The record's settings (every method's, as the session held them).
    preds : dict method -> (n,) long tensor
        Top-1 class index per image (into ``class_names``).
    accuracy : dict method -> float or None
    names, shas : tuple of str, one per image
        File names and sha256 of the image bytes (the image set's identity).
    truth : (n,) long tensor
        True class index per image, -1 where unknown.
    class_names : tuple of str
    models : str
        Every model of the Run (``provenance.models_text``).
    short_models : str
        The primary VLM (+ primary VFM), for the label.
    templates : tuple of str
    precision : str
        As picked ("auto", "fp32", ...).
    precisions : str
        The precision each model ran in (``demo.precision.precision_text``).
    thumbs : tuple of str
        Thumbnail paths (gone once a later Run replaced this one's folder).
    """

    id: int
    run: str
    created: float
    methods: tuple[str, ...]
    settings: MethodSettings
    preds: dict = field(repr=False)
    accuracy: dict
    names: tuple[str, ...] = field(repr=False)
    shas: tuple[str, ...] = field(repr=False)
    truth: torch.Tensor = field(repr=False)
    class_names: tuple[str, ...] = field(repr=False)
    models: str = ""
    short_models: str = ""
    templates: tuple[str, ...] = ()
    precision: str = ""
    precisions: str = ""
    thumbs: tuple[str, ...] = field(default=(), repr=False)

    @property
    def n_images(self) -> int:
        return len(self.names)

    @property
    def n_labelled(self) -> int:
        return int((self.truth >= 0).sum())

    @property
    def recipes(self) -> tuple[str, ...]:
        return recipes(self.settings)

    @property
    def label(self) -> str:
        """A short line saying what produced the record: number, time, models, images, the
        recipe and main knob of each fused method (all read from the record)."""
        clock = time.strftime("%H:%M:%S", time.localtime(self.created))
        parts = [key_settings(m, self.settings) for m in self.methods if m != "clip"]
        what = "; ".join(parts) if parts else "CLIP only"
        extras = "".join(f" · {x}" for x in self._extract_changes())
        return (f"#{self.id} {clock} · {self.short_models}{extras} · {self.n_images} images · "
                f"{what}")

    def _extract_changes(self) -> list[str]:
        """Feature settings that differ from the app's defaults (prompts, precision)."""
        out = []
        if self.templates and self.templates != (DEFAULT_TEMPLATE,):
            text = " | ".join(self.templates)
            out.append(f"prompt “{text[:LABEL_PROMPT_CHARS]}"
                       f"{'…' if len(text) > LABEL_PROMPT_CHARS else ''}”")
        if self.precision and self.precision != app_precision():
            out.append(self.precision)
        return out

    def predicted(self, method: str) -> list[str]:
        """Class names predicted by ``method``, one per image."""
        return [self.class_names[i] for i in self.preds[method].tolist()]

    def true_names(self) -> list[str | None]:
        """True class name per image, None where unknown."""
        return [self.class_names[i] if i >= 0 else None for i in self.truth.tolist()]


def recipes(settings: MethodSettings) -> tuple[str, ...]:
    """The recipe of every method that has one: with the Run, the key of a history entry."""
    return (settings.otfusion.recipe, settings.gpua.recipe, settings.lazsl.recipe)


def key_settings(method: str, s: MethodSettings) -> str:
    """A method's recipe and main knob, short enough for a dropdown label."""
    title = METHOD_TITLES.get(method, method)
    if method == "otfusion":
        return f"{title} {s.otfusion.recipe} {lam_text(s.otfusion)}"
    if method == "gpua":
        return f"{title} {s.gpua.recipe} λ {s.gpua.lam:g}"
    if method == "lazsl":
        return f"{title} {s.lazsl.recipe} θ {s.lazsl.theta:g}"
    return title


def record_of(session, entry_id: int, created: float) -> RunRecord:
    """The snapshot of ``session`` (a ``demo.state.Session``) as entry ``entry_id``."""
    ex = session.extraction
    methods = tuple(m for m in session.methods if m in session.results)
    labels = ex.features.labels
    n = len(ex.items)
    truth = labels.clone() if labels is not None else torch.full((n,), -1, dtype=torch.long)
    vlms = [name for name, _, _ in ex.features.vlms()]
    vfms = [name for name, _ in ex.features.vfms()]
    short = " + ".join([*vlms[:1], *vfms[:1]])
    return RunRecord(
        id=entry_id, run=session.workdir, created=created, methods=methods,
        settings=session.settings,
        preds={m: session.results[m].pred for m in methods},
        accuracy={m: session.results[m].accuracy for m in methods},
        names=tuple(it.name for it in ex.items), shas=tuple(it.sha256 for it in ex.items),
        truth=truth, class_names=tuple(ex.class_names), models=models_text(ex),
        short_models=short, templates=tuple(ex.settings.templates),
        precision=str(ex.settings.precision), precisions=precision_text(ex),
        thumbs=tuple(session.thumbs))


def remember(history: tuple[RunRecord, ...], session, *, now: float | None = None,
             keep: int = APP_RUN_HISTORY) -> tuple[RunRecord, ...]:
    """``history`` with ``session``'s snapshot as its newest entry: the entry of the same Run and
    recipes is replaced (keeping its number), else a new one is added; at most ``keep``."""
    if keep < 1:
        raise ValueError(f"run history: expected to keep at least 1 record, got {keep}.")
    now = time.time() if now is None else now
    key = (session.workdir, recipes(session.settings))
    same = next((r for r in history if (r.run, r.recipes) == key), None)
    entry_id = same.id if same is not None else max((r.id for r in history), default=0) + 1
    others = tuple(r for r in history if r is not same)
    return (*others, record_of(session, entry_id, now))[-keep:]
