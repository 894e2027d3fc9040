"""Segmentation benchmarks (GPUA Tables 2 and 8): readers, windows, streaming mIoU, seg-eval.

Every dataset is a stand-in generated under tmp_path (``tests/seg_standins.py``); the models are
the tiny random ones (``core.models.tiny``).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.data.coop import DatasetError
from core.data.segmentation_sets import (
    IGNORE_INDEX,
    SEGMENTATION_LAYOUTS,
    open_segmentation_set,
    segmentation_class_names,
)
from core.eval.seg_command import SEGMENTATION_TABLES
from core.methods.gpua.segment import select_patch_pool
from core.metrics import confusion_matrix, iou_from_confusion, mean_iou
from core.models import load_encoder
from core.models.tiny import tiny_test_models
from core.pipeline.seg_eval import PatchPool, evaluate_segmentation
from core.pipeline.seg_windows import (
    SlideSettings,
    average_windows,
    image_windows,
    resized_size,
    window_boxes,
)
from tests.seg_standins import SIZE, make_standin

KEYS = tuple(SEGMENTATION_LAYOUTS)
N_CLASSES = {"ade20k": 150, "voc20": 20, "context59": 59, "cocostuff164k": 171, "cityscapes": 19}


@pytest.fixture(scope="module")
def models():
    return tiny_test_models()


def _stored(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im, dtype=np.int64)


def _expected_train_ids(key: str, stored: np.ndarray, *, raw: bool = False) -> np.ndarray:
    """Each release's convention written out value by value (independent of the lookup table)."""
    out = np.full(stored.shape, IGNORE_INDEX)
    for v in np.unique(stored):
        if raw and key == "cityscapes":
            city = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
            t = city.index(v) if v in city else IGNORE_INDEX
        elif raw:  # COCO-Stuff stuffthingmaps: pixel = id - 1; 11 thing ids unused
            unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
            ids = [i for i in range(1, 183) if i not in unused]
            t = ids.index(v + 1) if v + 1 in ids else IGNORE_INDEX
        elif key in ("ade20k", "voc20", "context59"):  # 0 ignored, class c stored as c + 1
            t = v - 1 if 1 <= v <= N_CLASSES[key] else IGNORE_INDEX
        else:
            t = v if v < N_CLASSES[key] else IGNORE_INDEX
        out[stored == v] = t
    return out


@pytest.mark.parametrize("key", KEYS)
def test_reader_reads_its_layout(key, tmp_path):
    make_standin(key, tmp_path, palette=key == "voc20")
    ds = open_segmentation_set(key, tmp_path)
    assert len(ds) == 3 and ds.n_classes == N_CLASSES[key] == len(set(ds.class_names))
    assert ds.label_source == "train ids"
    for sample in ds:
        label = ds.read_label(sample)
        assert tuple(label.shape) == (SIZE[1], SIZE[0]) and label.dtype == torch.long
        expected = _expected_train_ids(key, _stored(sample.label))
        assert np.array_equal(label.numpy(), expected)
        assert ds.read_image(sample).size == SIZE
    assert len(open_segmentation_set(key, tmp_path, split="train")) == 2
    assert len(open_segmentation_set(key, tmp_path, limit=1)) == 1
    # The dataset's own folder works as --root too.
    assert len(open_segmentation_set(key, ds.folder)) == 3


@pytest.mark.parametrize("key", ["cocostuff164k", "cityscapes"])
def test_raw_release_labels_are_mapped(key, tmp_path):
    make_standin(key, tmp_path, raw=True, seed=1)
    ds = open_segmentation_set(key, tmp_path)
    assert ds.label_source == "raw ids, mapped"
    for sample in ds:
        expected = _expected_train_ids(key, _stored(sample.label), raw=True)
        assert np.array_equal(ds.read_label(sample).numpy(), expected)
        assert set(np.unique(expected)) - {IGNORE_INDEX} <= set(range(N_CLASSES[key]))


