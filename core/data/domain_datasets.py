"""The remote-sensing and histopathology datasets of OTFusion's CVPR 2026 successor (SOTA).

Class lists, folder names and prompts are data (``assets/presets/domain_datasets.json``, from
the authors' release, which takes them from RS-TransCLIP and Histo-TransCLIP). Each dataset is
looked for under ``--root`` in the folders its entry lists (``dirs``, first found wins) and read
in one of three layouts:

    folder-per-class  <dir>/<class folder>/*.jpg   (the public releases: AID/Airport/...,
                      NCT-CRC-HE-100K/CRC-VAL-HE-7K/ADI/..., LC25000/.../lung_image_sets/lung_n/;
                      RSI-CB's <category>/<class folder>/ too)
    flat, named       <dir>/<class>_<n>.<ext>      (RS-TransCLIP's formatted ``<Name>/images/``:
                      the class name without spaces, e.g. baseballfield_12.tif)
    csv               <dir>/<csv file> with path, class and split columns (skin cancer:
                      data/tiles-v2.csv, columns file, class, set)

A folder or file-name prefix names a class when it equals the class name or one of the entry's
``aliases`` (the release's folder names, e.g. NCT's "ADI" -> "Adipose"), compared on lowercase
letters and digits only. The test split is what the authors evaluate on (every image of a
remote-sensing set; NCT's CRC-VAL-HE-7K; all LC25000 lung tiles; skin cancer's Test rows); the
prompts are ensembled (22 histopathology templates; RS-TransCLIP's 106 averaged prompts).
TIFF files (NCT, RSI-CB) are not decoded (``core.data.decode.ALLOWED_FORMATS``): a folder of
them is refused with the conversion to PNG to run.
"""

from __future__ import annotations

import csv
import json
import re
from functools import lru_cache
from pathlib import Path

from core.data.classes import PRESET_DIR
from core.data.coop import (
    IMAGE_SUFFIXES,
    BenchmarkData,
    DatasetError,
    SplitEntry,
    class_dirs,
    image_files,
    rel_name,
)

__all__ = ["DOMAIN_DATASETS", "domain_spec", "open_domain_dataset"]


@lru_cache(maxsize=1)
def _presets() -> dict:
    return json.loads((PRESET_DIR / "domain_datasets.json").read_text(encoding="utf-8"))


def domain_spec(key: str) -> dict:
    """A dataset's entry: display, domain, templates (a key), dirs, classes, aliases, test."""
    return _presets()["datasets"][key]


# key -> display name, in the data file's order (remote sensing first)
DOMAIN_DATASETS: dict[str, str] = {k: v["display"] for k, v in _presets()["datasets"].items()}


