"""Image sets from files, folders and zips, validated cheaply and decoded lazily.

Loading reads raw bytes and only the image header (Pillow ``Image.open`` is lazy): format
allowlist, pixel count, size. Full decoding (``decode_image``) happens later and only for images
whose features are not cached yet, so a cached rerun never pays for it. A bad file is reported by
name (``SkippedFile``) and skipped; the rest is processed.

Safety (DESIGN.md "Input safety"): nothing is ever written to disk; zips are read in memory with
caps on entries, total and per-file uncompressed size and compression ratio; member names are
display strings only, never paths; nested archives and encrypted members are skipped.

Limits (keyword options of ``load_image_set``):

- ``max_pixels`` 89,478,485 (Pillow's default ``MAX_IMAGE_PIXELS``, ~89 M, e.g. 9459 x 9459).
  Pillow itself refuses images over twice its global limit before we see their size.
- ``max_entries`` 20,000 entries per zip or files per folder; a zip with more is skipped whole
  (checked on the end-of-archive record before its directory is parsed).
- ``max_total_bytes`` 2 GiB of raw image bytes per call; ``max_file_bytes`` 512 MiB per file.
- ``max_ratio`` 100:1 per zip member, checked for members over 1 MiB uncompressed: a small, flat
  image may legitimately compress better, and the byte caps bound the memory anyway. Reads are
  bounded by the declared size, so a lying header cannot make a member grow past the caps.

Duplicates (same bytes twice) are kept: a data set may hold the same picture under two names. They
share a sha256, hence one cached feature.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.checks import check_int, check_positive
from core.presets import (  # noqa: F401  (re-exported: core.data is the documented entry point)
    PRESETS,
    ClassList,
    DatasetPreset,
    get_preset,
    load_attributes,
    load_classes_file,
    parse_classes,
)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_ENTRIES = 20_000
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
DEFAULT_MAX_FILE_BYTES = 512 * 1024**2
DEFAULT_MAX_RATIO = 100.0
RATIO_MIN_BYTES = 1024**2
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz")
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP")
)
_HEADER_KEYS = {"filename", "file_name", "file", "name", "path", "image", "image_path", "img"}


class BadImageError(ValueError):
    """An image that cannot be used; ``name`` is the file's display name, ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class NoImagesError(ValueError):
    """Nothing usable was found; ``skipped`` says what happened to each file."""

    def __init__(self, message: str, skipped: Sequence[SkippedFile] = ()):
        super().__init__(message)
        self.skipped = tuple(skipped)


@dataclass(frozen=True)
class SkippedFile:
    """A file left out, by display name, with a human reason; ``index`` is its input position
    when ``decode_many`` reports it."""

    name: str
    reason: str
    index: int | None = None


@dataclass(frozen=True)
class ImageItem:
    """One validated, not yet decoded image.

    size is (width, height) as ``decode_image`` returns it (EXIF orientation applied when the
    header carries it), read from the header. sha256 is the hex digest of ``data``: the cache key.
    """

    name: str
    data: bytes = field(repr=False, compare=False)
    sha256: str
    label: str | None
    format: str
    size: tuple[int, int]

    @classmethod
    def from_bytes(cls, name: str, data: bytes, *, label: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageItem:
        """Validate ``data`` from its header; raises ``BadImageError``."""
        data = bytes(data)
        with _open_image(data, name, max_pixels) as im:
            fmt = "JPEG" if im.format == "MPO" else im.format
            width, height = im.size
            # getexif() on a PNG without an eXIf chunk in the header would decode the whole image.
            if "exif" in im.info and _orientation(im) in (5, 6, 7, 8):
                width, height = height, width
        return cls(name=name, data=data, sha256=hashlib.sha256(data).hexdigest(), label=label,
                   format=fmt, size=(width, height))


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not reject a good image
        return 1


@dataclass(frozen=True)
class ImageSet:
    """Images loaded from one or more sources, files that were skipped, and notes (CSV matching)."""

    items: tuple[ImageItem, ...]
    skipped: tuple[SkippedFile, ...] = ()
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str] | None:
        """Per-item labels, or None when any item has no label."""
        labels = [it.label for it in self.items]
        return None if not labels or any(lab is None for lab in labels) else labels

    @property
    def class_names(self) -> list[str]:
        """Sorted unique labels of the items that have one."""
        return sorted({it.label for it in self.items if it.label is not None})


