"""ImageNet-A / -R / -V2 / -Sketch readers (core.data.imagenet_variants) on stand-ins of their
release layouts generated under tmp_path (a few tiny PNGs per class; never committed data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_evaluate import _png

from core.data import get_preset
from core.data.benchmarks import DatasetError, open_benchmark
from core.data.imagenet_variants import VARIANTS, imagenet_wnids, variant_wnids

WNIDS = imagenet_wnids()
# Three classes in both 200-class subsets (A and R), so every variant can hold them.
SHARED = tuple(w for w in variant_wnids("imagenet_a") if w in set(variant_wnids("imagenet_r")))[:3]


def make_imagenet(root: Path, wnids=SHARED, *, n_train=2, n_val=1) -> Path:
    """ImageNet in the CoOp layout: images/{train,val}/<wnid>/ + classnames.txt (all 1,000)."""
    rng, names = np.random.default_rng(0), get_preset("imagenet").raw_class_names
    folder = root / "imagenet"
    for w in wnids:
        base = rng.integers(0, 255, 3)
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                _png(folder / "images" / split / w / f"{w}_{i}.JPEG", rng, base)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, names)), encoding="utf-8")
    return folder


def make_variant(root: Path, key: str, wnids=SHARED, *, n=2, canonical=True) -> Path:
    """A variant's release layout (CoOp's path when ``canonical``, else the bare release
    folder): wnid folders, or label-index folders for V2."""
    lay = VARIANTS[key]
    folder = root / (lay.folders[0] if canonical else lay.folders[-1])
    rng = np.random.default_rng(1)
    for w in wnids:
        name = str(WNIDS.index(w)) if lay.naming == "index" else w
        base = rng.integers(0, 255, 3)
        for i in range(n):
            _png(folder / name / f"{i}.jpg", rng, base)
    return folder


@pytest.mark.parametrize("key", list(VARIANTS))
@pytest.mark.parametrize("canonical", [True, False])
def test_each_variant_reads_its_release_layout(tmp_path, key, canonical):
    make_imagenet(tmp_path)
    make_variant(tmp_path, key, canonical=canonical)
    data = open_benchmark(key, tmp_path)
    names = get_preset("imagenet").class_names
    assert data.class_names == tuple(names[WNIDS.index(w)] for w in SHARED)
    assert len(data.splits["test"]) == 6 and {e.label for e in data.splits["test"]} == {0, 1, 2}
    # the pool: ImageNet's train images of the variant's classes, labelled in its class order
    train = data.splits["train"]
    assert len(train) == 6 and all(SHARED[e.label] == e.path.parent.name for e in train)
    assert any("3 of its" in n for n in data.notes)  # a partial stand-in says so
    assert data.template == get_preset("imagenet").template


def test_subsets_are_imagenet_classes_in_label_order():
    for key in ("imagenet_a", "imagenet_r"):
        subset = variant_wnids(key)
        assert len(subset) == 200 and list(subset) == sorted(subset)
        assert set(subset) <= set(WNIDS)
    assert variant_wnids("imagenet_a") != variant_wnids("imagenet_r")
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(WNIDS)
    assert WNIDS[0] == "n01440764"  # tench, label 0 of the class list
    assert get_preset("imagenet").class_names[0] == "tench"


def test_without_imagenet_train_the_variant_is_transductive(tmp_path):
    make_variant(tmp_path, "imagenet_r")
    data = open_benchmark("imagenet-r", tmp_path)
    assert data.splits["train"] == ()
    assert any("transductive" in n for n in data.notes)


@pytest.mark.parametrize("key, folders, message", [
    ("imagenet_a", ["0", "1"], "label-index folders are ImageNet-V2's layout"),
    ("imagenet_v2", list(SHARED), "ImageNet-V2 uses label-index folders"),
    ("imagenet_r", [w for w in WNIDS if w not in set(variant_wnids("imagenet_r"))][:2],
     "outside the 200-class subset of imagenet_r"),
    ("imagenet_sketch", [SHARED[0]], "1 class folder"),
    ("imagenet_v2", ["1000", "7"], "unexpected folders ['1000']"),
])
def test_a_wrong_layout_is_rejected_naming_the_expected_one(tmp_path, key, folders, message):
    lay = VARIANTS[key]
    for name in folders:
        _png(tmp_path / lay.folders[0] / name / "0.jpg", np.random.default_rng(0), 9)
    with pytest.raises(DatasetError) as err:
        open_benchmark(key, tmp_path)
    text = str(err.value)
    assert message in text and "Expected:" in text and lay.folders[0] in text


def test_a_missing_variant_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="imagenet-sketch/images/ or .*sketch/"):
        open_benchmark("imagenet_sketch", tmp_path)
    with pytest.raises(DatasetError, match="pass --root"):
        open_benchmark("imagenet_a", None)
