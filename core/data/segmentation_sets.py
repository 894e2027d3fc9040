"""Semantic segmentation benchmarks in their official release layouts, as (image, label map) pairs.

Five benchmarks of GPUA Tables 2 and 8, read where their releases (or MMSegmentation's data
preparation, which SCLIP / SC-CLIP evaluate with) put them. ``--root`` may be the dataset's own
folder or a folder above it that holds it under its usual name:

- ``ade20k``: ``ADEChallengeData2016/images/validation/*.jpg`` + ``annotations/validation/*.png``
  (0 = "other", ignored; class c is stored as c + 1).
- ``voc20``: ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg`` + ``SegmentationClass/<id>.png`` for the ids
  of ``ImageSets/Segmentation/val.txt``; background (0) and object boundaries (255) are ignored:
  VOC20 is VOC without a background class.
- ``context59``: ``VOCdevkit/VOC2010/JPEGImages`` + ``SegmentationClassContext/<id>.png`` (made
  by MMSegmentation's ``pascal_context.py`` from the Detail API) for
  ``ImageSets/SegmentationContext/val.txt``; 0 (the 400+ rare classes) ignored.
- ``cocostuff164k``: ``images/val2017/*.jpg`` + ``annotations/val2017/*_labelTrainIds.png``
  (MMSegmentation's ``coco_stuff164k.py``: 0..170, 255 ignored), or the release's own
  ``stuffthingmaps`` PNGs in ``annotations/val2017/*.png`` (pixel = COCO-Stuff id - 1, mapped here).
- ``cityscapes``: ``leftImg8bit/val/<city>/*_leftImg8bit.png`` + ``gtFine/val/<city>/
  *_gtFine_labelTrainIds.png`` (cityscapesScripts' ``createTrainIdLabelImgs``), or the raw
  ``*_gtFine_labelIds.png`` (mapped here to the 19 train ids).

Labels come back as train ids 0..K-1 with ``IGNORE_INDEX`` (255) for pixels no class owns; the
mapping of each layout is one 256-entry lookup table. Class names (in train-id order) are data:
``assets/segmentation/classnames.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from core.data.coop import DatasetError

__all__ = ["IGNORE_INDEX", "SEGMENTATION_LAYOUTS", "SegLayout", "SegSample", "SegmentationSet",
           "open_segmentation_set", "segmentation_class_names"]

IGNORE_INDEX = 255  # label of a pixel that is not scored (MMSegmentation's convention)
CLASSNAMES_FILE = (Path(__file__).resolve().parents[2] / "assets" / "segmentation"
                   / "classnames.json")


@dataclass(frozen=True)
class SegLayout:
    """Where a benchmark's files live, relative to its folder; ``{split}`` is filled per split.

    folders : names the dataset folder has under a parent ``--root`` (tried in order).
    images, labels : image and label folders; ``image_suffix`` / ``label_suffix`` turn a sample
        id into file names. ``id_list``: a text file of sample ids (VOC, Context); None: every
        image under ``images`` (recursively: Cityscapes' city folders).
    splits : our split name -> the release's ("val" -> "validation" for ADE20K).
    raw_label_suffix : an alternative label file of the release itself, read through
        ``raw_ids`` (label value of each train id) when the preferred files are absent.
    reduce_zero_label : stored labels are train id + 1 with 0 ignored (MMSegmentation's flag).
    """

    key: str
    title: str
    folders: tuple[str, ...]
    images: str
    labels: str
    image_suffix: str
    label_suffix: str
    splits: dict
    id_list: str | None = None
    reduce_zero_label: bool = False
    raw_label_suffix: str | None = None
    raw_ids: str | None = None  # key of classnames.json holding the raw value of each train id

    def expected(self) -> str:
        """The expected layout, for error messages."""
        split = self.splits["val"]
        ids = f"\n  {self.id_list.format(split=split)} (sample ids)" if self.id_list else ""
        raw = (f"\n  or {self.labels.format(split=split)}/...*{self.raw_label_suffix} (raw ids)"
               if self.raw_label_suffix else "")
        return (f"{self.title}, folder {' or '.join(self.folders)}/ holding:\n"
                f"  {self.images.format(split=split)}/...*{self.image_suffix}\n"
                f"  {self.labels.format(split=split)}/...*{self.label_suffix}{ids}{raw}")


SEGMENTATION_LAYOUTS: dict[str, SegLayout] = {
    "ade20k": SegLayout("ade20k", "ADE20K (SceneParsing 150)", ("ADEChallengeData2016",),
                        "images/{split}", "annotations/{split}", ".jpg", ".png",
                        {"val": "validation", "train": "training"}, reduce_zero_label=True),
    "voc20": SegLayout("voc20", "Pascal VOC 2012 without background (VOC20)",
                       ("VOCdevkit/VOC2012", "VOC2012"), "JPEGImages", "SegmentationClass",
                       ".jpg", ".png", {"val": "val", "train": "train"},
                       id_list="ImageSets/Segmentation/{split}.txt", reduce_zero_label=True),
    "context59": SegLayout("context59", "Pascal Context 59 (MMSegmentation layout)",
                           ("VOCdevkit/VOC2010", "VOC2010"), "JPEGImages",
                           "SegmentationClassContext", ".jpg", ".png",
                           {"val": "val", "train": "train"},
                           id_list="ImageSets/SegmentationContext/{split}.txt",
                           reduce_zero_label=True),
    "cocostuff164k": SegLayout("cocostuff164k", "COCO-Stuff 164k (171 classes)",
                               ("coco_stuff164k", "cocostuff"), "images/{split}",
                               "annotations/{split}", ".jpg", "_labelTrainIds.png",
                               {"val": "val2017", "train": "train2017"},
                               raw_label_suffix=".png", raw_ids="cocostuff164k_ids"),
    "cityscapes": SegLayout("cityscapes", "Cityscapes (19 classes)", ("cityscapes",),
                            "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                            "_gtFine_labelTrainIds.png", {"val": "val", "train": "train"},
                            raw_label_suffix="_gtFine_labelIds.png", raw_ids="cityscapes_ids"),
}


def _classnames_json() -> dict:
    return json.loads(CLASSNAMES_FILE.read_text())


def segmentation_class_names(key: str) -> tuple[str, ...]:
    """Class names of benchmark ``key`` in train-id order."""
    _layout(key)
    return tuple(_classnames_json()[key])


def _layout(key: str) -> SegLayout:
    if key not in SEGMENTATION_LAYOUTS:
        raise DatasetError(f"unknown segmentation dataset {key!r}; choose from "
                           f"{', '.join(SEGMENTATION_LAYOUTS)}.")
    return SEGMENTATION_LAYOUTS[key]


@dataclass(frozen=True)
class SegSample:
    """One image and its label map (paths); ``name`` is the sample id."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class SegmentationSet:
    """A split of a benchmark: samples in a fixed (sorted) order and how to read their labels.

    Attributes
    ----------
    key, split : str
    folder : Path, the dataset folder found
    class_names : tuple of str, length K
    samples : tuple of SegSample
    lut : Tensor, shape (256,), long
        Stored label value -> train id in [0, K) or ``IGNORE_INDEX``.
    label_source : str, which label files were read ("train ids" or "raw ids, mapped")
    """

    key: str
    split: str
    folder: Path
    class_names: tuple[str, ...]
    samples: tuple[SegSample, ...]
    lut: Tensor
    label_source: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def read_label(self, sample: SegSample) -> Tensor:
        """Train ids of one sample: Tensor (H, W), long, ``IGNORE_INDEX`` where not scored."""
        with Image.open(sample.label) as im:
            if im.mode not in ("L", "P"):
                raise DatasetError(f"{sample.label}: expected a single-channel (L or P) PNG of "
                                   f"class ids, got mode {im.mode}.")
            stored = torch.from_numpy(np.array(im, dtype=np.uint8)).long()
        return self.lut[stored]

    def read_image(self, sample: SegSample) -> Image.Image:
        with Image.open(sample.image) as im:
            return im.convert("RGB")

    def __iter__(self) -> Iterator[SegSample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


def _lookup(lay: SegLayout, n_classes: int, raw: bool) -> Tensor:
    """The 256-entry map from stored label values to train ids (``IGNORE_INDEX`` elsewhere)."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    if raw:  # the release's own ids: cocostuff pixel = id - 1, cityscapes pixel = labelId
        ids = torch.tensor(_classnames_json()[lay.raw_ids], dtype=torch.long)
        lut[ids - 1 if lay.key == "cocostuff164k" else ids] = torch.arange(n_classes)
    elif lay.reduce_zero_label:
        lut[1:n_classes + 1] = torch.arange(n_classes)
    else:
        lut[:n_classes] = torch.arange(n_classes)
    return lut


def _find_folder(lay: SegLayout, root: Path) -> Path:
    """The dataset folder: ``root`` itself when it has the image folder, else root/<folder>."""
    for candidate in (root, *(root / f for f in lay.folders)):
        if (candidate / lay.images.format(split=lay.splits["val"])).is_dir():
            return candidate
    raise DatasetError(f"{lay.key}: {root} does not hold the expected layout. Expected "
                       f"{lay.expected()}")


def _sample_ids(lay: SegLayout, folder: Path, split: str, image_dir: Path) -> list[str]:
    if lay.id_list is not None:
        listing = folder / lay.id_list.format(split=split)
        if not listing.is_file():
            raise DatasetError(f"{lay.key}: no id list {listing}. Expected {lay.expected()}")
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    found = sorted(str(p.relative_to(image_dir))[: -len(lay.image_suffix)]
                   for p in image_dir.rglob(f"*{lay.image_suffix}"))
    if not found:
        raise DatasetError(f"{lay.key}: no *{lay.image_suffix} image under {image_dir}. Expected "
                           f"{lay.expected()}")
    return found


def _label_suffix(lay: SegLayout, label_dir: Path) -> tuple[str, bool]:
    """(suffix, raw) of the label files present: the preferred train ids, else the raw ids."""
    if lay.raw_label_suffix is None or any(label_dir.rglob(f"*{lay.label_suffix}")):
        return lay.label_suffix, False
    return lay.raw_label_suffix, True


def open_segmentation_set(key: str, root: str | os.PathLike, *, split: str = "val",
                          limit: int | None = None) -> SegmentationSet:
    """Read a benchmark's split from ``root`` (its folder, or a folder that holds it).

    Parameters
    ----------
    key : one of ``SEGMENTATION_LAYOUTS``
    root : folder
    split : "val" (the evaluated split) or "train" (e.g. a GPUA fitting pool)
    limit : int, optional
        Keep the first ``limit`` samples (sorted order), for quick runs.

    Raises
    ------
    DatasetError
        When the folder does not match; the message shows the expected layout.
    """
    lay = _layout(key)
    if split not in lay.splits:
        raise DatasetError(f"{key}: split {split!r} unknown; choose from {', '.join(lay.splits)}.")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{key}: --root {root} is not a folder. Expected {lay.expected()}")
    folder = _find_folder(lay, root)
    rel = lay.splits[split]
    image_dir, label_dir = (folder / lay.images.format(split=rel),
                            folder / lay.labels.format(split=rel))
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetError(f"{key}: no folder {d}. Expected {lay.expected()}")
    suffix, raw = _label_suffix(lay, label_dir)
    ids = _sample_ids(lay, folder, rel, image_dir)
    if limit is not None:
        ids = ids[: max(0, int(limit))]
    samples = []
    for sid in ids:
        image = image_dir / f"{sid}{lay.image_suffix}"
        label = label_dir / f"{sid}{suffix}"
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise DatasetError(f"{key}: {what} {path} of sample {sid!r} is missing. "
                                   f"Expected {lay.expected()}")
        samples.append(SegSample(name=sid, image=image, label=label))
    if not samples:
        raise DatasetError(f"{key}: no sample in the {split} split of {folder}.")
    names = segmentation_class_names(key)
    return SegmentationSet(key=key, split=split, folder=folder, class_names=names,
                           samples=tuple(samples), lut=_lookup(lay, len(names), raw),
                           label_source="raw ids, mapped" if raw else "train ids")
