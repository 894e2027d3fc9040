"""Extraction in stages, so a caller can show results before every model has run (issue 12).

What a user waits for on a CPU is the forward passes: the first VLM's global features make CLIP
zero-shot possible; the VFMs (and further VLMs) add OTFusion and GPUA; LaZSL's crops cost one more
VLM forward per crop per image and come last. :func:`extract_in_stages` yields one
:class:`Stage` per step, each an ordinary :class:`Extraction` of everything computed so far, so
the app can stream results (CLIP first) and the user can move sliders on what is there.

The stages share their features through the feature cache: stage 2 finds stage 1's VLM features
there and runs no VLM forward again (a test counts the forward passes). Without a cache (the
caller passed None), a temporary one is used and deleted when the generator finishes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from core.data import ImageSet
from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import Extraction, ExtractSettings, _load_models, extract
from core.pipeline.progress import Progress

__all__ = ["Stage", "extract_in_stages", "stage_settings"]

# Methods each stage's features make possible (the later stages include the earlier ones').
STAGE_METHODS = {
    "vlm": ("clip",),
    "models": ("clip", "otfusion", "gpua"),
    "crops": ("clip", "otfusion", "gpua", "lazsl"),
}


@dataclass(frozen=True)
class Stage:
    """One step of a staged extraction.

    Attributes
    ----------
    name : {"vlm", "models", "crops"}
        "vlm": the first VLM's image and text features; "models": every VLM and VFM; "crops":
        LaZSL's crops and attribute sentences as well.
    extraction : Extraction
        Everything computed so far (its ``settings`` are this stage's, see :func:`stage_settings`).
    methods : tuple of str
        The methods these features can run (``STAGE_METHODS``).
    last : bool
        True for the final stage (its extraction equals ``extract(image_set, classes, settings)``).
    """

    name: str
    extraction: Extraction
    methods: tuple[str, ...]
    last: bool


def stage_settings(settings: ExtractSettings) -> list[tuple[str, ExtractSettings]]:
    """The settings of each stage, in order; stages that would add nothing are left out."""
    first = replace(settings, vfm=None, extra_vfms=(), extra_vlms=(), n_crops=0)
    models = replace(settings, n_crops=0)
    stages = [("vlm", first)]
    if models != first:
        stages.append(("models", models))
    if settings.n_crops > 0:
        stages.append(("crops", settings))
    return stages


def extract_in_stages(
    image_set: ImageSet,
    class_names: Sequence[str],
    settings: ExtractSettings,
    *,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    extract_fn=None,
) -> Iterator[Stage]:
    """Yield a :class:`Stage` as soon as each step's features exist (see the module docstring).

    Parameters and errors are :func:`core.pipeline.extract`'s; a step that fails raises from the
    generator after the earlier stages were yielded, so a caller keeps what it already showed.
    Progress descriptions are prefixed with the stage ("1/3 ..."). ``extract_fn``: what runs
    each step (default :func:`core.pipeline.extract`; the app passes its ZeroGPU-wrapped one),
    called as ``extract_fn(image_set, class_names, settings, cache=..., progress=...)``.
    """
    _load_models(settings)  # every model key checked before the first stage runs (loads nothing)
    steps = stage_settings(settings)
    tmp = None
    if cache is None:
        tmp = tempfile.mkdtemp(prefix="fusionlab-stages-")
        cache = FeatureCache(tmp, max_bytes=0)
    try:
        for i, (name, step) in enumerate(steps):
            report = None
            if progress is not None:
                tag = f"{i + 1}/{len(steps)}"

                def report(done, total, desc, _tag=tag):
                    progress(done, total, f"{_tag} {desc}")
            ex = (extract_fn or extract)(image_set, class_names, step, cache=cache,
                                         progress=report)
            # a first stage that is also the last has every model there is (none besides it)
            methods = STAGE_METHODS["models" if (name, len(steps)) == ("vlm", 1) else name]
            yield Stage(name, ex, methods, i == len(steps) - 1)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