class DecodeResult(NamedTuple):
    """``images`` (RGB) of the items that decoded, in input order; ``failures`` for the rest."""

    images: list[Image.Image]
    failures: list[SkippedFile]


# ----------------------------------------------------------------------------- decoding


def _open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Header-only open with the format allowlist and our pixel limit, as ``BadImageError``."""
    if not data:
        raise BadImageError(name, "empty file")
    # Pillow warns between 1x and 2x its global limit; we enforce our own limit instead. (Before
    # Python 3.14, catch_warnings is not thread-safe: a race could at worst keep this one filter.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            got = f"{int(found.group(1)):,} pixels" if found else "the image"
            raise BadImageError(name, f"decompression bomb: {got} exceeds the "
                                      f"{_count(max_pixels)} pixel limit") from None
        except UnidentifiedImageError:
            raise BadImageError(name, _identify(data)) from None
        except Exception as exc:  # malformed headers raise many types; report, never crash
            raise BadImageError(name, f"unreadable image header ({exc})") from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise BadImageError(name, f"decompression bomb: {width}x{height} pixels exceeds the "
                                  f"{_count(max_pixels)} pixel limit")
    if width == 0 or height == 0:
        im.close()
        raise BadImageError(name, f"empty image ({width}x{height})")
    return im


def _identify(data: bytes) -> str:
    """Why an allowlisted open failed: a disallowed format, a corrupt header, or not an image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return f"format {im.format} not allowed (allowed: {', '.join(ALLOWED_FORMATS)})"
        except Exception:
            pass
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return f"truncated or corrupt {fmt} header"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "truncated or corrupt WEBP header"
    return "not an image"


