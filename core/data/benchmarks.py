"""Benchmark datasets: find one by name (CoOp layout) or folder (folder-per-class), sample, read.

Folder-per-class layout: ``<folder>/train/<class>/*`` and ``<folder>/test/<class>/*`` (``val/``
stands in for a missing ``test/``), or a single ``<folder>/<class>/*`` (test split only). The 11
CoOp datasets are read by ``core.data.coop``.

Everything here works on lists of files (``SplitEntry``): ``iter_chunks`` reads a split a chunk
at a time, so a split as large as ImageNet's never sits in memory at once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from core.data.classes import PRESETS, get_preset
from core.data.coop import (  # noqa: F401  (re-exported: the harness's dataset API)
    IMAGE_SUFFIXES,
    LAYOUTS,
    BenchmarkData,
    DatasetError,
    Layout,
    SplitEntry,
    class_dirs,
    dataset_folder,
    image_files,
    known_datasets,
    norm_name,
    open_coop,
    rel_name,
)
from core.data.decode import BadImageError, SkippedFile
from core.data.domain_datasets import DOMAIN_DATASETS, open_domain_dataset
from core.data.imagenet_variants import VARIANTS, open_imagenet_variant
from core.data.images import ImageItem
from core.data.lazsl_datasets import LAZSL_DATASETS, open_lazsl_dataset

MAX_IMAGE_BYTES = 64 * 1024**2  # benchmark images are small; a bigger file is a mistake


def open_benchmark(name: str, root: str | os.PathLike | None, *, split_file=None,
                   layout: str = "auto") -> BenchmarkData:
    """Find a dataset by preset key (CoOp layout under ``root``) or folder (folder-per-class).

    name : a preset key or display name ("oxford_pets", "DTD"), an ImageNet variant
        (``core.data.imagenet_variants``: "imagenet_a", ...), "cub" or "places365"
        (``core.data.lazsl_datasets``), a remote-sensing or histopathology set
        (``core.data.domain_datasets``: "aid", "nct_crc", ...), a folder under ``root``, or a
        path.
    split_file : another CoOp-format split JSON for a CoOp dataset.
    layout : "auto", "coop" or "folder" (a preset's folder read as folder-per-class).
    Raises ``DatasetError`` naming what was expected.
    """
    if layout not in ("auto", "coop", "folder"):
        raise DatasetError(f"layout: expected 'auto', 'coop' or 'folder', got {layout!r}.")
    variant = name.lower().replace("-", "_")
    if variant in VARIANTS:  # ImageNet-A / -R / -V2 / -Sketch: their release layouts
        return open_imagenet_variant(variant, root)
    if variant in LAZSL_DATASETS:  # CUB-200-2011, Places365: their release layouts
        return open_lazsl_dataset(variant, root)
    if variant in DOMAIN_DATASETS:  # remote sensing, histopathology (OTFusion's successor)
        return open_domain_dataset(variant, root)
    root_path = Path(root) if root is not None else None
    preset = None
    try:
        preset = get_preset(name)
    except ValueError:
        pass
    if preset is not None and layout != "folder":
        if root_path is None:
            raise DatasetError(f"{preset.key}: pass --root, the folder that holds "
                               f"'{LAYOUTS[preset.key].folder}/'. Expected:\n"
                               + LAYOUTS[preset.key].expected())
        return open_coop(preset.key, root_path, split_file)
    candidates = [Path(name)] + ([root_path / name] if root_path is not None else [])
    if preset is not None and root_path is not None:
        candidates.insert(0, dataset_folder(preset.key, root_path))
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        where = " or ".join(str(c) for c in candidates)
        raise DatasetError(
            f"unknown dataset {name!r}: not a benchmark name and no folder at {where}. "
            f"Benchmarks (CoOp layout under --root): {known_datasets()}. Or give a "
            "folder-per-class dataset: <folder>/train/<class>/*.jpg + <folder>/test/<class>/"
            "*.jpg, or <folder>/<class>/*.jpg.")
    return open_folder_dataset(folder, preset_key=preset.key if preset else None)


# ----------------------------------------------------------------------------- folder datasets


def open_folder_dataset(folder: str | os.PathLike, *, preset_key: str | None = None,
                        ) -> BenchmarkData:
    """Folder-per-class dataset: ``train/`` + ``test/`` (or ``val/``) subfolders, or one folder.

    Class names are the folder names (underscores read as spaces) unless ``preset_key`` is given
    and every folder matches one of that preset's classes (then its class list and prompt apply).
    """
    from core.methods.zeroshot import DEFAULT_TEMPLATE

    folder = Path(folder)
    subs = {p.name.lower(): p for p in class_dirs(folder)} if folder.is_dir() else {}
    test_dir = subs.get("test") or subs.get("val")
    split_dirs = {"test": test_dir, "train": subs.get("train")} if test_dir else {"test": folder}
    per_split = {s: {p.name: image_files(p) for p in class_dirs(d)}
                 for s, d in split_dirs.items() if d is not None}
    found = sorted({c for classes in per_split.values() for c, files in classes.items() if files})
    if len(found) < 2:
        raise DatasetError(
            f"{folder}: expected a folder-per-class dataset with at least 2 class folders holding "
            f"images ({', '.join(IMAGE_SUFFIXES)}): {folder}/train/<class>/*.jpg and "
            f"{folder}/test/<class>/*.jpg, or {folder}/<class>/*.jpg; found {len(found)}.")
    notes: list[str] = []
    class_names = tuple(c.replace("_", " ") for c in found)
    template, display, is_preset = DEFAULT_TEMPLATE, folder.name, False
    if preset_key is not None:
        preset = PRESETS[preset_key]
        index = {}
        for i, c in enumerate(preset.raw_class_names):
            index.setdefault(norm_name(c), i)
        if all(norm_name(c) in index for c in found):
            class_names, template = preset.class_names, preset.template
            display, is_preset = preset.display_name, True
            label_of = {c: index[norm_name(c)] for c in found}
        else:
            notes.append(f"folder names do not all match the {preset_key} classes: the folder "
                         "names are the classes and the generic prompt is used.")
    if not is_preset:
        label_of = {c: i for i, c in enumerate(found)}
    splits = {s: tuple(SplitEntry(p, rel_name(p, folder), label_of[c])
                       for c, files in classes.items() if c in label_of for p in files)
              for s, classes in per_split.items()}
    splits.setdefault("train", ())
    splits.setdefault("val", ())
    if not splits["train"]:
        notes.append("no train/ split: GPUA is fitted on the (unlabeled) test images.")
    return BenchmarkData(key=preset_key if is_preset else folder.name, display_name=display,
                         folder=folder, class_names=class_names, template=template,
                         splits=splits, layout="folder", is_preset=is_preset, notes=tuple(notes))


def find_benchmarks(root: str | os.PathLike) -> list[str]:
    """Preset keys whose CoOp folder exists under ``root``, then other folders with train/+test/."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--root {root} is not a folder.")
    found = [key for key, lay in LAYOUTS.items() if (root / lay.folder).is_dir()]
    coop_folders = {lay.folder for lay in LAYOUTS.values()}
    for sub in class_dirs(root):
        names = {p.name.lower() for p in class_dirs(sub)}
        if sub.name not in coop_folders and "train" in names and names & {"test", "val"}:
            found.append(str(sub))
    return found