@pytest.mark.parametrize("key", KEYS)
def test_reader_rejects_another_layout_naming_the_expected_one(key, tmp_path):
    other = KEYS[(KEYS.index(key) + 1) % len(KEYS)]
    make_standin(other, tmp_path)
    with pytest.raises(DatasetError) as err:
        open_segmentation_set(key, tmp_path)
    message = str(err.value)
    lay = SEGMENTATION_LAYOUTS[key]
    assert lay.folders[0] in message and lay.label_suffix in message
    assert lay.labels.format(split=lay.splits["val"]) in message
    with pytest.raises(DatasetError, match="is not a folder"):
        open_segmentation_set(key, tmp_path / "missing")


def test_reader_names_a_missing_label(tmp_path):
    folder = make_standin("ade20k", tmp_path)
    next((folder / "annotations" / "validation").glob("*.png")).unlink()
    with pytest.raises(DatasetError, match="label .* is missing"):
        open_segmentation_set("ade20k", tmp_path)


def test_class_lists_are_the_benchmarks():
    assert segmentation_class_names("voc20")[0] == "aeroplane"
    assert segmentation_class_names("cityscapes")[-1] == "bicycle"
    assert segmentation_class_names("cocostuff164k")[80] == "banner"
    with pytest.raises(DatasetError, match="choose from"):
        segmentation_class_names("kitti")


def _naive_miou(preds, labels, k):
    """Per-class loop over all pixels of all images (ignore 255)."""
    p = torch.cat([x.reshape(-1) for x in preds])
    t = torch.cat([x.reshape(-1) for x in labels])
    keep = t != IGNORE_INDEX
    p, t = p[keep], t[keep]
    ious = []
    for c in range(k):
        inter = int(((p == c) & (t == c)).sum())
        union = int(((p == c) | (t == c)).sum())
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


def test_streaming_miou_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    k = 7
    preds, labels = [], []
    conf = torch.zeros((k, k), dtype=torch.long)
    for h, w in ((5, 9), (11, 4), (6, 6)):  # images of different sizes, summed one at a time
        p = torch.randint(0, k - 1, (h, w), generator=g)  # class 6 never predicted
        t = torch.randint(0, k, (h, w), generator=g)
        t[torch.rand(h, w, generator=g) < 0.2] = IGNORE_INDEX
        keep = t != IGNORE_INDEX
        conf += confusion_matrix(p[keep], t[keep], k)
        preds.append(p)
        labels.append(t)
    miou, per = iou_from_confusion(conf)
    assert miou == pytest.approx(_naive_miou(preds, labels, k), abs=1e-12)
    flat = mean_iou(torch.cat([x.reshape(-1) for x in preds]),
                    torch.cat([x.reshape(-1) for x in labels]), k, ignore_index=IGNORE_INDEX)
    assert miou == pytest.approx(flat[0], abs=1e-12)
    assert per.shape == (k,)


