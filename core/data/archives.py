"""Zip archives read in memory, and the size limits shared by every source of one load.

Safety (DESIGN.md "Input safety"): nothing is ever written to disk; zips are read in memory with
caps on entries, total and per-file uncompressed size and compression ratio; member names are
display strings only, never paths; nested archives and encrypted members are skipped. A refused
archive or member is reported by name (``SkippedFile``); the rest is processed.

Limits (keyword options of ``core.data.images.load_image_set``, carried by ``_Limits``; ``_Budget``
holds the bytes still allowed; folder reading in ``core.data.images`` applies the same caps):

- ``max_entries`` 20,000 entries per zip or files per folder; a zip with more is skipped whole
  (checked on the end-of-archive record before its directory is parsed).
- ``max_total_bytes`` 2 GiB of raw bytes read per call; ``max_file_bytes`` 512 MiB per file.
- ``max_ratio`` 100:1, checked on the declared sizes before a member is read: per member for
  members over 64 KiB (``RATIO_MIN_BYTES``: a small, flat image may legitimately compress better),
  and for the archive as a whole (the bytes decompressed so far may exceed ``max_ratio`` times
  the packed size of their members by ``ARCHIVE_SLACK_BYTES``, 8 MiB), so thousands of small, highly
  compressed members cannot add up (issue 13: 2,000 members of 1,000,000 zero bytes, a 2.2 MB zip,
  used to be read whole: +1.9 GB). The price: a nearly flat uncompressed picture (a BMP over
  64 KiB that deflates more than 100:1) is refused too, by name, with the reason. Reads are
  bounded by the declared size, so a lying header cannot make a member grow past the caps.

Memory: a member is read only when its first bytes are those of an allowed image format
(``core.data.decode._sniff``; anything else costs at most ``SNIFF_BYTES``), and it is validated
(``accept``, the header check) as soon as it is read, so the bytes of rejected members are freed at
once. What stays in memory is the bytes of the accepted images, at most ``max_total_bytes``.

The pixel limit is checked on each image header (``core.data.decode``). Labels come from the
folder directly holding an image, inside a zip as in a folder (``_with_folder_labels``).
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import core.config as config
from core.data.decode import SNIFF_BYTES, BadImageError, SkippedFile, _sniff

if TYPE_CHECKING:  # annotations only: core.data.images imports this module
    from core.data.images import ImageItem

Accept = Callable[[str, bytes], "ImageItem | None"]  # validate read bytes; None when rejected

DEFAULT_MAX_ENTRIES = config.ARCHIVE_MAX_ENTRIES
DEFAULT_MAX_TOTAL_BYTES = config.ARCHIVE_MAX_TOTAL_BYTES
DEFAULT_MAX_FILE_BYTES = config.ARCHIVE_MAX_FILE_BYTES
DEFAULT_MAX_RATIO = config.ARCHIVE_MAX_RATIO
RATIO_MIN_BYTES = 64 * 1024
ARCHIVE_SLACK_BYTES = 8 * 1024**2
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


def _with_folder_labels(items: list[ImageItem]) -> list[ImageItem]:
    """Label = the folder directly holding the image, unless all images share one folder."""
    parents = [PurePosixPath(it.name).parent for it in items]
    if len(set(parents)) < 2:
        return items
    return [replace(it, label=parent.name or None) for it, parent in zip(items, parents)]


# ----------------------------------------------------------------------------- zips


def _zip_entries(src: Path | bytes, zip_name: str, limits: _Limits, budget: _Budget,
                 skipped: list[SkippedFile], accept: Accept) -> list[ImageItem]:
    """The images of one zip, each validated by ``accept`` as soon as it is read; every refusal
    goes to ``skipped``."""
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
                items = []
                expansion = _Expansion()
                for info in sorted(infos, key=lambda i: i.filename):
                    item = _read_member(zf, info, limits, budget, expansion, skipped, accept)
                    if item is not None:
                        items.append(item)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        skipped.append(SkippedFile(zip_name, f"not a readable zip archive ({exc})"))
        return []
    return _with_folder_labels(items)


class _Expansion:
    """Declared bytes of the members of one archive read so far, unpacked and packed."""

    def __init__(self):
        self.size = self.packed = 0


def _refusal(name: str, size: int, packed: int, flags: int, limits: _Limits, budget: _Budget,
             expansion: _Expansion) -> str | None:
    """Why a member must not be read, from its directory entry alone; None when it may be."""
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        return "nested archive skipped"
    if flags & 0x1:
        return "encrypted member skipped"
    if size > limits.max_file_bytes:
        return f"file too large ({_mib(size)} > {_mib(limits.max_file_bytes)} limit)"
    if size > RATIO_MIN_BYTES and size > limits.max_ratio * packed:
        return (f"compression ratio {size / packed:,.0f}:1 exceeds the "
                f"{limits.max_ratio:,.0f}:1 limit (possible zip bomb)")
    if (expansion.size + size
            > limits.max_ratio * (expansion.packed + packed) + ARCHIVE_SLACK_BYTES):
        return (f"the archive's members expand more than {limits.max_ratio:,.0f}:1 overall "
                "(possible zip bomb); the rest of it is skipped")
    if size > budget.left:
        return f"total size limit reached ({_mib(limits.max_total_bytes)})"
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: _Limits, budget: _Budget,
                 expansion: _Expansion, skipped: list[SkippedFile],
                 accept: Accept) -> ImageItem | None:
    if info.is_dir():
        return None
    name = _clean_member_name(info.filename)
    if name is None:
        return None
    size, packed = info.file_size, max(info.compress_size, 1)
    reason = _refusal(name, size, packed, info.flag_bits, limits, budget, expansion)
    if reason is None:
        expansion.packed += packed
        expansion.size += min(size, SNIFF_BYTES)  # what is decompressed at least
        try:
            with zf.open(info) as member:  # yields at most the declared size, CRC-checked
                head = member.read(min(size, SNIFF_BYTES))
                _sniff(head, name)  # not an image: the rest is never decompressed
                expansion.size += size - len(head)
                data = head + member.read(size - len(head))
        except BadImageError as exc:
            reason = exc.reason
            budget.left -= len(head)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
                ValueError) as exc:
            reason = f"corrupt or unsupported zip member ({exc})"
        else:
            budget.left -= len(data)
            return accept(name, data)  # validated now: a rejected member's bytes are freed
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

