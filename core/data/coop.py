"""The 11 CoOp benchmark datasets on disk, and the dataset types of the evaluation harness.

CoOp layout (CoOp's DATASETS.md; every dataset in its own folder under one root)::

    $ROOT/<folder>/<image dir>/...        the images
    $ROOT/<folder>/split_zhou_<Name>.json {"train": [[relative path, label, class], ...],
                                           "val": [...], "test": [...]}

ImageNet has no split file: ``images/train/<wnid>/`` and ``images/val/<wnid>/`` (val is the test
split), labels in the order of ``classnames.txt`` (``<wnid> <class name>`` per line) or of the
sorted wnid folders when all 1,000 are there. FGVC Aircraft uses its own lists:
``images_variant_{train,val,test}.txt`` (``<image id> <variant>`` per line) beside ``images/``.

Readers return lists of files (``SplitEntry``), never image bytes; ``core.data.benchmarks`` reads
them chunk by chunk. Labels are indices into the preset's class list: split-file entries are
matched by class name when it is one of the preset's, else by their label index (as CoOp does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.data.classes import PRESETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class DatasetError(ValueError):
    """A dataset that cannot be read as asked; the message shows the expected layout."""


@dataclass(frozen=True)
class Layout:
    """Where a CoOp dataset lives under the root.

    folder : dataset folder under the root. image_dir : folder the split paths are relative to
    ("" = the dataset folder). split_file : CoOp split JSON, or None for the special readers
    ("imagenet", "aircraft").
    """

    key: str
    folder: str
    image_dir: str
    split_file: str | None
    reader: str = "coop_json"

    def expected(self, root: Path | str = "$ROOT") -> str:
        """The expected tree, for error messages."""
        base = f"{Path(root) / self.folder}/"
        if self.reader == "imagenet":
            lines = ["images/train/<wnid>/*.JPEG   (1,000 folders: n01440764, ...)",
                     "images/val/<wnid>/*.JPEG     (validation images sorted into wnid folders)",
                     "classnames.txt               (optional: '<wnid> <class name>' per line)"]
        elif self.reader == "aircraft":
            lines = ["images/<image id>.jpg",
                     "images_variant_test.txt   ('<image id> <variant>' per line)",
                     "images_variant_train.txt  (for GPUA; images_variant_val.txt unused)"]
        else:
            img = f"{self.image_dir}/" if self.image_dir else "<class folders / image files>"
            lines = [f"{img:30s} (the images)",
                     f"{self.split_file}  (CoOp split: {{\"train\": [[path, label, class], ...], "
                     "\"val\": [...], \"test\": [...]}, paths relative to "
                     f"{self.image_dir or 'the dataset folder'}/)"]
        return base + "".join(f"\n  {line}" for line in lines)


LAYOUTS: dict[str, Layout] = {
    lay.key: lay
    for lay in (
        Layout("imagenet", "imagenet", "images", None, "imagenet"),
        Layout("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
        Layout("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
        Layout("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
        Layout("flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        Layout("food101", "food-101", "images", "split_zhou_Food101.json"),
        Layout("fgvc_aircraft", "fgvc_aircraft", "images", None, "aircraft"),
        Layout("sun397", "sun397", "SUN397", "split_zhou_SUN397.json"),
        Layout("dtd", "dtd", "images", "split_zhou_DescribableTextures.json"),
        Layout("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json"),
        Layout("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    )
}


@dataclass(frozen=True)
class SplitEntry:
    """One image file of a split: ``name`` is its path relative to the dataset folder."""

    path: Path
    name: str
    label: int


@dataclass(frozen=True)
class BenchmarkData:
    """A dataset's class list, prompt and split file lists (``splits["test"]`` always present)."""

    key: str
    display_name: str
    folder: Path
    class_names: tuple[str, ...]
    template: str
    splits: dict[str, tuple[SplitEntry, ...]] = field(hash=False)
    layout: str  # "coop" or "folder"
    is_preset: bool
    notes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()  # a prompt ensemble that replaces ``template`` when given


def norm_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def known_datasets() -> str:
    return ", ".join(LAYOUTS)


def dataset_folder(key: str, root: Path | str) -> Path:
    return Path(root) / LAYOUTS[key].folder


# ----------------------------------------------------------------------------- CoOp readers


def open_coop(key: str, root: Path, split_file) -> BenchmarkData:
    lay, preset = LAYOUTS[key], PRESETS[key]
    folder = root / lay.folder
    if not root.is_dir():
        raise DatasetError(f"--root {root} is not a folder. Expected:\n{lay.expected(root)}")
    if not folder.is_dir():
        raise DatasetError(f"{key}: no folder {folder}. Expected:\n{lay.expected(root)}")
    image_dir = folder / lay.image_dir if lay.image_dir else folder
    if not image_dir.is_dir():
        raise DatasetError(f"{key}: no image folder {image_dir}. Expected:\n{lay.expected(root)}")
    notes: list[str] = []
    if split_file is not None:
        splits = _read_coop_json(Path(split_file), image_dir, folder, preset, notes, lay, root)
        notes.append(f"split file {split_file} (not the standard {lay.split_file or 'split'})")
    elif lay.reader == "imagenet":
        splits = _read_imagenet(folder, lay, root, notes)
    elif lay.reader == "aircraft":
        splits = _read_aircraft(folder, preset, lay, root)
    else:
        path = folder / lay.split_file
        if not path.is_file():
            raise DatasetError(f"{key}: split file {path} is missing (download it from CoOp's "
                               f"DATASETS.md, or pass --split-file). Expected:\n"
                               f"{lay.expected(root)}")
        splits = _read_coop_json(path, image_dir, folder, preset, notes, lay, root)
    _check_files_exist(splits["test"], key, lay, root)
    return BenchmarkData(key=key, display_name=preset.display_name, folder=folder,
                         class_names=preset.class_names, template=preset.template,
                         splits=splits, layout="coop", is_preset=True, notes=tuple(notes))


