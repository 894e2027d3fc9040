"""Warm-up at start: what the first Run, map and GPUA fit of a process would otherwise pay.

``demo.ui.launch`` runs ``warm_up`` in a daemon thread while the server starts, so the first
user's UMAP map and GPUA fit cost what later ones do (``benchmarks/warmup.py`` measures first vs
second, with and without it). Four one-off costs:

- the app's default VLM and VFM, loaded in the app's default precision ("auto" on a CPU): the
  models built from their weights, the precision's twin (bf16 weights, int8 layers) and, where
  "auto" runs a model in "onnx-int8", its int8 ONNX model exported and quantised once (~40 s per
  model at real size) and kept on disk (``core.models.onnx_runtime``). Only on a CPU (on a GPU a
  Run loads the models onto it) and only for models whose weights are already in the local
  cache: a warm-up never downloads (models without them are skipped silently; the first Run then
  downloads and loads them). A Run that needs the same model meanwhile waits for it
  (``core.models.load_encoder`` builds each model once) and its progress says so. At exit, the
  load or export in progress is finished first (up to ~40 s);
- torch's optimiser: the first ``torch.optim`` optimiser of a process imports ``torch._dynamo``
  (GPUA's THS refinement runs AdamW);
- the first GPUA fit's own first calls (autograd, the linear-algebra kernels of the Procrustes
  and THS steps): a fit on a few synthetic samples runs them;
- UMAP: importing umap-learn (numba, pynndescent) and the numba JIT compilation of its fit,
  which a fit on a few hundred random points triggers (the compiled code does not depend on the
  number of points).

And one recurring cost: Python's full (generation-2) garbage collections scan every tracked object
of the process, and after torch, transformers, Gradio, plotly and umap-learn are imported that is
millions of objects: 0.4-0.9 s pauses that landed in every twelfth slider move or so
(benchmarks/README.md, "App"). ``freeze_heap`` moves what start-up made (modules, models' code,
the app's components) into the permanent generation, which collections skip.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)
_STOP = threading.Event()  # set at exit: no further warm-up step starts

WARM_SAMPLES = 40  # synthetic samples of the tiny GPUA fit
WARM_CLASSES = 4
WARM_MAP_POINTS = 300  # random points of the tiny UMAP fit (its exact-neighbour path, as maps'
WARM_MAP_DIM = 64  # of up to 4,096 points take)


def warm_gpua() -> None:
    """A GPUA fit on ``WARM_SAMPLES`` synthetic samples (imports torch.optim / torch._dynamo)."""
    import core.synthetic as synthetic
    from core.methods import FeatureSet, run_method

    data = synthetic.make_synthetic(WARM_SAMPLES, WARM_CLASSES, seed=0)
    run_method("gpua", FeatureSet(vlm_image=data.vlm_image, text=data.vlm_text,
                                  vfm_image=data.vfm_image))


def warm_umap() -> None:
    """A UMAP map of ``WARM_MAP_POINTS`` random points (imports umap-learn, JIT-compiles it)."""
    from demo.maps import project_2d

    x = np.random.default_rng(0).standard_normal((WARM_MAP_POINTS, WARM_MAP_DIM))
    project_2d(x.astype(np.float32), method="umap")


def warm_models(models: Sequence[str]) -> list[str]:
    """Load each of ``models`` (registry keys: the app's default VLM and VFM) in the app's
    default precision, its one-time setup included (the onnx-int8 export), where its weights are
    already cached (never a download) and the app runs on a CPU; returns the keys loaded."""
    import torch

    from core.models import load_encoder
    from demo.inputs import missing_weights
    from demo.precision import app_precision

    if torch.cuda.is_available():  # a Run loads the models onto the GPU, in its own slot
        return []
    precision, loaded = app_precision(), []
    for key in models:
        if _STOP.is_set():
            break
        if missing_weights([key]):
            continue
        load_encoder(key, precision=precision)  # once per process, under the loader's lock
        loaded.append(key)
    return loaded


def warm_up(parts=("models", "gpua", "umap"), models: Sequence[str] = ()) -> dict[str, float]:
    """Run the warm-ups named in ``parts`` ("models": ``models``, the app's default VLM and VFM,
    see `warm_models`; "gpua"; "umap"); returns the seconds each took. A failure is logged,
    never raised: a warm-up only saves time."""
    steps = {"models": lambda: warm_models(models), "gpua": warm_gpua, "umap": warm_umap}
    seconds = {}
    for part in parts:
        if _STOP.is_set():
            break
        start = time.perf_counter()
        try:
            steps[part]()
        except Exception:  # e.g. umap-learn missing: the map then says so when asked for
            log.exception("warm-up of %s failed", part)
        seconds[part] = time.perf_counter() - start
    log.info("warm-up done: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    freeze_heap()  # what the warm-up imported (umap-learn, numba, torch._dynamo) too
    return seconds


def freeze_heap() -> None:
    """Collect garbage once, then exempt every object alive now from later collections
    (``gc.freeze``): start-up state lives as long as the process, and scanning it made each full
    collection a pause of up to a second. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def start(models: Sequence[str] = ()) -> threading.Thread | None:
    """``warm_up`` (of ``models``: the app's default VLM and VFM) in a daemon thread, unless
    ``FUSIONLAB_WARM_UP=0`` (tests: their app processes are short and the warm-up would only take
    their CPU). At exit the step in progress ends and no other starts."""
    if os.environ.get("FUSIONLAB_WARM_UP", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    thread = threading.Thread(target=warm_up, kwargs={"models": tuple(models)}, name="warm-up",
                              daemon=True)
    thread.start()
    atexit.register(_finish, thread)
    return thread


def _finish(thread: threading.Thread) -> None:
    # A daemon thread still inside torch or numba while the interpreter finalises aborts the
    # process ("terminate called without an active exception", exit code 134).
    _STOP.set()
    thread.join()