def _norm(name: str) -> str:
    """Letters and digits, lowercase: "Baseball_Field" == "baseballfield" == "baseball field"."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def _expected(key: str, root: Path) -> str:
    spec = domain_spec(key)
    where = " or ".join(f"{root}/{d}" for d in spec["dirs"])
    if "csv" in spec:
        c = spec["csv"]
        return (f"{spec['display']}: {where}/{c['file']} (columns {c['path']!r}: image path "
                f"relative to that folder, {c['class']!r}: class, {c['split']!r}: split, "
                f"{c['test']!r} = test)")
    return (f"{spec['display']}: {where}, holding either one folder per class "
            f"(<class>/<image>) or the images themselves named <class>_<n>"
            f"{'/'.join(IMAGE_SUFFIXES[:3])} (RS-TransCLIP's formatted images/); classes: "
            + ", ".join(spec["classes"])
            + (f" (the release's folder names {', '.join(spec['aliases'])} too)"
               if spec["aliases"] else ""))


def _index(key: str) -> dict[str, int]:
    """Normalised class name or alias -> class index."""
    spec = domain_spec(key)
    index = {_norm(c): i for i, c in enumerate(spec["classes"])}
    index.update({_norm(a): spec["classes"].index(c) for a, c in spec["aliases"].items()})
    return index


def _labeller(key: str, root: Path):
    """``name -> class index`` by class name or alias (DatasetError naming the classes)."""
    spec, index = domain_spec(key), _index(key)

    def label(name: str, what: str) -> int:
        if _norm(name) not in index:
            raise DatasetError(f"{key}: {what} {name!r} is not one of its "
                               f"{len(spec['classes'])} classes. Expected:\n"
                               + _expected(key, root))
        return index[_norm(name)]

    return label


def _read_folder(key: str, root: Path, folder: Path) -> list[SplitEntry]:
    label, dirs = _labeller(key, root), class_dirs(folder)
    if dirs and not any(_norm(d.name) in _index(key) for d in dirs):
        # RSI-CB's releases group the class folders in category folders (transportation/...)
        dirs = [sub for d in dirs for sub in class_dirs(d)] or dirs
    per_class = [(d, image_files(d)) for d in dirs]
    if any(files for _, files in per_class):  # folder-per-class
        return [SplitEntry(p, rel_name(p, folder), label(d.name, "class folder"))
                for d, files in per_class if files for p in files]
    entries = []
    for p in image_files(folder):  # flat: <class>_<n>.<ext>
        if "_" not in p.stem:
            raise DatasetError(f"{key}: {p.name} is not named <class>_<n>. Expected:\n"
                               + _expected(key, root))
        entries.append(SplitEntry(p, rel_name(p, folder),
                                  label(p.stem.rsplit("_", 1)[0], "file name prefix")))
    return entries


def _read_csv(key: str, root: Path, folder: Path) -> list[SplitEntry]:
    spec, label = domain_spec(key)["csv"], _labeller(key, root)
    path = folder / spec["file"]
    if not path.is_file():
        raise DatasetError(f"{key}: no {path}. Expected:\n" + _expected(key, root))
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {spec["path"], spec["class"], spec["split"]} - set(rows[0] if rows else ())
    if missing:
        raise DatasetError(f"{key}: {path} has no column(s) {sorted(missing)}. Expected:\n"
                           + _expected(key, root))
    return [SplitEntry(folder / r[spec["path"]], r[spec["path"]], label(r[spec["class"]], "class"))
            for r in rows if r[spec["split"]] == spec["test"]]


def open_domain_dataset(key: str, root) -> BenchmarkData:
    """One of ``DOMAIN_DATASETS`` under ``root`` as ``BenchmarkData`` (test split only).

    Raises ``DatasetError`` naming the expected layout when the folder does not match.
    """
    if key not in DOMAIN_DATASETS:
        raise DatasetError(f"unknown dataset {key!r}; expected one of "
                           f"{', '.join(DOMAIN_DATASETS)}.")
    if root is None:
        raise DatasetError(f"{key}: pass --root. Expected:\n" + _expected(key, Path(".")))
    root, spec = Path(root), domain_spec(key)
    folder = next((root / d for d in spec["dirs"] if (root / d).is_dir()), None)
    if folder is None:
        raise DatasetError(f"{key}: no folder {' or '.join(spec['dirs'])} under {root}. "
                           "Expected:\n" + _expected(key, root))
    test = (_read_csv if "csv" in spec else _read_folder)(key, root, folder)
    if not test:
        tiff = next((p for p in folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff")), None)
        hint = (f" It holds TIFF files ({tiff.name}), which the image decoder does not accept "
                "(core.data.decode.ALLOWED_FORMATS): convert them to PNG keeping the names, e.g. "
                "`mogrify -format png */*.tif`." if tiff else "")
        raise DatasetError(f"{key}: no test image found in {folder}.{hint} Expected:\n"
                           + _expected(key, root))
    names = tuple(spec["classes"])
    absent = [names[i] for i in sorted(set(range(len(names))) - {e.label for e in test})]
    templates = tuple(_presets()["templates"][spec["templates"]])
    notes = [f"{spec['display']} ({spec['domain']}): test split = {spec['test']}; prompts: the "
             f"{len(templates)} {spec['templates'].replace('_', '-')} templates, averaged."]
    notes += [f"{spec['display']}: no image of {len(absent)} of its {len(names)} classes "
             f"({', '.join(absent[:5])}{'...' if len(absent) > 5 else ''}); they stay "
             "candidates."] if absent else []
    return BenchmarkData(key=key, display_name=spec["display"], folder=folder,
                         class_names=names, template=templates[0],
                         splits={"test": tuple(test), "train": (), "val": ()},
                         layout=key, is_preset=True, notes=tuple(notes), templates=templates)
