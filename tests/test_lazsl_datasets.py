"""CUB-200-2011 and Places365 readers (core.data.lazsl_datasets) on stand-ins of their release
layouts generated under tmp_path (a few tiny PNGs; never committed data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_evaluate import _png

from core.data import load_attributes
from core.data.benchmarks import DatasetError, open_benchmark

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "014.Indigo_Bunting")
PLACES = ("/a/airfield", "/a/apartment_building/outdoor", "/b/bedroom")


def make_cub(root: Path, *, n_train=2, n_test=1) -> Path:
    """CUB_200_2011/: images/<NNN.Name>/, classes.txt, images.txt, image_class_labels.txt,
    train_test_split.txt (3 classes)."""
    folder, rng = root / "CUB_200_2011", np.random.default_rng(0)
    images, labels, split = [], [], []
    for cid, raw in enumerate(CUB_CLASSES, 1):
        base = rng.integers(0, 255, 3)
        for i in range(n_train + n_test):
            rel = f"{raw}/{raw.split('.')[1]}_{i}.jpg"
            _png(folder / "images" / rel, rng, base)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {cid}")
            split.append(f"{len(split) + 1} {int(i < n_train)}")
    (folder / "classes.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def make_places(root: Path, *, n=2) -> Path:
    """places365/: val_256/, places365_val.txt, categories_places365.txt (3 categories)."""
    folder, rng = root / "places365", np.random.default_rng(1)
    lines = []
    for label, _ in enumerate(PLACES):
        base = rng.integers(0, 255, 3)
        for _ in range(n):
            name = f"Places365_val_{len(lines) + 1:08d}.jpg"
            _png(folder / "val_256" / name, rng, base)
            lines.append(f"{name} {label}")
    (folder / "places365_val.txt").write_text("\n".join(lines) + "\n")
    (folder / "categories_places365.txt").write_text(
        "".join(f"{c} {i}\n" for i, c in enumerate(PLACES)))
    return folder


def test_cub_reads_its_release_layout(tmp_path):
    make_cub(tmp_path)
    data = open_benchmark("cub", tmp_path)
    assert data.class_names == ("Black footed Albatross", "Laysan Albatross", "Indigo Bunting")
    assert len(data.splits["test"]) == 3 and len(data.splits["train"]) == 6
    assert sorted(e.label for e in data.splits["test"]) == [0, 1, 2]
    assert all(e.path.is_file() for e in data.splits["test"])
    assert data.template == "a photo of a {}, a type of bird."
    assert any("3 classes listed, not 200" in n for n in data.notes)
    # a DCLIP descriptor file keeps the hyphen the release's folder names lost
    attrs = load_attributes('{"Black-footed Albatross": ["dark wings"], "Laysan Albatross": '
                            '["white head"], "Indigo Bunting": ["blue plumage"]}',
                            class_names=list(data.class_names))
    assert attrs["Black footed Albatross"] == ["dark wings"]


def test_places365_reads_its_release_layout(tmp_path):
    make_places(tmp_path)
    data = open_benchmark("places365", tmp_path)
    assert data.class_names == ("airfield", "apartment building outdoor", "bedroom")
    assert [e.label for e in data.splits["test"]] == [0, 0, 1, 1, 2, 2]
    assert data.splits["train"] == () and data.template == "a photo of a {}."
    attrs = load_attributes('{"apartment_building/outdoor": ["balconies"]}',
                            class_names=["apartment building outdoor"])
    assert attrs == {"apartment building outdoor": ["balconies"]}


@pytest.mark.parametrize("key, breaks, message", [
    ("cub", lambda f: (f / "classes.txt").unlink(), "no classes.txt under"),
    ("cub", lambda f: (f / "train_test_split.txt").unlink(), "missing"),
    ("cub", lambda f: (f / "image_class_labels.txt").write_text("1 7\n"), "not in classes.txt"),
    ("places365", lambda f: (f / "places365_val.txt").unlink(), "missing places365_val.txt"),
    ("places365", lambda f: (f / "places365_val.txt").write_text("x.jpg 9\n"),
     "is not one of the 3 categories"),
    ("places365", lambda f: (f / "categories_places365.txt").write_text("/a/airfield\n"),
     "does not have 2 fields"),
])
def test_a_wrong_layout_is_rejected_naming_the_expected_one(tmp_path, key, breaks, message):
    folder = make_cub(tmp_path) if key == "cub" else make_places(tmp_path)
    breaks(folder)
    with pytest.raises(DatasetError) as err:
        open_benchmark(key, tmp_path)
    assert message in str(err.value) and "Expected:" in str(err.value)
    assert ("train_test_split.txt" if key == "cub" else "categories_places365.txt") in str(
        err.value)
