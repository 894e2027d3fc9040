"""Size accounting of the feature cache: entry files, least-recently-used eviction, size strings.

Used by ``core.pipeline.cache.FeatureCache`` (its size cap). Only files laid out as cache entries
(``<model>/<kind>/<sha[:2]>/<sha>.safetensors`` under the root) are ever counted or deleted, so a
root pointed at a folder that holds other files loses none of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4,
          "tb": 1000**4, "tib": 1024**4}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")
_ENTRY_RE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{16,128}\.safetensors")


class Entry(NamedTuple):
    """One cache entry file: its path, size in bytes and last access (modification time)."""

    path: Path
    size: int
    mtime: float


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from ``"4GiB"``, ``"500 MB"``, ``"1.5g"`` or ``"1000000"`` (K, M, G, T are binary)."""
    match = _SIZE_RE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{what}: expected a size such as 4GiB, 500MB or 1000000 (bytes), got "
                         f"{text!r}.")
    return int(float(match.group(1)) * _UNITS[unit])


def entry_files(root: Path) -> list[Entry]:
    """Every entry file under ``root`` (nothing else), in no particular order."""
    out = []
    for dirpath, _, files in os.walk(root):
        parts = Path(dirpath).relative_to(root).parts
        if len(parts) != 3:  # <model>/<kind>/<sha[:2]>
            continue
        for name in files:
            if not _ENTRY_RE.fullmatch(f"{parts[2]}/{name}"):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:  # removed meanwhile
                continue
            out.append(Entry(path, st.st_size, st.st_mtime))
    return out


def evict_lru(entries: Iterable[Entry], target: int) -> tuple[int, int]:
    """Delete the least recently used ``entries`` until their total is at most ``target`` bytes.

    Returns (bytes left, files deleted).
    """
    entries = sorted(entries, key=lambda e: e.mtime)  # oldest access first
    total = sum(e.size for e in entries)
    evicted = 0
    for entry in entries:
        if total <= target:
            break
        try:
            entry.path.unlink(missing_ok=True)
        except OSError:  # not ours to delete after all: leave it, count it
            continue
        total -= entry.size
        evicted += 1
    return total, evicted