# ----------------------------------------------------------------------------- sampling, reading


def balanced_subset(entries: Sequence[SplitEntry], n: int | None = None, *,
                    per_class: int | None = None, seed: int = 0) -> tuple[SplitEntry, ...]:
    """A seeded, class-balanced subset: ``per_class`` images per class, and/or ``n`` in all.

    Labels only pick a balanced pool (as GPUA*'s "16 images per class" does); the methods never
    see them. Order within the result follows the input order.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        by_class.setdefault(e.label, []).append(i)
    for idx in by_class.values():
        rng.shuffle(idx)
        if per_class is not None:
            del idx[per_class:]
    if n is None:
        keep = [i for idx in by_class.values() for i in idx]
    else:  # round-robin over classes, so a small n still covers as many classes as it can
        keep, depth = [], 0
        queues = list(by_class.values())
        while len(keep) < n and any(depth < len(q) for q in queues):
            keep += [q[depth] for q in queues if depth < len(q)][: n - len(keep)]
            depth += 1
    return tuple(entries[i] for i in sorted(keep))


def iter_chunks(entries: Sequence[SplitEntry], chunk_size: int,
                ) -> Iterator[tuple[list[ImageItem], list[SkippedFile]]]:
    """Read ``chunk_size`` files at a time as validated ``ImageItem`` (bad files are skipped)."""
    for start in range(0, len(entries), chunk_size):
        items, skipped = [], []
        for e in entries[start:start + chunk_size]:
            try:
                size = e.path.stat().st_size
                if size > MAX_IMAGE_BYTES:
                    raise BadImageError(e.name, f"file too large ({size / 2**20:.0f} MiB)")
                items.append(ImageItem.from_bytes(e.name, e.path.read_bytes()))
            except OSError as exc:
                skipped.append(SkippedFile(e.name, f"cannot read file ({exc.strerror or exc})"))
            except BadImageError as exc:
                skipped.append(SkippedFile(e.name, exc.reason))
        yield items, skipped