def test_resize_and_windows_follow_mmsegmentation():
    assert resized_size((500, 375), 448, 2048) == (597, 448)
    assert resized_size((2048, 1024), 560, 2048) == (1120, 560)
    assert resized_size((4000, 100), 448, 2048) == (2048, 51)  # the long side caps the scale
    boxes = window_boxes((597, 448), 224, 112)
    # Naive MMSegmentation loop.
    ref = []
    for hi in range(max(448 - 224 + 111, 0) // 112 + 1):
        for wi in range(max(597 - 224 + 111, 0) // 112 + 1):
            y1, x1 = hi * 112, wi * 112
            y2, x2 = min(y1 + 224, 448), min(x1 + 224, 597)
            ref.append((max(x2 - 224, 0), max(y2 - 224, 0), x2, y2))
    assert boxes.tolist() == [list(map(float, b)) for b in ref] and len(ref) == 3 * 5
    small = window_boxes((100, 80), 224, 112)  # smaller than a window: one, clipped
    assert small.tolist() == [[0.0, 0.0, 100.0, 80.0]]
    resized, rb, ob = image_windows((50, 40), SlideSettings(short_side=80, crop=32, stride=16))
    assert resized == (100, 80) and torch.allclose(ob * 2, rb)
    whole = image_windows((50, 40), SlideSettings(short_side=80, mode="whole"))[1]
    assert whole.tolist() == [[0.0, 0.0, 100.0, 80.0]]


def test_average_windows_averages_overlaps():
    boxes = torch.tensor([[0, 0, 4, 4], [2, 0, 6, 4]], dtype=torch.float64)
    logits = torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])  # (M, K, h, w)
    avg = average_windows(logits, boxes, (6, 4))
    assert avg.shape == (2, 4, 6)
    assert torch.allclose(avg[:, :, :2], torch.tensor(1.0))
    assert torch.allclose(avg[:, :, 2:4], torch.tensor(2.0))  # overlap: mean of both
    assert torch.allclose(avg[:, :, 4:], torch.tensor(3.0))


def test_patch_pool_stream_equals_one_selection():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(5, 8, generator=g)
    xs = [torch.randn(n, 8, generator=g) for n in (7, 30, 3, 25, 40)]
    zs = [torch.randn(len(x), 4, generator=g) for x in xs]
    for per_class in (2, 6, 50):
        pool = PatchPool(text, per_class=per_class)
        for x, z in zip(xs, zs):
            pool.add(x, z)
        px, pz = pool.select()
        all_x, all_z = torch.cat(xs), torch.cat(zs)
        idx = select_patch_pool(all_x, text, per_class=per_class)
        got = {tuple(r) for r in torch.cat([px, pz], 1).tolist()}
        assert got == {tuple(r) for r in torch.cat([all_x[idx], all_z[idx]], 1).tolist()}


def test_maskclip_whole_image_equals_a_naive_evaluation(models, tmp_path):
    make_standin("voc20", tmp_path, palette=True)
    ds = open_segmentation_set("voc20", tmp_path)
    slide = SlideSettings(short_side=SIZE[1], mode="whole")
    run = evaluate_segmentation(ds, vlm=models["clip_vit"], vfm=None, methods=("maskclip",),
                                slide=slide, templates=("a photo of a {}.",))
    # Naive: whole image squashed into the model, cosines, bilinear to the label map, argmax.
    enc = load_encoder(models["clip_vit"])
    text = enc.encode_sentences([f"a photo of a {c}." for c in ds.class_names])
    preds, labels = [], []
    for s in ds:
        image = ds.read_image(s)
        x = enc.encode_crop_patches([image], torch.tensor([[[0, 0, *image.size]]]))[0]
        cos = torch.einsum("mhwd,kd->mkhw", x, text)
        up = torch.nn.functional.interpolate(cos, size=(image.height, image.width),
                                             mode="bilinear", align_corners=False)
        preds.append(up[0].argmax(0))
        labels.append(ds.read_label(s))
    assert run.scores["maskclip"].miou == pytest.approx(_naive_miou(preds, labels, 20), abs=1e-9)
    assert run.n_images == 3