def decode_image(item: ImageItem, *, max_side: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode an item to an RGB ``PIL.Image``.

    EXIF orientation applied; GIF/WEBP first frame; CMYK, palette, 1-bit and grey converted;
    alpha (including palette transparency) composited on white; 16-bit scaled to 8 bits.
    ``max_side`` shrinks (never enlarges) so the longer side is at most that, using JPEG's
    DCT-domain reduction first (much faster than decoding full size). Raises ``BadImageError``.
    """
    im = _open_image(item.data, item.name, max_pixels)  # in memory: nothing to close
    try:
        if max_side is not None and im.format in ("JPEG", "MPO"):
            scale = max_side / max(im.size)
            if scale < 1:  # draft keeps both sides >= the request; thumbnail finishes the job
                im.draft(None, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        out = _to_rgb(im)
    except BadImageError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise BadImageError(item.name, _decode_reason(exc)) from None
    if max_side is not None and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return out


def decode_many(items: Iterable[ImageItem], *, max_side: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """Decode every item, skipping bad ones; each failure keeps its input ``index``."""
    images, failures = [], []
    for index, item in enumerate(items):
        try:
            images.append(decode_image(item, max_side=max_side, max_pixels=max_pixels))
        except BadImageError as exc:
            failures.append(SkippedFile(item.name, exc.reason, index))
    return DecodeResult(images, failures)


def _decode_reason(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower() or "broken data stream" in text or isinstance(exc, EOFError):
        return "truncated file"
    return f"cannot decode ({type(exc).__name__}: {text})"


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(im)
    if im.has_transparency_data:  # RGBA, LA, PA, P with transparency, RGB/L with a tRNS key
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grey to 8 bits by scaling the full range, never by clipping."""
    a = np.asarray(im)
    if im.mode.startswith("I;16") or (a.size and a.min() >= 0 and a.max() <= 65535):
        grey = (a.astype(np.uint32) * 255 + 32767) // 65535  # rounded: 65535 -> 255, 32768 -> 128
    else:  # signed or float data: stretch its own range
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        grey = np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")


# ----------------------------------------------------------------------------- loading


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


def load_image_set(
    source: str | os.PathLike | bytes | Sequence[str | os.PathLike],
    *,
    labels_csv: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> ImageSet:
    """Load images from files, a folder, or a zip (path or bytes), validating headers only.

    source : a folder (recursive; the folder directly holding an image is its label), a ``.zip``
        path or its bytes (same labelling inside), an image path, or a list of any of these
        (plain image files get no label).
    labels_csv : a path or the text of ``filename,label`` rows (header optional); rows match an
        image by its relative path inside its folder/zip, else by file name, and override labels.

    Labels come from folders only when the images sit in at least two different folders (one
    common folder is a container, not a class). Raises ``NoImagesError`` when nothing is usable.
    """
    limits = _Limits(
        max_pixels=check_int(max_pixels, "max_pixels", 1),
        max_entries=check_int(max_entries, "max_entries", 1),
        max_total_bytes=check_int(max_total_bytes, "max_total_bytes", 1),
        max_file_bytes=check_int(max_file_bytes, "max_file_bytes", 1),
        max_ratio=check_positive(max_ratio, "max_ratio"),
    )
    budget = _Budget(max_total_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        sources: list = [bytes(source)]
    elif isinstance(source, (str, os.PathLike)):
        sources = [source]
    elif isinstance(source, Sequence):
        sources = list(source)
    else:
        raise ValueError(f"source: expected a path, zip bytes or a list of paths, got "
                         f"{type(source).__name__}.")
    if not sources:
        raise NoImagesError("no files given; upload images, a .zip, or choose a folder.")

    items: list[ImageItem] = []
    skipped: list[SkippedFile] = []
    for src in sources:
        if isinstance(src, bytes):
            entries = _zip_entries(src, "archive.zip", limits, budget, skipped)
        elif isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if path.is_dir():
                entries = _folder_entries(path, limits, budget, skipped)
            elif path.suffix.lower() == ".zip":
                entries = _zip_entries(path, path.name, limits, budget, skipped)
            elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
                skipped.append(SkippedFile(path.name, "archive format not supported; use a .zip"))
                continue
            else:
                data = _read_file(path, path.name, limits, budget, skipped)
                entries = [(path.name, data, None)] if data is not None else []
        else:
            raise ValueError(f"source: expected paths or zip bytes in the list, got "
                             f"{type(src).__name__}.")
        for name, data, label in entries:
            try:
                items.append(ImageItem.from_bytes(name, data, label=label, max_pixels=max_pixels))
            except BadImageError as exc:
                skipped.append(SkippedFile(name, exc.reason))

    notes: tuple[str, ...] = ()
    if labels_csv is not None and items:
        items, notes = _apply_csv(items, labels_csv)
    if not items:
        shown = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise NoImagesError(
            f"no usable images: {len(skipped)} file(s) skipped ({shown}{more}); allowed formats "
            f"are {', '.join(ALLOWED_FORMATS)}.", skipped)
    return ImageSet(items=tuple(items), skipped=tuple(skipped), warnings=notes)


def _with_folder_labels(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes, str | None]]:
    """Label = the folder directly holding the image, unless all images share one folder."""
    parents = [PurePosixPath(name).parent for name, _ in entries]
    if len(set(parents)) < 2:
        return [(name, data, None) for name, data in entries]
    return [(name, data, parent.name or None) for (name, data), parent in zip(entries, parents)]


def _folder_entries(root: Path, limits: _Limits, budget: _Budget,
                    skipped: list[SkippedFile]) -> list[tuple[str, bytes, str | None]]:
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked folders
        dirnames[:] = [d for d in dirnames if not _ignored(d)]
        paths += [Path(dirpath) / f for f in filenames if not _ignored(f)]
        if len(paths) > limits.max_entries:
            break
    found = sorted((p.relative_to(root).as_posix(), p) for p in paths)  # same order as a zip
    if len(found) > limits.max_entries:
        skipped.append(SkippedFile(f"{root.name}/", f"more than {limits.max_entries:,} files; "
                                                    "the rest of the folder was skipped"))
        found = found[:limits.max_entries]
    entries: list[tuple[str, bytes]] = []
    for rel, path in found:
        if rel.lower().endswith(ARCHIVE_SUFFIXES):
            skipped.append(SkippedFile(rel, "archive inside a folder skipped (load it alone)"))
            continue
        data = _read_file(path, rel, limits, budget, skipped)
        if data is not None:
            entries.append((rel, data))
    return _with_folder_labels(entries)


def _read_file(path: Path, name: str, limits: _Limits, budget: _Budget,
               skipped: list[SkippedFile]) -> bytes | None:
    try:
        if not path.is_file():  # missing, or a device / fifo that could block or never end
            skipped.append(SkippedFile(name, "file not found" if not path.exists()
                                       else "not a regular file"))
            return None
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            skipped.append(SkippedFile(name, f"file too large ({_mib(size)} > "
                                             f"{_mib(limits.max_file_bytes)} limit)"))
            return None
        if size > budget.left:
            skipped.append(SkippedFile(name, "total size limit reached "
                                             f"({_mib(limits.max_total_bytes)})"))
            return None
        with open(path, "rb") as fh:
            data = fh.read(min(limits.max_file_bytes, budget.left) + 1)  # bounded if it grew
    except OSError as exc:
        skipped.append(SkippedFile(name, f"cannot read file ({exc.strerror or exc})"))
        return None
    if len(data) > min(limits.max_file_bytes, budget.left):
        skipped.append(SkippedFile(name, "file too large or total size limit reached"))
        return None
    budget.left -= len(data)
    return data


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


def _count(n: int) -> str:
    return f"{n / 1e6:.0f} M" if n >= 10**6 else f"{n:,}"


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- CSV labels


def _apply_csv(items: list[ImageItem], labels_csv) -> tuple[list[ImageItem], tuple[str, ...]]:
    if isinstance(labels_csv, os.PathLike) or (
        isinstance(labels_csv, str) and "\n" not in labels_csv and os.path.isfile(labels_csv)
    ):
        try:
            text = Path(labels_csv).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"labels_csv: cannot read {labels_csv!s} ({exc}).") from exc
    elif isinstance(labels_csv, str):
        text = labels_csv.lstrip("\ufeff")
    else:
        raise ValueError(f"labels_csv: expected a path or CSV text, got "
                         f"{type(labels_csv).__name__}.")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    rows = [[c.strip() for c in r] for r in rows if not r[0].strip().startswith("#")]
    for r in rows:
        if len(r) < 2 or not r[1]:
            raise ValueError(f"labels_csv: expected 'filename,label' rows, got {','.join(r)!r}.")
    by_path = {it.name: i for i, it in enumerate(items)}
    by_base: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_base.setdefault(PurePosixPath(it.name).name.casefold(), []).append(i)

    def find(key: str) -> list[int]:
        key = key.replace("\\", "/").removeprefix("./")
        if key in by_path:
            return [by_path[key]]
        return by_base.get(PurePosixPath(key).name.casefold(), [])

    if rows and rows[0][0].casefold() in _HEADER_KEYS and not find(rows[0][0]):
        rows = rows[1:]
    labels: dict[int, str] = {}
    unmatched, ambiguous = [], []
    for key, label, *_ in rows:
        hits = find(key)
        if not hits:
            unmatched.append(key)
        elif len(hits) > 1:
            ambiguous.append(key)
        else:
            labels[hits[0]] = label
    if not labels:
        raise ValueError(
            f"labels_csv: none of its {len(rows)} rows matches an image (e.g. {rows[0][0]!r} "
            f"vs {items[0].name!r}); use the file names or relative paths shown in the set."
            if rows else "labels_csv: no 'filename,label' rows found.")
    notes = []
    if unmatched:
        notes.append(f"labels_csv: {len(unmatched)} row(s) match no image, e.g. "
                     + ", ".join(repr(u) for u in unmatched[:5]))
    if ambiguous:
        notes.append(f"labels_csv: {len(ambiguous)} file name(s) match several images and were "
                     "ignored (use the relative path), e.g. "
                     + ", ".join(repr(a) for a in ambiguous[:5]))
    out = [replace(it, label=labels[i]) if i in labels else it for i, it in enumerate(items)]
    unlabeled = sum(it.label is None for it in out)
    if unlabeled:
        notes.append(f"labels_csv: {unlabeled} image(s) have no label")
    return out, tuple(notes)
