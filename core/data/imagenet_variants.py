"""ImageNet's distribution-shift test sets (GPUA Table 7, LaZSL's domain-generalisation table).

Each variant is read in the layout of its public release, found under ``--root`` either at the
path CoOp's DATASETS.md uses or as the release's own folder::

    imagenet_a       $ROOT/imagenet-adversarial/imagenet-a/<wnid>/*.jpg   (or $ROOT/imagenet-a/)
                     200 wnid folders, a subset of ImageNet's classes
    imagenet_r       $ROOT/imagenet-rendition/imagenet-r/<wnid>/*.jpg    (or $ROOT/imagenet-r/)
                     200 wnid folders, another subset
    imagenet_v2      $ROOT/imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg
                     (or $ROOT/imagenetv2-matched-frequency-format-val/): folder = label index
    imagenet_sketch  $ROOT/imagenet-sketch/images/<wnid>/*.JPEG (or .../sketch/, $ROOT/sketch/)
                     1,000 wnid folders

Class lists are data files in ``assets/presets/``: ``imagenet_wnids.txt`` (ImageNet's 1,000
WordNet ids in label order, i.e. sorted, the order of the CoOp / open_clip class names) and
``imagenet_a_wnids.txt`` / ``imagenet_r_wnids.txt`` (the 200-class subsets the two datasets were
released with; the same lists ship with timm). Names and the prompt are ImageNet's preset.

Protocol: each variant is a test split scored among its own classes (A / R: the 200 prototypes
of their subset, which is what restricting CLIP's 1,000 logits to the subset does). A variant has
no train split of its own: the methods fitted on a pool (GPUA) use ImageNet's train split, of the
variant's classes, when ``$ROOT/imagenet/images/train/`` exists (CoOp layout, ``core.data.coop``).
A folder holding only some of the classes is read with those classes alone and a note saying the
run is not the paper's protocol (generated stand-ins in the tests do this).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.data.classes import PRESET_DIR, PRESETS
from core.data.coop import (
    BenchmarkData,
    DatasetError,
    SplitEntry,
    class_dirs,
    image_files,
    open_coop,
    rel_name,
)

__all__ = ["VARIANTS", "VariantLayout", "imagenet_wnids", "open_imagenet_variant",
           "variant_wnids"]


@dataclass(frozen=True)
class VariantLayout:
    """Where a variant lives under the root and how its class folders are named.

    folders : candidate dataset folders under the root, first match wins.
    naming : "wnid" (folders are WordNet ids) or "index" (folders are label indices 0..999).
    subset_file : file in ``assets/presets`` listing the variant's wnids (None: all 1,000).
    """

    key: str
    display_name: str
    folders: tuple[str, ...]
    naming: str
    subset_file: str | None
    example: str  # one file path of the release, for the message

    def expected(self, root: Path | str = "$ROOT") -> str:
        n = "200" if self.subset_file else "1,000"
        what = ("label-index folders 0 .. 999" if self.naming == "index"
                else f"{n} WordNet-id folders ({variant_wnids(self.key)[0]}, ...)")
        paths = " or ".join(f"{Path(root) / f}/" for f in self.folders)
        return (f"{self.display_name}: {paths} holding {what} with the images inside, "
                f"e.g. {self.example}")


VARIANTS: dict[str, VariantLayout] = {v.key: v for v in (
    VariantLayout("imagenet_a", "ImageNet-A", ("imagenet-adversarial/imagenet-a", "imagenet-a"),
                  "wnid", "imagenet_a_wnids.txt", "imagenet-a/n01498041/0.000116_digital "
                  "clock _ digital clock_0.865.jpg"),
    VariantLayout("imagenet_r", "ImageNet-R", ("imagenet-rendition/imagenet-r", "imagenet-r"),
                  "wnid", "imagenet_r_wnids.txt", "imagenet-r/n01443537/art_0.jpg"),
    VariantLayout("imagenet_v2", "ImageNet-V2",
                  ("imagenetv2/imagenetv2-matched-frequency-format-val",
                   "imagenetv2-matched-frequency-format-val"), "index", None,
                  "imagenetv2-matched-frequency-format-val/0/7e1bd0a9...jpeg"),
    VariantLayout("imagenet_sketch", "ImageNet-Sketch",
                  ("imagenet-sketch/images", "imagenet-sketch/sketch", "sketch"), "wnid", None,
                  "sketch/n01440764/sketch_0.JPEG"),
)}


def _read_list(name: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in (PRESET_DIR / name).read_text(encoding="utf-8")
                 .splitlines() if line.strip())


def imagenet_wnids() -> tuple[str, ...]:
    """ImageNet's 1,000 WordNet ids in label order (``assets/presets/imagenet_wnids.txt``)."""
    return _read_list("imagenet_wnids.txt")


def variant_wnids(key: str) -> tuple[str, ...]:
    """The wnids a variant covers, in ImageNet label order (all 1,000 for V2 and Sketch)."""
    lay = _layout(key)
    return _read_list(lay.subset_file) if lay.subset_file else imagenet_wnids()


