"""The Ray Data engine of ``core.pipeline.distributed``: decode on CPU tasks, encode on actors.

    files (folder, list, or any URL pyarrow / fsspec read) -> read_binary_files
      -> map_batches(prepare_batch)            CPU tasks, DECODE_BATCH files each
      -> map_batches(Encode, model 0)          actor pool: 1 / n_models GPU each, or
      -> map_batches(Encode, model 1) ...      RAY_ACTOR_CPUS CPUs each where there is no GPU
      -> driver: counts rows, reports progress

Ray schedules, retries and streams; nothing here is a scheduler. The batch size of each model's
actors is its registry entry's ``batch_size``. Ray is an optional extra
(``requirements-ray.txt``): importing this module works without it, running it says what to
install.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from core.config import (
    DECODE_BATCH,
    RAY_ACTOR_CPUS,
    RAY_DECODE_CPUS,
    RAY_REQUIREMENTS,
    RAY_WORKERS,
)
from core.data import IMAGE_SUFFIXES
from core.pipeline.distributed import Encode, Prepare, StoreJob, Summary, present_hashes
from core.pipeline.progress import Progress, WorkProgress
from core.pipeline.store import FeatureStore


def require_ray():
    """The ``ray`` module, or RuntimeError naming the requirements file to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the extra's "data" part)
    except ImportError as exc:
        raise RuntimeError(
            f"--engine ray needs Ray Data, which is not installed ({exc}). Install the optional "
            f"extra with `pip install -r {RAY_REQUIREMENTS}`, or use --engine local."
        ) from None
    return ray


def prepare_batch(batch: Mapping[str, np.ndarray], job: StoreJob, present, root: str):
    """A Ray task's share of the CPU stage. ``present`` is an object reference: its arrays are
    read from the node's object store without a copy, not sent with every task."""
    import ray

    return Prepare(job, ray.get(present), root)(batch)


def actor_cpus(cpus: float, n_actors: int) -> float:
    """CPUs each model actor asks for: ``RAY_ACTOR_CPUS``, less when the actors would leave the
    read + decode tasks under ``RAY_DECODE_CPUS``: actors holding every CPU wait forever for
    decoded batches that no task can run to make (2 cores, 2 models x 2 workers at 0.5 did)."""
    return min(RAY_ACTOR_CPUS, max(cpus - RAY_DECODE_CPUS, 0.01 * n_actors) / n_actors)


def _filesystem(source: str | Sequence[str]):
    """A pyarrow filesystem for an fsspec URL pyarrow cannot open itself (None otherwise)."""
    first = source if isinstance(source, str) else (source[0] if source else "")
    scheme = first.split("://", 1)[0] if "://" in first else ""
    if scheme in ("", "file", "local", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"):
        return None
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fsspec.filesystem(scheme)))


def run_ray(source: str | Sequence[str | os.PathLike], job: StoreJob, store: FeatureStore, *,
            address: str | None = None, workers: int | None = None,
            progress: Progress | None = None,
            fail_after: tuple[int, str] | None = None) -> Summary:
    """Extract ``job``'s features of the images at ``source`` into ``store`` on Ray.

    Parameters
    ----------
    source : a folder or URL (every image file under it), or a list of file paths / URLs
    address : Ray cluster to join ("auto": the one ``ray start`` made here); None starts a local
        one, unless this process already joined one (``ray.init`` was called).
    workers : actors per model; default one per GPU (each model holding 1 / n_models of it), or
        ``RAY_WORKERS`` without GPUs.
    fail_after : tests only, see ``core.pipeline.distributed.Encode``.

    The store must be a folder every node can write (a shared file system). Raises RuntimeError
    when Ray is not installed, ValueError when ``source`` holds no image file.
    """
    ray = require_ray()
    if not ray.is_initialized():
        # Workers import core from this checkout: put it on their path (a local cluster).
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": here}})
    start, summary = time.perf_counter(), Summary()
    if not isinstance(source, str):
        source = [str(p) for p in source]
    root = source if isinstance(source, str) else ""
    paths = source if isinstance(source, str) else list(source)
    if not isinstance(source, str) and not paths:
        return summary
    def read(where, blocks=None):
        return ray.data.read_binary_files(
            where, include_paths=True, filesystem=_filesystem(source), num_cpus=RAY_DECODE_CPUS,
            override_num_blocks=blocks, file_extensions=[s.lstrip(".") for s in IMAGE_SUFFIXES]
            + [s.lstrip(".").upper() for s in IMAGE_SUFFIXES])

    files = read(paths).input_files()  # lists the folder (metadata only)
    total = len(files)
    if total == 0:
        raise ValueError(f"--images: no image file ({', '.join(IMAGE_SUFFIXES)}) under "
                         f"{source}.")
    # One block per DECODE_BATCH files: Ray's default packs small files into one block, which
    # one actor would then encode alone however many workers there are.
    ds = read(files, -(-total // DECODE_BATCH))
    ds = ds.map_batches(prepare_batch, batch_size=DECODE_BATCH, num_cpus=RAY_DECODE_CPUS,
                        fn_kwargs={"job": job, "present": ray.put(present_hashes(store, job)),
                                   "root": root.rstrip("/")})
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n_models, size = len(job.models), workers or gpus or RAY_WORKERS
    resources = {"num_cpus": actor_cpus(ray.cluster_resources().get("CPU", 1), n_models * size)}
    if gpus:
        resources["num_gpus"] = 1 / n_models
    for i, spec in enumerate(job.models):
        ds = ds.map_batches(Encode, batch_size=spec.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=size),
                            fn_constructor_kwargs={"job": job, "index": i,
                                                   "store_root": str(store.root),
                                                   "fail_after": fail_after},
                            **resources)
    work = WorkProgress(progress or (lambda *a: None), total)
    for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
        work.advance(summary.add(rows, job), "extracting features (ray)")
    summary.seconds = time.perf_counter() - start
    return summary
