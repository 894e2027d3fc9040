"""Zip archives read in memory, and the size limits shared by every source of one load.

Safety (DESIGN.md "Input safety"): nothing is ever written to disk; zips are read in memory with
caps on entries, total and per-file uncompressed size and compression ratio; member names are
display strings only, never paths; nested archives and encrypted members are skipped. A refused
archive or member is reported by name (``SkippedFile``); the rest is processed.

Limits (keyword options of ``core.data.images.load_image_set``, carried by ``_Limits``; ``_Budget``
holds the bytes still allowed; folder reading in ``core.data.images`` applies the same caps):

- ``max_entries`` 20,000 entries per zip or files per folder; a zip with more is skipped whole
  (checked on the end-of-archive record before its directory is parsed).
- ``max_total_bytes`` 2 GiB of raw image bytes per call; ``max_file_bytes`` 512 MiB per file.
- ``max_ratio`` 100:1 per zip member, checked for members over 1 MiB uncompressed: a small, flat
  image may legitimately compress better, and the byte caps bound the memory anyway. Reads are
  bounded by the declared size, so a lying header cannot make a member grow past the caps.

The pixel limit is checked on each image header (``core.data.decode``). Labels come from the
folder directly holding an image, inside a zip as in a folder (``_with_folder_labels``).
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.data.decode import SkippedFile

DEFAULT_MAX_ENTRIES = 20_000
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
DEFAULT_MAX_FILE_BYTES = 512 * 1024**2
DEFAULT_MAX_RATIO = 100.0
RATIO_MIN_BYTES = 1024**2
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz")
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


@dataclass(frozen=True)
class _Limits:
    max_pixels: int
    max_entries: int
    max_total_bytes: int
    max_file_bytes: int
    max_ratio: float


class _Budget:
    """Raw bytes still allowed in this call (shared by every source)."""

    def __init__(self, total: int):
        self.left = total


def _with_folder_labels(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes, str | None]]:
    """Label = the folder directly holding the image, unless all images share one folder."""
    parents = [PurePosixPath(name).parent for name, _ in entries]
    if len(set(parents)) < 2:
        return [(name, data, None) for name, data in entries]
    return [(name, data, parent.name or None) for (name, data), parent in zip(entries, parents)]


# ----------------------------------------------------------------------------- zips


def _zip_entries(src: Path | bytes, zip_name: str, limits: _Limits, budget: _Budget,
                 skipped: list[SkippedFile]) -> list[tuple[str, bytes, str | None]]:
    """Image candidates of one zip, read in memory; every refusal goes to ``skipped``."""
    try:
        with (open(src, "rb") if isinstance(src, Path) else io.BytesIO(src)) as fh:
            declared = _declared_entries(fh)
            if declared is not None and declared > limits.max_entries:
                skipped.append(SkippedFile(zip_name, f"too many entries ({declared:,} > "
                                                     f"{limits.max_entries:,} limit)"))
                return []
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                if len(infos) > limits.max_entries:
                    skipped.append(SkippedFile(zip_name, f"too many entries ({len(infos):,} > "
                                                         f"{limits.max_entries:,} limit)"))
                    return []
                entries = []
                for info in sorted(infos, key=lambda i: i.filename):
                    member = _read_member(zf, info, limits, budget, skipped)
                    if member is not None:
                        entries.append(member)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        skipped.append(SkippedFile(zip_name, f"not a readable zip archive ({exc})"))
        return []
    return _with_folder_labels(entries)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: _Limits, budget: _Budget,
                 skipped: list[SkippedFile]) -> tuple[str, bytes] | None:
    if info.is_dir():
        return None
    name = _clean_member_name(info.filename)
    if name is None:
        return None
    size, packed = info.file_size, max(info.compress_size, 1)
    reason = None
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        reason = "nested archive skipped"
    elif info.flag_bits & 0x1:
        reason = "encrypted member skipped"
    elif size > limits.max_file_bytes:
        reason = f"file too large ({_mib(size)} > {_mib(limits.max_file_bytes)} limit)"
    elif size > RATIO_MIN_BYTES and size > limits.max_ratio * packed:
        reason = (f"compression ratio {size / packed:,.0f}:1 exceeds the "
                  f"{limits.max_ratio:,.0f}:1 limit (possible zip bomb)")
    elif size > budget.left:
        reason = f"total size limit reached ({_mib(limits.max_total_bytes)})"
    if reason is None:
        try:
            with zf.open(info) as member:  # yields at most the declared size, CRC-checked
                data = member.read(size)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
                ValueError) as exc:
            reason = f"corrupt or unsupported zip member ({exc})"
        else:
            budget.left -= len(data)
            return name, data
    skipped.append(SkippedFile(name, reason))
    return None


def _clean_member_name(raw: str) -> str | None:
    """A zip member name as a safe display string, or None for junk (``__MACOSX``, dotfiles)."""
    raw = "".join(c if c.isprintable() else "?" for c in raw)
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if parts and re.fullmatch(r"[A-Za-z]:", parts[0]):  # "C:\\images\\x.png"
        parts = parts[1:]
    if not parts or any(_ignored(p) for p in parts):
        return None
    return "/".join(parts)


def _ignored(part: str) -> bool:
    return part.startswith(".") or part.lower() in _IGNORED_NAMES


def _declared_entries(fh) -> int | None:
    """Entry count from the end-of-central-directory record, before zipfile parses every entry."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - 65_557))  # the record is 22 bytes plus a comment of at most 64 KiB
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (count,) = struct.unpack("<H", tail[at + 10:at + 12])
    return None if count == 0xFFFF else count  # zip64: zipfile reads the real count


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

