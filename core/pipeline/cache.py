"""On-disk feature cache: features are computed once per (model, feature kind, image content).

Layout: ``<root>/<model key>/<kind key>/<sha[:2]>/<sha>.safetensors``, one small safetensors file
per image holding the tensor ``"features"`` plus metadata (model key, kind, sha256). One file per
image keeps writes atomic (temp file + ``os.replace``) and a damaged entry isolated; reading 1,000
of them takes a fraction of a second (see ``benchmarks/encode.py``).

- The model key is the registry key plus a digest of everything that decides the features:
  library, model id, pretrained tag, weights repo, activation, input size, resize, crop mode,
  mean, std, interpolation, random init (`ModelSpec.identity`) and `FEATURE_VERSION`.
- The kind key is the feature kind ("global", "patches", "dense", "crops") plus a digest of its
  settings (e.g. ``{"n_crops": 90, "scale": (0.6, 0.9), "seed": "content"}`` for crops).
- Images are keyed by the sha256 of their file bytes (``item.sha256`` from `core.data.images`).

Root: ``FUSIONLAB_CACHE_DIR`` or ``~/.cache/fusionlab/features``. A corrupt entry (truncated file,
wrong shape, NaN) is deleted and recomputed. An unwritable or unreadable root disables the cache
with one warning; encoding goes on without it.

Sharded store: ``store`` (a ``core.pipeline.store.FeatureStore``, a folder, or by default
``$FUSIONLAB_STORE_DIR`` when set) is read first; only the hashes it lacks are looked up here.
What the cache computes is written here, never to the store (``python -m core extract`` fills it).

Size cap: ``max_bytes`` (default ``FUSIONLAB_CACHE_MAX_BYTES``, else ``DEFAULT_MAX_BYTES`` = 4 GiB;
0 means no cap). A hit refreshes its entry's modification time, so that time is the last access;
when a write takes the entries' total over the cap, the least recently used entries are deleted
until the total is at most ``EVICT_TO`` (90%) of the cap (one scan of the root, not one per
write). Only files of the entry layout are ever counted or deleted, whatever the root holds. The
total is scanned once per process and then kept up to date by this object's own writes; several
processes sharing a root each evict from a fresh scan, so the cap holds up to what the others
wrote since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import core.config as config
from core.pipeline.cache_size import entry_files, evict_lru, parse_size
from core.pipeline.store import FeatureStore, default_store_dir

logger = logging.getLogger(__name__)

FEATURE_VERSION = 1  # bump when an extraction changes, so old entries stop matching
DEFAULT_ROOT = "~/.cache/fusionlab/features"
# Defaults of the size cap (no core/config.py on this branch yet: move them there when it lands).
DEFAULT_MAX_BYTES = config.FEATURE_CACHE_MAX_BYTES  # global features of ~1M images (768-d)
EVICT_TO = 0.9  # evict down to this fraction of the cap, so a full cache does not evict per write
_HASH_RE = re.compile(r"[0-9a-f]{16,128}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def default_cache_dir() -> Path:
    """``FUSIONLAB_CACHE_DIR`` if set, else ``~/.cache/fusionlab/features``."""
    return Path(os.environ.get("FUSIONLAB_CACHE_DIR") or DEFAULT_ROOT).expanduser()


def default_max_bytes() -> int:
    """``FUSIONLAB_CACHE_MAX_BYTES`` if set (0: no cap), else ``DEFAULT_MAX_BYTES``."""
    text = os.environ.get("FUSIONLAB_CACHE_MAX_BYTES", "").strip()
    return parse_size(text, "FUSIONLAB_CACHE_MAX_BYTES") if text else DEFAULT_MAX_BYTES


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=list, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def model_key(spec, precision: str = "fp32") -> str:
    """Cache name of a model: ``"<registry key>-<16 hex digest of its identity>"``.

    A ``precision`` other than "fp32" ("int8", "bf16", ...) enters the digest, so its features
    never mix with exact ones; fp32 keys are those written before precisions existed.
    """
    identity = [FEATURE_VERSION, spec.identity()]
    if precision != "fp32":
        identity.append(precision)
    return f"{spec.key}-{_digest(identity)[:16]}"


def kind_key(kind: str, settings: Mapping | None = None) -> str:
    """Cache name of a feature kind with its settings: ``"crops-<12 hex>"``, or just ``kind``."""
    if not isinstance(kind, str) or not _NAME_RE.fullmatch(kind):
        raise ValueError(f"kind: expected a short name like 'global' or 'crops', got {kind!r}.")
    return f"{kind}-{_digest(dict(settings))[:12]}" if settings else kind


def feature_shape(spec, kind: str, settings: Mapping | None = None) -> tuple[int, ...] | None:
    """Per-image shape of a feature kind for ``spec``, or None when it cannot be known."""
    if kind == "global":
        return (spec.output_dim,)
    if kind in ("patches", "dense") and spec.grid_size is not None:
        return (*spec.grid_size, spec.output_dim)
    if kind == "crops" and settings and "n_crops" in settings:
        return (1 + int(settings["n_crops"]), spec.output_dim)
    return None


class FeatureCache:
    """Per-image feature files under ``root`` (see the module docstring).

    Parameters
    ----------
    root : str or Path, optional
        Defaults to `default_cache_dir`.
    max_bytes : int, optional
        Size cap of the entries under ``root`` (least recently used evicted); 0 for no cap.
        Defaults to `default_max_bytes`.
    store : FeatureStore, str or Path, optional
        A sharded store read before the per-file entries (see the module docstring); defaults to
        ``$FUSIONLAB_STORE_DIR`` when set. Pass False for none.

    Attributes
    ----------
    enabled : bool
        False after the root proved unwritable or unreadable (one warning was issued).
    n_hits, n_misses, n_corrupt, n_written, n_evicted : int
        Running counters over this object's lifetime (``n_hits`` includes the store's hits,
        ``store.n_hits``).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, max_bytes: int | None = None,
                 store: FeatureStore | str | os.PathLike | None | bool = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes: expected 0 (no cap) or a positive size in bytes, got "
                             f"{max_bytes}.")
        self.enabled = True
        self.n_hits = self.n_misses = self.n_corrupt = self.n_written = self.n_evicted = 0
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._total: int | None = None  # bytes of the entries under root; scanned on first write
        if store is None:
            store = default_store_dir()
        if store is False or store is None or isinstance(store, FeatureStore):
            self.store = store or None
        else:
            self.store = FeatureStore(store)

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, enabled={self.enabled})"

    def path_for(self, model: str, kind: str, sha: str) -> Path:
        """File of one entry (validates the three names: no path tricks)."""
        for label, name in (("model key", model), ("kind key", kind)):
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise ValueError(
                    f"{label}: expected letters, digits, '.', '_' or '-', got {name!r}."
                )
        if not isinstance(sha, str) or not _HASH_RE.fullmatch(sha):
            raise ValueError(
                f"image hash: expected a lowercase hex sha256 digest, got {sha!r}; use "
                "hashlib.sha256(file_bytes).hexdigest()."
            )
        return self.root / model / kind / sha[:2] / f"{sha}.safetensors"

    def get_many(
        self,
        model: str,
        kind: str,
        hashes: Sequence[str],
        *,
        expected_shape: tuple[int, ...] | None = None,
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Look up ``hashes``.

        Returns
        -------
        found : dict sha -> Tensor
            Cached features (float32, shape ``expected_shape`` when given).
        missing : list of str
            Unique hashes not found, or found corrupt (those files are deleted), in input order.
        """
        paths = {sha: self.path_for(model, kind, sha) for sha in dict.fromkeys(hashes)}
        found: dict[str, Tensor] = {}
        if self.store is not None and paths:
            found, _ = self.store.get_many(model, kind, list(paths), expected_shape=expected_shape)
        missing: list[str] = []
        corrupt = 0
        for sha, path in paths.items():
            if sha in found:
                continue
            tensor = self._read(path, model, kind, sha, expected_shape) if self.enabled else None
            if isinstance(tensor, Tensor):
                found[sha] = tensor
            else:
                missing.append(sha)
                corrupt += tensor == "corrupt"
        with self._lock:
            self.n_hits += len(found)
            self.n_misses += len(missing)
            self.n_corrupt += corrupt
        if corrupt:
            logger.warning("feature cache: removed %d corrupt entries under %s; recomputing them.",
                           corrupt, self.root / model / kind)
        return found, missing

    def put_many(self, model: str, kind: str, features: Mapping[str, Tensor]) -> int:
        """Store ``{sha: Tensor}`` entries atomically; returns how many were written."""
        written = added = 0
        for sha, tensor in features.items():
            if not self.enabled:
                break
            path = self.path_for(model, kind, sha)
            tmp = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
                os.close(fd)
                data = tensor.detach().to("cpu", torch.float32).contiguous().clone()
                save_file({"features": data}, tmp, metadata={"model": model, "kind": kind,
                                                             "sha256": sha})
                added += os.path.getsize(tmp) - _size_or_zero(path)
                os.replace(tmp, path)
                written += 1
            except OSError as exc:
                if tmp is not None:
                    _remove(Path(tmp))
                self._disable(f"cannot write to {path.parent} ({type(exc).__name__}: {exc})")
        with self._lock:
            self.n_written += written
        if written and self.max_bytes:
            self._account(added)
        return written

    def total_bytes(self) -> int:
        """Bytes of the entries under ``root`` now (a scan)."""
        return sum(entry.size for entry in entry_files(self.root))

    def _account(self, added: int) -> None:
        """Add this object's new bytes to the running total; evict when over the cap."""
        with self._evict_lock:
            if self._total is None:
                self._total = self.total_bytes()  # includes what was just written
            else:
                self._total += added
            if self._total > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Delete least recently used entries until at most ``EVICT_TO`` of the cap is used."""
        self._total, evicted = evict_lru(entry_files(self.root), int(EVICT_TO * self.max_bytes))
        with self._lock:
            self.n_evicted += evicted
        if evicted:
            logger.info("feature cache: evicted %d least recently used entries (cap %d bytes).",
                        evicted, self.max_bytes)

    def _read(self, path: Path, model: str, kind: str, sha: str,
              expected_shape: tuple[int, ...] | None) -> Tensor | str:
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                keys = list(handle.keys())
                tensor = handle.get_tensor("features") if keys == ["features"] else None
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except PermissionError as exc:
            self._disable(f"cannot read {path.parent} ({exc})")
            return "missing"
        except Exception:  # truncated or garbled file: safetensors raises its own error types
            tensor, meta = None, {}
        ok = (
            tensor is not None
            and (meta.get("sha256"), meta.get("model"), meta.get("kind")) == (sha, model, kind)
            and tensor.dtype == torch.float32
            and (expected_shape is None or tuple(tensor.shape) == tuple(expected_shape))
            and bool(torch.isfinite(tensor).all())
        )
        if not ok:
            _remove(path)
            return "corrupt"
        if self.max_bytes:
            _touch(path)  # its modification time is its last access: LRU eviction
        return tensor

    def _disable(self, reason: str) -> None:
        with self._lock:
            if not self.enabled:
                return
            self.enabled = False
        warnings.warn(
            f"feature cache disabled: {reason}. Features will be recomputed on every run; set "
            "FUSIONLAB_CACHE_DIR to a writable folder to cache them.",
            RuntimeWarning,
            stacklevel=3,
        )


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves hits
        pass


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