def _layout(key: str) -> VariantLayout:
    if key not in VARIANTS:
        raise DatasetError(f"unknown ImageNet variant {key!r}; expected one of "
                           f"{', '.join(VARIANTS)}.")
    return VARIANTS[key]


def _folder(lay: VariantLayout, root: Path) -> Path:
    for sub in lay.folders:
        if (root / sub).is_dir():
            return root / sub
    raise DatasetError(f"{lay.key}: no folder found under {root}. Expected:\n"
                       f"{lay.expected(root)}")


def _classes(lay: VariantLayout, folder: Path, root: Path) -> dict[str, Path]:
    """``{wnid: class folder}`` of the dataset folder, checked against the variant's layout."""
    dirs = class_dirs(folder)
    allowed = set(variant_wnids(lay.key))
    all_wnids = imagenet_wnids()
    if lay.naming == "index":
        bad = [d.name for d in dirs if not (d.name.isdigit() and 0 <= int(d.name) < 1000)]
        found = {all_wnids[int(d.name)]: d for d in dirs if d.name not in bad}
    else:
        bad = [d.name for d in dirs if d.name not in allowed]
        found = {d.name: d for d in dirs if d.name in allowed}
    if bad or len(found) < 2:
        hint = ""
        if bad and lay.naming == "wnid" and all(b.isdigit() for b in bad):
            hint = " (label-index folders are ImageNet-V2's layout)"
        elif bad and lay.naming == "index" and all(b in set(all_wnids) for b in bad):
            hint = " (WordNet-id folders: ImageNet-V2 uses label-index folders 0..999)"
        elif bad and lay.subset_file and any(b in set(all_wnids) for b in bad):
            hint = f" (ImageNet classes outside the {len(allowed)}-class subset of {lay.key})"
        what = (f"unexpected folders {bad[:3]}{hint}" if bad
                else f"{len(found)} class folder(s)")
        raise DatasetError(f"{lay.key}: {folder} does not look like {lay.display_name}: {what}."
                           f" Expected:\n{lay.expected(root)}")
    return found


def _imagenet_train(root: Path, notes: list[str]) -> tuple[SplitEntry, ...] | None:
    """ImageNet's train split in the CoOp layout, or None (with a note) when it is not there."""
    if not (root / "imagenet" / "images" / "train").is_dir():
        notes.append(f"no {root / 'imagenet' / 'images' / 'train'}: the methods fitted on a pool "
                     "(GPUA) fit on the variant's unlabeled test images instead (transductive).")
        return None
    try:
        return open_coop("imagenet", root, None).splits["train"]
    except DatasetError as exc:  # e.g. no val/ folder beside train/: say so, score transductively
        notes.append(f"ImageNet's train split could not be read ({str(exc).splitlines()[0]}); "
                     "the methods fitted on a pool fit on the variant's test images instead.")
        return None


def open_imagenet_variant(key: str, root) -> BenchmarkData:
    """A variant as ``BenchmarkData``: its images as the test split, ImageNet's train images of
    its classes (when present) as the train split; labels index the variant's own class list.

    Raises ``DatasetError`` naming the expected layout when the folder does not match.
    """
    lay = _layout(key)
    if root is None:
        raise DatasetError(f"{key}: pass --root, the folder that holds the dataset. Expected:\n"
                           f"{lay.expected()}")
    root = Path(root)
    folder = _folder(lay, root)
    found = _classes(lay, folder, root)
    preset, all_wnids = PRESETS["imagenet"], imagenet_wnids()
    subset = variant_wnids(key)
    wnids = tuple(w for w in subset if w in found)  # label order
    notes: list[str] = []
    if len(wnids) < len(subset):
        notes.append(f"{lay.display_name}: {len(wnids)} of its {len(subset):,} class folders "
                     "found; scored among those classes only (not the paper's protocol).")
    label = {w: i for i, w in enumerate(wnids)}
    test = tuple(SplitEntry(p, rel_name(p, folder), label[w])
                 for w in wnids for p in image_files(found[w]))
    if not test:
        raise DatasetError(f"{key}: no images in the class folders of {folder}. Expected:\n"
                           f"{lay.expected(root)}")
    train = _imagenet_train(root, notes)
    if train is not None:  # ImageNet's train folders are wnids: keep the variant's classes
        train = tuple(SplitEntry(e.path, e.name, label[e.path.parent.name]) for e in train
                      if e.path.parent.name in label)
    index = {w: i for i, w in enumerate(all_wnids)}
    return BenchmarkData(key=key, display_name=lay.display_name, folder=folder,
                         class_names=tuple(preset.class_names[index[w]] for w in wnids),
                         template=preset.template,
                         splits={"test": test, "train": train or (), "val": ()},
                         layout="imagenet-variant", is_preset=True, notes=tuple(notes))