def _cli(tmp_path, models, *args):
    return main(["seg-eval", "--vlm", models["clip_vit"], "--vfm", models["dinov3"],
                 "--short-side", "48", "--crop", "32", "--stride", "16",
                 "--template", "a photo of a {}.", "--ths-steps", "5", "--fit-images", "2",
                 "--per-class", "8", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out"), *args])


def test_seg_eval_command_end_to_end(models, tmp_path, capsys):
    make_standin("voc20", tmp_path, palette=True)
    rc = _cli(tmp_path, models, "--dataset", "voc20", "--root", str(tmp_path), "--limit", "2")
    assert rc == 0
    out = capsys.readouterr().out
    stem = f"seg_voc20_{models['clip_vit']}_{models['dinov3']}"
    md = (tmp_path / "out" / f"{stem}.md").read_text()
    assert "| MaskCLIP |" in md and "54.2" in md and "GPUA Table 2" in md  # paper beside ours
    assert "| MaskCLIP + GPUA (DINOv3) |" in md and "65.7" in md
    assert "SCLIP: 81.5" in md and "not available" in md
    assert "first 2 of 3 images" in md and "short_side: 48" in md and md in out
    rows = list(csv.DictReader((tmp_path / "out" / f"{stem}.csv").open()))
    assert [r["method"] for r in rows] == ["maskclip", "maskclip+gpua"]
    assert rows[0]["paper_miou"] == "54.2" and 0.0 <= float(rows[0]["ours_miou"]) <= 100.0
    assert rows[1]["setting_fit_split"] == "train" and rows[1]["setting_fit_images"] == "2"
    data = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    assert set(data["per_class_iou"]["maskclip"]) == set(segmentation_class_names("voc20"))
    assert data["settings"]["pool_size"] > 0
    # A rerun reads every window feature from the cache (no new entry) and gives the same numbers.
    cached = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached
    assert _cli(tmp_path, models, "--dataset", "voc20", "--root", str(tmp_path), "--limit",
                "2") == 0
    again = list(csv.DictReader((tmp_path / "out" / f"{stem}.csv").open()))
    assert [r["ours_miou"] for r in again] == [r["ours_miou"] for r in rows]
    assert sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file()) == cached


def test_seg_eval_command_reports_a_wrong_layout(models, tmp_path, capsys):
    make_standin("ade20k", tmp_path)
    rc = _cli(tmp_path, models, "--dataset", "cityscapes", "--root", str(tmp_path),
              "--methods", "maskclip")
    assert rc == 2
    assert "leftImg8bit/val" in capsys.readouterr().err
    assert _cli(tmp_path, models, "--dataset", "ade20k", "--root", str(tmp_path),
                "--methods", "sclip") == 2
    assert "not available" in capsys.readouterr().err


def test_segmentation_tables_describe_both_tables():
    ids = [t["id"] for t in SEGMENTATION_TABLES]
    assert ids == ["gpua-t2", "gpua-t8"]
    t8 = SEGMENTATION_TABLES[1]
    assert set(t8["datasets"]) == set(KEYS) and set(t8["needs"]) == set(KEYS)
    assert "seg-eval" in t8["command"] and "SC-CLIP" in t8["not_available"]
    assert "ADEChallengeData2016" in SEGMENTATION_TABLES[0]["needs"]["ade20k"]


def test_gpua_falls_back_to_the_evaluated_images_without_a_train_split(models, tmp_path):
    make_standin("voc20", tmp_path, n_train=0, palette=True)
    assert _cli(tmp_path, models, "--dataset", "voc20", "--root", str(tmp_path)) == 0
    stem = f"seg_voc20_{models['clip_vit']}_{models['dinov3']}"
    data = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    assert data["settings"]["fit_split"] == "val"
    assert any("transductive" in n for n in data["notes"])


def test_window_patches_of_the_whole_input_equal_encode_patches(models):
    enc = load_encoder(models["clip_vit"])
    side = enc.spec.image_size
    g = np.random.default_rng(3)
    images = [Image.fromarray(g.integers(0, 256, (side, side, 3), dtype=np.uint8))
              for _ in range(2)]
    boxes = torch.tensor([[[0, 0, side, side], [0, 0, side // 2, side]]] * 2, dtype=torch.float32)
    windows = enc.encode_crop_patches(images, boxes)
    assert windows.shape == (2, 2, *enc.spec.grid_size, enc.spec.output_dim)
    torch.testing.assert_close(windows[:, 0], enc.encode_patches(images))
    with pytest.raises(ValueError, match=r"expected shape \(2, M, 4\)"):
        enc.encode_crop_patches(images, boxes[0])
