"""Tiny generated stand-ins of the five segmentation benchmarks' release layouts (for tests).

``make_standin(key, root)`` writes a few random images and label maps where the official release
(or MMSegmentation's preparation) puts them and returns the dataset folder; nothing is committed.
Stored label values are drawn from what each release can hold (class ids, 0 "other", 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (40, 30)  # (w, h) of every stand-in image

# key -> (folder under root, image dir, label dir, image suffix, label suffix, id list, values)
_LAYOUT = {
    "ade20k": ("ADEChallengeData2016", "images/{s}", "annotations/{s}", ".jpg", ".png", None,
               list(range(0, 151))),
    "voc20": ("VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
              "ImageSets/Segmentation/{s}.txt", [*range(0, 21), 255]),
    "context59": ("VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                  "ImageSets/SegmentationContext/{s}.txt", list(range(0, 60))),
    "cocostuff164k": ("coco_stuff164k", "images/{s}", "annotations/{s}", ".jpg",
                      "_labelTrainIds.png", None, [*range(0, 171), 255]),
    "cityscapes": ("cityscapes", "leftImg8bit/{s}", "gtFine/{s}", "_leftImg8bit.png",
                   "_gtFine_labelTrainIds.png", None, [*range(0, 19), 255]),
}
_SPLITS = {"ade20k": {"val": "validation", "train": "training"},
           "cocostuff164k": {"val": "val2017", "train": "train2017"}}
_RAW = {"cocostuff164k": (".png", [*range(0, 182), 255]),
        "cityscapes": ("_gtFine_labelIds.png", list(range(0, 34)))}


def _ids(key: str, split: str, n: int) -> list[str]:
    if key == "cityscapes":
        return [f"frankfurt/frankfurt_{split}_{i:06d}" for i in range(n)]
    return [f"{split}_{i:04d}" for i in range(n)]


def make_standin(key: str, root: Path, *, n_val: int = 3, n_train: int = 2, seed: int = 0,
                 raw: bool = False, palette: bool = False) -> Path:
    """Write a stand-in of benchmark ``key`` under ``root``; returns the dataset folder.

    raw : write the release's raw label files (COCO-Stuff stuffthingmaps, Cityscapes labelIds)
        instead of train ids. palette : save labels as palette PNGs (as VOC's are).
    """
    folder_name, images, labels, img_sfx, lab_sfx, id_list, values = _LAYOUT[key]
    if raw:
        lab_sfx, values = _RAW[key]
    folder = root / folder_name
    rng = np.random.default_rng(seed)
    w, h = SIZE
    for split, n in (("val", n_val), ("train", n_train)):
        rel = _SPLITS.get(key, {}).get(split, split)
        ids = _ids(key, split, n)
        for sid in ids:
            img = folder / images.format(s=rel) / f"{sid}{img_sfx}"
            lab = folder / labels.format(s=rel) / f"{sid}{lab_sfx}"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(img)
            stored = rng.choice(np.array(values, dtype=np.uint8), size=(h, w))
            label = Image.fromarray(stored, mode="P" if palette else "L")
            if palette:  # indices are the class ids; the colours do not matter
                label.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
            label.save(lab)
        if id_list is not None:
            listing = folder / id_list.format(s=rel)
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("\n".join(ids) + "\n")
    return folder
