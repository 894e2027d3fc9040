"""Dataset-size feature extraction into the sharded store (``core.pipeline.store``).

Two stages, the same code on both engines:

- :class:`Prepare` (CPU): file bytes -> validated, hashed (sha256), decoded as the app decodes
  (``DECODE_MAX_SIDE``) and preprocessed per model (uint8, ``to_uint8``). Images every model
  already has in the store are dropped here, before decoding: a rerun resumes.
- :class:`Encode` (one per model): the forward pass on the rows that model lacks, then one store
  shard per batch, written atomically: a worker killed mid-run costs only its batch.

Engines: ``"local"`` (:func:`run_local`, this process, a loop over ``DECODE_BATCH`` files) and
``"ray"`` (``core.pipeline.ray_engine``: Ray Data CPU tasks run Prepare, one actor pool per
model runs Encode). Both give the same store, bit for bit, as ``core.pipeline.extraction.extract``
would compute (features do not depend on batching: see ``Encoder._run_batches``).

Rows between the stages are dicts of numpy columns: ``name``, ``sha256``, ``error`` ("" when
fine), ``count`` (1; a tally row counts the images dropped as already stored), and per model i
``need_i`` (bool) and ``pixels_i`` (uint8 (3, S, S), zeros where not needed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.config import DECODE_BATCH, PRECISION
from core.data import IMAGE_SUFFIXES, BadImageError, ImageItem, SkippedFile, decode_image
from core.models import ModelSpec, get_spec, load_encoder, to_uint8
from core.pipeline.cache import model_key
from core.pipeline.extraction import DECODE_MAX_SIDE
from core.pipeline.progress import Progress, WorkProgress
from core.pipeline.store import FeatureStore

KIND = "global"  # the feature kind extracted at scale (LaZSL crops stay on the local path)


@dataclass(frozen=True)
class StoreJob:
    """What to extract: the models (specs travel to the workers, so test models registered
    only in the driver work too), their precision and device (None: the worker's best)."""

    models: tuple[ModelSpec, ...]
    precision: str = PRECISION
    device: str | None = None

    @classmethod
    def from_keys(cls, keys: Sequence[str], precision: str = PRECISION,
                  device: str | None = None) -> StoreJob:
        """Each model once, in order; ValueError for an unknown key or none at all."""
        specs = tuple(get_spec(k) for k in dict.fromkeys(keys))
        if not specs:
            raise ValueError("models: name at least one VLM or VFM to extract.")
        return cls(specs, precision, device)

    @property
    def store_keys(self) -> list[str]:
        """The store's model key of each model (the cache's ``model_key``)."""
        return [model_key(spec, self.precision) for spec in self.models]


@dataclass
class Summary:
    """What a run did. ``encoded[model key]``: rows written; ``stored``: images every model
    already had; ``skipped``: unreadable files with the reason."""

    files: int = 0
    stored: int = 0
    encoded: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, rows: Mapping[str, np.ndarray], job: StoreJob) -> int:
        """Count one output batch; returns the files it accounts for."""
        count = rows["count"].astype(np.int64)
        tally = rows["sha256"] == ""
        errors = rows["error"] != ""
        self.stored += int(count[tally & ~errors].sum())
        self.skipped += [SkippedFile(str(n), str(e))
                         for n, e in zip(rows["name"][errors], rows["error"][errors])]
        for i, key in enumerate(job.store_keys):
            self.encoded[key] = self.encoded.get(key, 0) + int(rows[f"need_{i}"].sum())
        done = int(count.sum())
        self.files += done
        return done

    def lines(self) -> list[str]:
        out = [f"images: {self.files} files, {self.stored} already in the store, "
               f"{len(self.skipped)} skipped, {self.seconds:.1f} s"]
        out += [f"  {key}: {n} new rows" for key, n in self.encoded.items()]
        return out


def present_hashes(store: FeatureStore, job: StoreJob) -> dict[str, np.ndarray]:
    """``{store model key: sorted bytes array of the sha256 hex it holds}`` (compact: sent to
    every decode task)."""
    return {key: np.sort(np.array(sorted(store.present(key, KIND)), dtype="S64"))
            for key in job.store_keys}


