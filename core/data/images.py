"""Image sets from files, folders and zips, validated cheaply and decoded lazily.

Loading reads raw bytes and only the image header: format allowlist, pixel count, size. Full
decoding (``decode_image``) happens later and only for images whose features are not cached yet,
so a cached rerun never pays for it. A bad file is reported by name (``SkippedFile``) and skipped;
the rest is processed.

This module reads files and folders, applies CSV labels and builds the ``ImageSet``; decoding is
in ``core.data.decode``, zip reading and the size limits (DESIGN.md "Input safety") in
``core.data.archives``, presets and class lists in ``core.data.classes``; ``core.data`` is the
face that re-exports them all.

Duplicates (same bytes twice) are kept: a data set may hold the same picture under two names. They
share a sha256, hence one cached feature.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from PIL import Image

from core.checks import check_int, check_positive
from core.data.archives import (
    ARCHIVE_SUFFIXES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_BYTES,
    _Budget,
    _ignored,
    _Limits,
    _mib,
    _with_folder_labels,
    _zip_entries,
)
from core.data.decode import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    SNIFF_BYTES,
    BadImageError,
    SkippedFile,
    _open_image,
    _sniff,
)

_HEADER_KEYS = {"filename", "file_name", "file", "name", "path", "image", "image_path", "img"}


class NoImagesError(ValueError):
    """Nothing usable was found; ``skipped`` says what happened to each file."""

    def __init__(self, message: str, skipped: Sequence[SkippedFile] = ()):
        super().__init__(message)
        self.skipped = tuple(skipped)


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


# ----------------------------------------------------------------------------- loading


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

    def accept(name: str, data: bytes) -> ImageItem | None:
        try:
            return ImageItem.from_bytes(name, data, max_pixels=max_pixels)
        except BadImageError as exc:
            skipped.append(SkippedFile(name, exc.reason))
            return None

    for src in sources:
        if isinstance(src, bytes):
            items += _zip_entries(src, "archive.zip", limits, budget, skipped, accept)
        elif isinstance(src, (str, os.PathLike)):
            path = Path(src)
            try:
                is_dir = path.is_dir()
            except (OSError, ValueError) as exc:  # "File name too long", a NUL byte
                skipped.append(SkippedFile(_short(str(src)), "cannot read: "
                                           f"{getattr(exc, 'strerror', None) or exc}"))
                continue
            if is_dir:
                items += _folder_entries(path, limits, budget, skipped, accept)
            elif path.suffix.lower() == ".zip":
                items += _zip_entries(path, path.name, limits, budget, skipped, accept)
            elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
                skipped.append(SkippedFile(path.name, "archive format not supported; use a .zip"))
            else:
                data = _read_file(path, path.name, limits, budget, skipped)
                item = accept(path.name, data) if data is not None else None
                items += [item] if item is not None else []
        else:
            raise ValueError(f"source: expected paths or zip bytes in the list, got "
                             f"{type(src).__name__}.")

    notes: tuple[str, ...] = ()
    if labels_csv is not None and items:
        items, notes = _apply_csv(items, labels_csv)
    if not items:
        raise NoImagesError(_nothing_usable(skipped), skipped)
    return ImageSet(items=_unique_names(items), skipped=tuple(skipped), warnings=notes)


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[:limit - 3] + "..."


def _nothing_usable(skipped: Sequence[SkippedFile]) -> str:
    allowed = f"allowed formats are {', '.join(ALLOWED_FORMATS)}"
    if not skipped:
        return (f"no usable images: the upload holds no files (an empty folder or zip, or only "
                f"hidden and system files); {allowed}.")
    shown = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return f"no usable images: {len(skipped)} file(s) skipped ({shown}{more}); {allowed}."


def _unique_names(items: list[ImageItem]) -> tuple[ImageItem, ...]:
    """Display names made unique: a second ``dup.png`` (two uploads of that name, or the same path
    in two zips) becomes ``dup (2).png``, so results and downloads tell them apart."""
    taken = {it.name for it in items}
    seen: set[str] = set()
    out = []
    for it in items:
        if it.name in seen:
            path = PurePosixPath(it.name)
            k = 2
            while (new := str(path.with_name(f"{path.stem} ({k}){path.suffix}"))) in taken:
                k += 1
            taken.add(new)
            it = replace(it, name=new)
        seen.add(it.name)
        out.append(it)
    return tuple(out)


def _folder_entries(root: Path, limits: _Limits, budget: _Budget, skipped: list[SkippedFile],
                    accept) -> list[ImageItem]:
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
    items: list[ImageItem] = []
    for rel, path in found:
        if rel.lower().endswith(ARCHIVE_SUFFIXES):
            skipped.append(SkippedFile(rel, "archive inside a folder skipped (load it alone)"))
            continue
        data = _read_file(path, rel, limits, budget, skipped)
        item = accept(rel, data) if data is not None else None  # validated before the next read
        if item is not None:
            items.append(item)
    return _with_folder_labels(items)


def _read_file(path: Path, name: str, limits: _Limits, budget: _Budget,
               skipped: list[SkippedFile]) -> bytes | None:
    """A file's bytes, or None (reason in ``skipped``); a file that does not start like an
    allowed image costs ``SNIFF_BYTES`` at most."""
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
        cap = min(limits.max_file_bytes, budget.left)
        with open(path, "rb") as fh:
            head = fh.read(min(SNIFF_BYTES, cap + 1))
            try:
                _sniff(head, name)
            except BadImageError as exc:
                budget.left -= len(head)
                skipped.append(SkippedFile(name, exc.reason))
                return None
            # One byte past the size seen: bounded if the file grew (and read(n) allocates n
            # bytes up front, so never ask for the cap itself).
            data = head + fh.read(max(0, min(cap, size) + 1 - len(head)))
    except OSError as exc:
        skipped.append(SkippedFile(name, f"cannot read file ({exc.strerror or exc})"))
        return None
    if len(data) > cap:
        skipped.append(SkippedFile(name, "file too large or total size limit reached"))
        return None
    budget.left -= len(data)
    return data


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