def _check_files_exist(entries: Sequence[SplitEntry], key: str, lay: Layout, root: Path):
    if not entries:
        raise DatasetError(f"{key}: the test split is empty. Expected:\n{lay.expected(root)}")
    sample = entries[:: max(1, len(entries) // 8)][:8]
    if not any(e.path.is_file() for e in sample):
        raise DatasetError(f"{key}: the split lists files that do not exist (e.g. {sample[0].path})"
                           f". Expected:\n{lay.expected(root)}")


def rel_name(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def _read_coop_json(path: Path, image_dir: Path, folder: Path, preset, notes: list[str],
                    lay: Layout, root: Path) -> dict[str, tuple[SplitEntry, ...]]:
    fmt = ('{"train": [["<path under ' + (lay.image_dir or lay.folder) + '>", <label>, '
           '"<class>"], ...], "val": [...], "test": [...]}')
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"split file {path}: unreadable ({exc}); expected {fmt}.") from None
    if not isinstance(data, dict) or "test" not in data:
        raise DatasetError(f"split file {path}: expected {fmt}.")
    index: dict[str, int] = {}
    for i, raw in enumerate(preset.raw_class_names):
        index.setdefault(norm_name(raw), i)
    n_classes, unmatched, reordered = len(preset.raw_class_names), {}, 0
    splits = {}
    for split in ("train", "val", "test"):
        rows = data.get(split, [])
        entries = []
        for row in rows:
            if (not isinstance(row, list) or len(row) < 2 or not isinstance(row[0], str)
                    or not isinstance(row[1], int)):
                raise DatasetError(f"split file {path}: bad {split} entry {row!r}; expected {fmt}.")
            cls = row[2] if len(row) > 2 and isinstance(row[2], str) else None
            label = index.get(norm_name(cls)) if cls is not None else None
            if label is None:  # unknown spelling: trust the label index, as CoOp does
                label = row[1]
                if cls is not None:
                    unmatched[cls] = row[1]
            elif label != row[1]:
                reordered += 1
            if not 0 <= label < n_classes:
                raise DatasetError(f"split file {path}: label {label} of {row[0]!r} is outside "
                                   f"0..{n_classes - 1} ({preset.key} has {n_classes} classes).")
            full = image_dir / row[0]
            entries.append(SplitEntry(full, rel_name(full, folder), label))
        splits[split] = tuple(entries)
    if unmatched:
        shown = ", ".join(f"{c!r}->{preset.class_names[k] if 0 <= k < n_classes else k}"
                          for c, k in list(unmatched.items())[:3])
        notes.append(f"{len(unmatched)} class name(s) of the split file are not in the preset; "
                     f"their label index was used ({shown}).")
    if reordered:
        notes.append(f"{reordered} split entries had a label index that disagrees with the "
                     "preset's class order; their class name was used instead.")
    return splits


def image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return out


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_imagenet(folder: Path, lay: Layout, root: Path, notes: list[str]):
    names_file = folder / "classnames.txt"
    order: dict[str, int] = {}
    if names_file.is_file():
        for line in names_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                order.setdefault(line.split()[0], len(order))
    splits = {}
    for split, sub in (("train", "train"), ("test", "val")):
        d = folder / "images" / sub
        if not d.is_dir():
            if split == "train":
                notes.append(f"no {d}: GPUA cannot fit on the train split.")
                splits[split] = ()
                continue
            raise DatasetError(f"imagenet: no folder {d}. Expected:\n{lay.expected(root)}")
        wnids = [p.name for p in class_dirs(d)]
        if not wnids:
            raise DatasetError(f"imagenet: {d} has no class folders (sort the validation images "
                               f"into <wnid>/ folders). Expected:\n{lay.expected(root)}")
        if not order:
            if len(wnids) != 1000:
                raise DatasetError(f"imagenet: {d} has {len(wnids)} class folders, not 1,000; "
                                   "add classnames.txt ('<wnid> <name>' per line, in label order) "
                                   f"so labels can be matched. Expected:\n{lay.expected(root)}")
            order = {w: i for i, w in enumerate(wnids)}
        unknown = [w for w in wnids if w not in order]
        if unknown:
            raise DatasetError(f"imagenet: folders {unknown[:3]} of {d} are not in classnames.txt.")
        splits[split] = tuple(SplitEntry(p, rel_name(p, folder), order[w])
                              for w in wnids for p in image_files(d / w))
    splits.setdefault("val", ())
    return splits


def _read_aircraft(folder: Path, preset, lay: Layout, root: Path):
    index = {norm_name(c): i for i, c in enumerate(preset.raw_class_names)}
    splits = {}
    for split in ("train", "val", "test"):
        path = folder / f"images_variant_{split}.txt"
        if not path.is_file():
            if split == "test":
                raise DatasetError(f"fgvc_aircraft: missing {path}. Expected:\n"
                                   f"{lay.expected(root)}")
            splits[split] = ()
            continue
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if norm_name(variant) not in index:
                raise DatasetError(f"fgvc_aircraft: variant {variant!r} in {path.name} is not one "
                                   f"of the {len(index)} preset classes.")
            full = folder / "images" / f"{image_id}.jpg"
            entries.append(SplitEntry(full, rel_name(full, folder), index[norm_name(variant)]))
        splits[split] = tuple(entries)
    return splits
