"""LaZSL's datasets beyond the CoOp set: CUB-200-2011 and Places365, in their release layouts.

    cub        $ROOT/CUB_200_2011/ (or $ROOT/cub/CUB_200_2011/, $ROOT/cub/)
                 images/<NNN.Class_name>/<file>.jpg
                 classes.txt             '<class id> <NNN.Class_name>' per line (1-based)
                 images.txt              '<image id> <path under images/>'
                 image_class_labels.txt  '<image id> <class id>'
                 train_test_split.txt    '<image id> <1 = train, 0 = test>'
    places365  $ROOT/places365/ (or $ROOT/Places365/)
                 val_256/Places365_val_00000001.jpg ... (or val_large/)
                 places365_val.txt        '<file name> <label>' per line
                 categories_places365.txt '/a/airfield 0' per line

The class lists are read from the release's own files (``classes.txt``,
``categories_places365.txt``): "001.Black_footed_Albatross" -> "Black footed Albatross",
"/a/apartment_building/outdoor" -> "apartment building outdoor". The prompts are data
(``assets/presets/lazsl_templates.json``). LaZSL scores the test split with the attribute
descriptors the user supplies (``--attributes-dir``: ``cub.json`` / ``places365.json``, DCLIP
format; names are matched ignoring case, underscores, hyphens and slashes).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.data.classes import PRESET_DIR
from core.data.coop import BenchmarkData, DatasetError, SplitEntry, rel_name

__all__ = ["LAZSL_DATASETS", "open_lazsl_dataset"]

_CUB_EXPECTED = """CUB-200-2011 (CUB_200_2011.tgz, extracted): {root}/CUB_200_2011/ (or {root}/cub/)
  images/<NNN.Class_name>/<file>.jpg
  classes.txt             '<class id> <NNN.Class_name>' per line
  images.txt              '<image id> <path under images/>'
  image_class_labels.txt  '<image id> <class id>'
  train_test_split.txt    '<image id> <1 train / 0 test>'"""
_PLACES_EXPECTED = """Places365-Standard validation: {root}/places365/ (or {root}/Places365/)
  val_256/Places365_val_00000001.jpg ...  (or val_large/)
  places365_val.txt         '<file name> <label>' per line (from filelist_places365-standard)
  categories_places365.txt  '/a/airfield 0' per line"""
LAZSL_DATASETS = {"cub": ("CUB-200-2011", 200), "places365": ("Places365", 365)}


def _templates() -> dict:
    return json.loads((PRESET_DIR / "lazsl_templates.json").read_text(encoding="utf-8"))


def _find(root: Path, candidates, marker: str, expected: str) -> Path:
    for sub in candidates:
        if (root / sub / marker).is_file():
            return root / sub
    raise DatasetError(f"no {marker} under {root} (looked in "
                       f"{', '.join(str(root / c) for c in candidates)}). Expected:\n"
                       + expected.format(root=root))


def _table(path: Path, expected: str, n_fields: int = 2) -> list[list[str]]:
    """A release's whitespace-separated list file, each line split into ``n_fields`` fields."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1)
        if len(parts) != n_fields:
            raise DatasetError(f"{path}: line {i} {line!r} does not have {n_fields} fields. "
                               f"Expected:\n{expected}")
        rows.append(parts)
    return rows


def _read_cub(root: Path) -> tuple[Path, tuple[str, ...], dict]:
    expected = _CUB_EXPECTED.format(root=root)
    folder = _find(root, ("CUB_200_2011", "cub/CUB_200_2011", "cub"), "classes.txt", expected)
    try:
        classes = {cid: raw for cid, raw in _table(folder / "classes.txt", expected)}
        images = dict(_table(folder / "images.txt", expected))
        labels = dict(_table(folder / "image_class_labels.txt", expected))
        is_train = dict(_table(folder / "train_test_split.txt", expected))
    except FileNotFoundError as exc:
        raise DatasetError(f"cub: missing {exc.filename}. Expected:\n{expected}") from None
    order = list(classes)  # class ids in file order (1..200)
    index = {cid: i for i, cid in enumerate(order)}
    names = tuple(classes[c].split(".", 1)[-1].replace("_", " ") for c in order)
    splits: dict[str, list[SplitEntry]] = {"train": [], "test": []}
    for image_id, rel in images.items():
        if labels.get(image_id) not in index:
            raise DatasetError(f"cub: image {image_id} has class {labels.get(image_id)!r}, not "
                               f"in classes.txt. Expected:\n{expected}")
        path = folder / "images" / rel
        split = "train" if is_train.get(image_id) == "1" else "test"
        splits[split].append(SplitEntry(path, rel_name(path, folder), index[labels[image_id]]))
    return folder, names, splits


def _read_places(root: Path) -> tuple[Path, tuple[str, ...], dict]:
    expected = _PLACES_EXPECTED.format(root=root)
    folder = _find(root, ("places365", "Places365"), "categories_places365.txt", expected)
    cats = _table(folder / "categories_places365.txt", expected)
    names = tuple(" ".join(c.strip("/").split("/", 1)[-1].replace("/", " ").split("_"))
                  for c, _ in sorted(cats, key=lambda row: int(row[1])))
    val = folder / "places365_val.txt"
    image_dir = next((folder / d for d in ("val_256", "val_large") if (folder / d).is_dir()), None)
    if not val.is_file() or image_dir is None:
        raise DatasetError(f"places365: missing {val.name if not val.is_file() else 'val_256/'} "
                           f"in {folder}. Expected:\n{expected}")
    test = []
    for name, label in _table(val, expected):
        if not label.isdigit() or int(label) >= len(names):
            raise DatasetError(f"places365: label {label!r} of {name} is not one of the "
                               f"{len(names)} categories. Expected:\n{expected}")
        path = image_dir / name
        test.append(SplitEntry(path, rel_name(path, folder), int(label)))
    return folder, names, {"train": [], "test": test}


def open_lazsl_dataset(key: str, root) -> BenchmarkData:
    """CUB-200-2011 ("cub") or Places365 ("places365") as ``BenchmarkData`` (test split: CUB's
    official test images, Places365's validation set; CUB's train split too).

    Raises ``DatasetError`` naming the expected layout when the folder does not match.
    """
    if key not in LAZSL_DATASETS:
        raise DatasetError(f"unknown dataset {key!r}; expected one of {', '.join(LAZSL_DATASETS)}.")
    display, n_classes = LAZSL_DATASETS[key]
    if root is None:
        raise DatasetError(f"{key}: pass --root, the folder that holds {display}.")
    root = Path(root)
    folder, names, splits = (_read_cub if key == "cub" else _read_places)(root)
    if not splits["test"] or not any(e.path.is_file() for e in splits["test"][:8]):
        raise DatasetError(f"{key}: the test split lists no existing image under {folder}. "
                           "Expected:\n" + (_CUB_EXPECTED if key == "cub"
                                            else _PLACES_EXPECTED).format(root=root))
    notes = [] if len(names) == n_classes else [
        f"{display}: {len(names)} classes listed, not {n_classes} (not the paper's protocol)."]
    return BenchmarkData(key=key, display_name=display, folder=folder, class_names=names,
                         template=_templates()[key],
                         splits={k: tuple(v) for k, v in splits.items()} | {"val": ()},
                         layout=key, is_preset=True, notes=tuple(notes))
