"""Sharded feature store: dataset-size feature sets in a few thousand files, not millions.

The per-file cache (``core.pipeline.cache``) writes one file per image, model and kind: fine for
an upload, millions of small files for ImageNet's train split. The store keeps the same entries
(same keys: ``model_key(spec, precision)``, ``kind_key(kind, settings)``, the image's sha256) in
shards of many rows:

    <root>/<model key>/<kind key>/<shard id>.safetensors
        "features": float32 (n, ...)    one row per image
        "hashes":   uint8 (n, 32)       the raw sha256 digest of each row's content

- Index: per (model, kind), ``{sha256 hex: (shard, row)}`` built from the shards' "hashes"
  tensors (a header read each, not the features) the first time that pair is looked up, and
  extended by the shards that appeared since at each later lookup. The folder is the index of
  models and kinds; nothing else is written, so writers never contend on an index file.
- Writes are atomic per shard: a temp file (``.tmp-*``, never read) then ``os.replace``, so a
  reader sees a whole shard or none, and a writer killed mid-shard costs only that shard.
- Resumable: :meth:`FeatureStore.present` says which hashes a (model, kind) has; writers skip
  them. A hash in two shards (two workers raced, or the same file twice) is served from the
  first shard by name; their rows are equal (features do not depend on batching).
- Shard ids start with the write time in milliseconds, so listing order is write order.
- Nothing is evicted: a store is an explicit dataset artefact (the cache has the size cap).

``core.pipeline.cache.FeatureCache(store=...)`` reads the store before its own files, so the
single-machine path (app, ``run``, ``eval``) uses features a cluster wrote.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from core.config import STORE_DIR_ENV

logger = logging.getLogger(__name__)

STORE_FORMAT = "fusionlab-store-1"
SPARSE_READ = 4  # read rows one by one when fewer than 1 / SPARSE_READ of a shard is wanted
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9]{13}-[0-9a-f]{12}\.safetensors")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def default_store_dir() -> Path | None:
    """``$FUSIONLAB_STORE_DIR`` when set, else None (no store)."""
    text = os.environ.get(STORE_DIR_ENV, "").strip()
    return Path(text).expanduser() if text else None


def digests(hashes: Sequence[str]) -> np.ndarray:
    """sha256 hex strings -> uint8 array (n, 32); ValueError naming a malformed one."""
    bad = [h for h in hashes if not isinstance(h, str) or not _SHA_RE.fullmatch(h)]
    if bad:
        raise ValueError(f"image hash: expected lowercase hex sha256 digests (64 characters), "
                         f"got {bad[0]!r}; use hashlib.sha256(file_bytes).hexdigest().")
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), 32)


class _Index:
    """``{sha hex: (shard path, row)}`` of one (model, kind) folder, grown shard by shard."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: dict[str, tuple[Path, int]] = {}
        self.seen: set[str] = set()  # shard file names already indexed (or found unreadable)

    def refresh(self) -> None:
        """Index the shards written since the last call (one header read each)."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if _SHARD_RE.fullmatch(n))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            if name in self.seen:
                continue
            self.seen.add(name)
            path = self.folder / name
            try:
                with safe_open(str(path), framework="pt") as handle:
                    raw = handle.get_tensor("hashes").numpy()  # (n, 32) uint8
            except Exception as exc:  # a damaged shard: leave it out, say so once
                logger.warning("feature store: skipping unreadable shard %s (%s)", path, exc)
                continue
            text = raw.tobytes().hex()  # 64 hex characters per row
            for row in range(len(raw)):
                self.rows.setdefault(text[64 * row:64 * row + 64], (path, row))  # first wins


class FeatureStore:
    """Sharded features under ``root`` (see the module docstring).

    Parameters
    ----------
    root : str or Path
        Created on the first write. Several processes (Ray workers) may write the same root.

    Attributes
    ----------
    n_hits, n_written : int
        Rows served by :meth:`get_many` and rows written, over this object's lifetime.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.n_hits = self.n_written = 0
        self._indexes: dict[tuple[str, str], _Index] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FeatureStore(root={str(self.root)!r})"

    def folder(self, model: str, kind: str) -> Path:
        """Folder of one (model key, kind key); validates both names (no path tricks)."""
        for label, name in (("model key", model), ("kind key", kind)):
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise ValueError(f"{label}: expected letters, digits, '.', '_' or '-', got "
                                 f"{name!r}.")
        return self.root / model / kind

    def _index(self, model: str, kind: str) -> _Index:
        with self._lock:
            index = self._indexes.get((model, kind))
            if index is None:
                index = self._indexes[(model, kind)] = _Index(self.folder(model, kind))
            index.refresh()
            return index

    def present(self, model: str, kind: str) -> set[str]:
        """Hashes the store holds for (model, kind), as sha256 hex strings."""
        return set(self._index(model, kind).rows)

    def get_many(
        self, model: str, kind: str, hashes: Sequence[str], *,
        expected_shape: tuple[int, ...] | None = None,
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Look up ``hashes``, as ``FeatureCache.get_many``.

        Returns
        -------
        found : dict sha -> Tensor (float32, per-row shape ``expected_shape`` when given)
        missing : list of str
            Unique hashes not in the store (or in a shard of another shape, or non-finite), in
            input order.
        """
        rows = self._index(model, kind).rows
        wanted = list(dict.fromkeys(hashes))
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for sha in wanted:
            if sha in rows:
                path, row = rows[sha]
                by_shard.setdefault(path, []).append((sha, row))
        found: dict[str, Tensor] = {}
        for path, picks in by_shard.items():
            try:
                taken = _read_rows(path, [row for _, row in picks], expected_shape)  # (m, ...)
            except Exception as exc:
                logger.warning("feature store: cannot read %s (%s); recomputing its rows",
                               path, exc)
                continue
            if taken is None:  # a shard of another shape: those rows are recomputed
                continue
            # numpy, one thread: torch's threaded isfinite was 50x slower on a busy 2-core box
            finite = np.isfinite(taken.reshape(len(picks), -1).numpy()).all(axis=1)
            for (sha, _), tensor, ok in zip(picks, taken, finite.tolist()):
                if ok:
                    found[sha] = tensor
        with self._lock:
            self.n_hits += len(found)
        return found, [sha for sha in wanted if sha not in found]

    def write_shard(self, model: str, kind: str, hashes: Sequence[str], features: Tensor) -> int:
        """Write one shard of ``features`` (one row per hash, in order), atomically.

        Hashes the store already holds are left out (resuming never duplicates work that is
        done). Returns the rows written (0: nothing new, no file).
        """
        if not isinstance(features, Tensor) or len(features) != len(hashes):
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise ValueError(f"features: expected a Tensor with one row per hash "
                             f"({len(hashes)}), got {got}.")
        have = self._index(model, kind).rows
        keep = [i for i, sha in enumerate(hashes) if sha not in have]
        keep = list({hashes[i]: i for i in reversed(keep)}.values())[::-1]  # first of duplicates
        if not keep:
            return 0
        folder = self.folder(model, kind)
        folder.mkdir(parents=True, exist_ok=True)
        data = features[keep].detach().to("cpu", torch.float32).contiguous()
        raw = torch.from_numpy(digests([hashes[i] for i in keep]).copy())
        name = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:12]}.safetensors"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file({"features": data, "hashes": raw}, tmp,
                      metadata={"format": STORE_FORMAT, "model": model, "kind": kind})
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self.n_written += len(keep)
        return len(keep)

    def put_many(self, model: str, kind: str, features: Mapping[str, Tensor]) -> int:
        """``{sha: Tensor}`` as one shard (see :meth:`write_shard`); returns rows written."""
        if not features:
            return 0
        hashes = list(features)
        return self.write_shard(model, kind, hashes, torch.stack([features[h] for h in hashes]))

    def contents(self) -> dict[tuple[str, str], int]:
        """``{(model key, kind key): rows}`` of every folder under the root (a full index)."""
        out = {}
        for model in _subfolders(self.root):
            for kind in _subfolders(self.root / model):
                out[(model, kind)] = len(self._index(model, kind).rows)
        return out

    def read_all(self, model: str, kind: str) -> dict[str, Tensor]:
        """Every row of (model, kind) as ``{sha: Tensor}`` (tests and exports)."""
        hashes = sorted(self.present(model, kind))
        return self.get_many(model, kind, hashes)[0]


def _read_rows(path: Path, rows: list[int], expected_shape) -> Tensor | None:
    """Rows of a shard's features, (m, ...); None when its row shape is not ``expected_shape``.

    A few rows of a big shard are read one slice each (memory-mapped, only their bytes); many
    rows, the whole tensor at once.
    """
    with safe_open(str(path), framework="pt") as handle:
        part = handle.get_slice("features")
        shape = tuple(part.get_shape())
        if expected_shape is not None and shape[1:] != tuple(expected_shape):
            return None
        if len(rows) * SPARSE_READ < shape[0]:
            return torch.stack([part[row:row + 1][0] for row in rows])
        return torch.from_numpy(handle.get_tensor("features").numpy()[rows])  # numpy: 1 thread


def _subfolders(path: Path) -> Iterable[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and _NAME_RE.fullmatch(p.name))
    except OSError:
        return []