class Prepare:
    """The CPU stage (see the module docstring). ``present`` from :func:`present_hashes`."""

    def __init__(self, job: StoreJob, present: Mapping[str, np.ndarray], root: str = ""):
        self.job = job
        self.present = [present.get(key, np.array([], dtype="S64")) for key in job.store_keys]
        self.root = str(root)

    def _name(self, path: str) -> str:
        """The path relative to the root, as ``core.data`` names folder images."""
        path = str(path)
        prefix = self.root.rstrip("/") + "/"
        return path[len(prefix):] if self.root and path.startswith(prefix) else path

    def _has(self, i: int, sha: str) -> bool:
        found = self.present[i]
        at = int(np.searchsorted(found, sha.encode()))
        return at < len(found) and found[at] == sha.encode()

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs, m = self.job.models, len(self.job.models)
        rows: list[tuple[str, str, str, int, list]] = []  # name, sha, error, count, views
        stored = 0
        for path, data in zip(batch["path"], batch["bytes"]):
            name = self._name(path)
            try:
                item = ImageItem.from_bytes(name, bytes(data))
                need = [not self._has(i, item.sha256) for i in range(m)]
                if not any(need):
                    stored += 1
                    continue
                image = decode_image(item, max_side=DECODE_MAX_SIDE)
            except BadImageError as exc:
                rows.append((name, "", exc.reason, 1, [None] * m))
                continue
            rows.append((name, item.sha256, "", 1,
                         [to_uint8(image, s).numpy() if n else None for s, n in zip(specs, need)]))
        if stored:
            rows.append(("", "", "", stored, [None] * m))
        out = {"name": np.array([r[0] for r in rows], dtype=object),
               "sha256": np.array([r[1] for r in rows], dtype=object),
               "error": np.array([r[2] for r in rows], dtype=object),
               "count": np.array([r[3] for r in rows], dtype=np.int64)}
        for i, spec in enumerate(specs):
            zeros = np.zeros((3, spec.image_size, spec.image_size), dtype=np.uint8)
            views = [r[4][i] for r in rows]
            out[f"need_{i}"] = np.array([v is not None for v in views], dtype=bool)
            out[f"pixels_{i}"] = np.stack([zeros if v is None else v for v in views]) if rows \
                else np.zeros((0, *zeros.shape), dtype=np.uint8)
        return out


class Encode:
    """One model's stage: forward the rows it needs, one store shard per call.

    ``fail_after`` (tests: a worker dying mid-run) is ``(k, how)``: after k calls the next one
    raises RuntimeError (``how="raise"``), or ends the process (``how="exit:<marker file>"``,
    once: the first worker to get there creates the marker).
    """

    def __init__(self, job: StoreJob, index: int, store_root: str,
                 fail_after: tuple[int, str] | None = None):
        self.index, self.spec = index, job.models[index]
        self.key = job.store_keys[index]
        self.encoder = load_encoder(self.spec, device=job.device, precision=job.precision)
        self.store = FeatureStore(store_root)
        self.calls, self.fail_after = 0, fail_after

    def _maybe_fail(self) -> None:
        if self.fail_after is None or self.calls < self.fail_after[0]:
            return
        how = self.fail_after[1]
        if how == "raise":
            raise RuntimeError(f"injected failure after {self.calls} batches")
        marker = Path(how.split(":", 1)[1])
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        os._exit(1)  # a killed worker: no cleanup, no exception

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_fail()
        need = np.asarray(batch[f"need_{self.index}"], dtype=bool)
        if need.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch[f"pixels_{self.index}"][need]))
            feats = self.encoder.encode_pixels(pixels, batch_size=self.spec.batch_size)
            self.store.write_shard(self.key, KIND, [str(h) for h in batch["sha256"][need]], feats)
        self.calls += 1
        return {k: v for k, v in batch.items() if k != f"pixels_{self.index}"}


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under a local folder (``IMAGE_SUFFIXES``, any depth), sorted; or the file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"--images: {root} is neither a folder nor a file; give a folder of "
                         "images (or a URL with --engine ray).")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def run_local(files: Sequence[str | os.PathLike], job: StoreJob, store: FeatureStore, *,
              root: str = "", progress: Progress | None = None,
              fail_after: tuple[int, str] | None = None) -> Summary:
    """Both stages in this process, ``DECODE_BATCH`` files at a time (see the module)."""
    start, summary = time.perf_counter(), Summary()
    prepare = Prepare(job, present_hashes(store, job), root)
    encoders = [Encode(job, i, str(store.root), fail_after) for i in range(len(job.models))]
    work = WorkProgress(progress or (lambda *a: None), len(files))
    for at in range(0, len(files), DECODE_BATCH):
        paths = [str(p) for p in files[at:at + DECODE_BATCH]]
        rows = prepare({"path": paths, "bytes": [_read(p) for p in paths]})
        for encode in encoders:
            rows = encode(rows)
        work.advance(summary.add(rows, job), "extracting features")
    summary.seconds = time.perf_counter() - start
    return summary


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # reported as a bad file by Prepare (empty data)
        return b""


def prefetcher(engine: str, store: FeatureStore, *, address: str | None = None,
               workers: int | None = None, progress: Progress | None = None
               ) -> Callable[[Sequence[Path], object], Summary]:
    """``fill(paths, settings)``: put the global features of ``settings``' models for ``paths``
    into ``store`` (what ``core.eval``'s ``prefetch`` hook takes)."""

    def fill(paths: Sequence[Path], settings) -> Summary:
        job = StoreJob.from_keys([*settings.vlms, *settings.vfms], settings.precision,
                                 settings.device)
        if engine == "ray":
            from core.pipeline.ray_engine import run_ray

            return run_ray([str(p) for p in paths], job, store, address=address,
                           workers=workers, progress=progress)
        return run_local(paths, job, store, progress=progress)

    return fill
