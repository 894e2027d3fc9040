"""Tests for demo/overlays.py and demo/crop_views.py: palette, segmentation blend, legend,
crop views, top-k."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.pipeline import NOT_SEEN
from demo.crop_views import crop_thumbnails, crop_view
from demo.overlays import (
    NOT_SEEN_DARKEN,
    NOT_SEEN_STRIPE,
    UNKNOWN_COLOR,
    class_colors,
    hex_to_rgb,
    legend_html,
    segmentation_overlay,
    side_by_side,
    topk,
)

GRAY = 128


def gray_image(w=8, h=6, value=GRAY):
    return Image.new("RGB", (w, h), (value, value, value))


def expected_blend(color_hex, alpha, base=GRAY):
    return tuple(int(np.rint((1 - alpha) * base + alpha * c)) for c in hex_to_rgb(color_hex))


# ----------------------------------------------------------------------------- palette


def test_class_colors_distinct_valid_and_prefix_stable():
    colors = class_colors(50)
    assert len(colors) == 50 and len(set(colors)) == 50
    rgb = np.array([hex_to_rgb(c) for c in colors], dtype=float)  # validates "#rrggbb"
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 20.0  # visibly different, not just different strings
    assert UNKNOWN_COLOR not in colors
    assert class_colors(50) == colors  # deterministic
    assert class_colors(1000)[:50] == colors  # a class keeps its colour when more are added
    assert len(set(class_colors(1000))) == 1000
    assert class_colors(0) == []
    with pytest.raises(ValueError, match="non-negative"):
        class_colors(-1)


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_overlay_blends_labelled_and_keeps_unlabeled():
    names = ["sky", "tree", "road"]
    colors = class_colors(3)
    labels = np.full((6, 8), -1, dtype=np.int64)
    labels[0, 0], labels[1, 1], labels[2, 2] = 0, 1, 2
    out = np.asarray(segmentation_overlay(gray_image(), labels, names, alpha=0.5))
    assert out.shape == (6, 8, 3)
    assert tuple(out[0, 0]) == expected_blend(colors[0], 0.5)
    assert tuple(out[1, 1]) == expected_blend(colors[1], 0.5)
    assert tuple(out[2, 2]) == expected_blend(colors[2], 0.5)
    assert tuple(out[5, 7]) == (GRAY, GRAY, GRAY)  # unlabeled
    assert (out[labels < 0] == GRAY).all()


def test_segmentation_overlay_hidden_classes_and_alpha_extremes():
    names = ["a", "b"]
    labels = torch.zeros(6, 8, dtype=torch.long)
    labels[:, 4:] = 1
    out = np.asarray(segmentation_overlay(gray_image(), labels, names, alpha=1.0, visible={1}))
    assert (out[:, :4] == GRAY).all()  # class 0 hidden
    assert tuple(out[0, 5]) == hex_to_rgb(class_colors(2)[1])  # alpha 1 = pure colour
    out0 = np.asarray(segmentation_overlay(gray_image(), labels, names, alpha=0.0))
    assert (out0 == GRAY).all()


def test_segmentation_overlay_resizes_label_map_nearest():
    names = ["a", "b", "c", "d"]
    labels = np.array([[0, 1], [2, -1]], dtype=np.int32)  # quadrants of an 8 x 8 image
    out = np.asarray(segmentation_overlay(gray_image(8, 8), labels, names, alpha=0.5))
    colors = class_colors(4)
    assert tuple(out[1, 1]) == expected_blend(colors[0], 0.5)
    assert tuple(out[1, 6]) == expected_blend(colors[1], 0.5)
    assert tuple(out[6, 1]) == expected_blend(colors[2], 0.5)
    assert tuple(out[6, 6]) == (GRAY, GRAY, GRAY)
    # NEAREST never mixes classes: every pixel is gray or one of the three blends
    allowed = {expected_blend(c, 0.5) for c in colors[:3]} | {(GRAY,) * 3}
    assert {tuple(p) for p in out.reshape(-1, 3)} <= allowed


def test_segmentation_overlay_validates():
    img = gray_image()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        segmentation_overlay(img, np.full((6, 8), 2), ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        segmentation_overlay(img, np.zeros((6, 8), dtype=float), ["a"])
    with pytest.raises(ValueError, match="alpha"):
        segmentation_overlay(img, np.zeros((6, 8), dtype=int), ["a"], alpha=1.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        segmentation_overlay(img, np.zeros((6, 8, 1), dtype=int), ["a"])


def test_not_seen_is_darkened_and_hatched_whatever_alpha_and_visibility():
    names = ["a", "b"]
    labels = np.zeros((40, 60), dtype=np.int64)
    labels[:, :10] = NOT_SEEN  # a band the model's crop left out
    labels[:, 50:] = NOT_SEEN
    labels[:, 30:50] = 1
    for alpha, visible in ((0.0, None), (0.5, set()), (1.0, {0, 1})):
        out = np.asarray(segmentation_overlay(gray_image(60, 40), labels, names, alpha=alpha,
                                              visible=visible)).astype(int)
        band = out[labels == NOT_SEEN]
        dark = round(GRAY * NOT_SEEN_DARKEN)
        light = [round(0.5 * dark + 0.5 * c) for c in NOT_SEEN_STRIPE]
        colours = {tuple(p) for p in band}
        assert colours == {(dark,) * 3, tuple(light)}  # two tones: stripes on a darkened image
        assert 0.2 < float((band == light).all(axis=1).mean()) < 0.5  # one stripe in three
    # the seen pixels are untouched by the hatch (alpha 0: the image itself)
    out0 = np.asarray(segmentation_overlay(gray_image(60, 40), labels, names, alpha=0.0))
    assert (out0[labels != NOT_SEEN] == GRAY).all()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        segmentation_overlay(gray_image(60, 40), np.full((40, 60), -3), names)


def test_legend_has_a_not_seen_entry_on_request():
    names = ["cat", "dog"]
    plain = legend_html([0], names)
    marked = legend_html([0], names, not_seen=True)
    assert "not seen" not in plain and "not seen" in marked
    assert marked.count("border-radius") == 2 and "repeating-linear-gradient" in marked
    empty = legend_html([], names, not_seen=True)  # every class hidden: the band still shows
    assert "no labelled pixels" in empty and "not seen" in empty
    assert "no labelled pixels" in legend_html([], names)


def test_legend_html_escapes_names_and_shows_colours():
    names = ["cat", "<script>alert(1)</script>", "dog & co"]
    out = legend_html([1, 1, -1, 2], names, class_colors(3))
    assert "<script>" not in out
    assert "&lt;script&gt;" in out and "dog &amp; co" in out
    assert "cat" not in out  # only the present classes
    assert out.count("border-radius") == 2  # one chip per class, duplicates dropped
    r, g, b = hex_to_rgb(class_colors(3)[1])
    assert f"rgb({r},{g},{b})" in out
    with pytest.raises(ValueError, match="rrggbb"):
        legend_html([0], ["a"], ["red;background:url(x)"])
    with pytest.raises(ValueError, match="out of range"):
        legend_html([5], ["a"])


def test_side_by_side_layout():
    out = side_by_side([gray_image(20, 10), gray_image(40, 20, 0)], ["left", "right"], pad=4)
    assert out.mode == "RGB"
    assert out.width == 20 + 20 + 3 * 4  # second image scaled to the common height 10
    with pytest.raises(ValueError, match="equal"):
        side_by_side([gray_image()], ["a", "b"])


# ----------------------------------------------------------------------------- crops


def test_crop_view_draws_boxes_and_keeps_size():
    img = gray_image(200, 160)
    boxes = np.array([[10, 10, 90, 90], [100, 60, 190, 150], [20, 100, 60, 140]])
    kept = np.array([True, False, True])
    out = crop_view(img, boxes, highlight=[2], labels=["has whiskers"], kept=kept)
    base, arr = np.asarray(img), np.asarray(out)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(arr[10, 50], base[10, 50])  # top edge of kept crop 0
    assert not np.array_equal(arr[60, 150], base[60, 150])  # top edge of dropped crop 1 (dash)
    assert tuple(arr[139, 40]) == hex_to_rgb(class_colors(1)[0])  # bottom edge (exclusive 140)
    assert np.array_equal(arr[141, 40], base[141, 40])  # just below the highlighted box
    assert np.array_equal(arr[50, 50], base[50, 50])  # inside a box, away from edges and text
    assert np.array_equal(arr[5, 195], base[5, 195])  # outside every box
    # dropped crops are fainter than kept ones
    assert abs(int(arr[60, 150, 0]) - GRAY) < abs(int(arr[10, 50, 0]) - GRAY)


def _solid(arr: np.ndarray, rgb, r: int = 2) -> np.ndarray:
    """Pixels of colour ``rgb`` whose (2r+1)^2 neighbourhood is all that colour: filled label
    tags, not 3 px box outlines."""
    mask = (arr == np.asarray(rgb)).all(axis=-1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[r:h - r, r:w - r] = np.all([mask[r + dy:h - r + dy, r + dx:w - r + dx]
                                    for dy in range(-r, r + 1) for dx in range(-r, r + 1)], axis=0)
    return out


def test_crop_view_labels_never_overlap():
    img = gray_image(240, 200)
    boxes = np.array([[10, 10, 200, 180], [12, 12, 198, 178], [14, 14, 196, 176]])
    labels = ["1: has whiskers and a tail", "2: has pointed ears", "3: is small"]
    arr = np.asarray(crop_view(img, boxes, highlight=[0, 1, 2], labels=labels))
    tags = []
    for color in class_colors(3):
        ys, xs = np.nonzero(_solid(arr, hex_to_rgb(color)))
        assert ys.size > 0, color  # every label is drawn somewhere
        tags.append((xs.min(), ys.min(), xs.max(), ys.max()))
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = tags[i], tags[j]
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)


def test_segmentation_outline_is_the_pure_legend_colour():
    names = ["a", "b"]
    labels = np.zeros((40, 60), dtype=np.int64)
    labels[:, 30:] = 1
    labels[:5] = -1  # an unlabelled band: no outline drawn into it
    out = np.asarray(segmentation_overlay(gray_image(60, 40), labels, names, alpha=0.3,
                                          outline=2))
    pure = [hex_to_rgb(c) for c in class_colors(2)]
    assert tuple(out[20, 29]) == pure[0] and tuple(out[20, 28]) == pure[0]  # 2 px each side
    assert tuple(out[20, 30]) == pure[1] and tuple(out[20, 31]) == pure[1]
    assert tuple(out[20, 10]) == expected_blend(class_colors(2)[0], 0.3)  # inside: the blend
    assert tuple(out[5, 10]) == pure[0]  # the border with the unlabelled band
    assert (out[:5] == GRAY).all()  # unlabelled pixels stay the photo
    plain = np.asarray(segmentation_overlay(gray_image(60, 40), labels, names, alpha=0.3))
    assert tuple(plain[20, 29]) == expected_blend(class_colors(2)[0], 0.3)  # outline=0: none

def test_crop_view_validates():
    img = gray_image(50, 50)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        crop_view(img, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="highlight"):
        crop_view(img, boxes, highlight=[3])
    with pytest.raises(ValueError, match="labels"):
        crop_view(img, boxes, highlight=[0], labels=["a", "b"])
    with pytest.raises(ValueError, match="kept"):
        crop_view(img, boxes, kept=[True, False])


def test_crop_thumbnails_cut_the_right_region():
    img = gray_image(100, 100)
    img.paste((255, 0, 0), (50, 50, 100, 100))
    boxes = np.array([[50, 50, 100, 100], [0, 0, 40, 40], [0, 0, 100, 50]])
    thumbs = crop_thumbnails(img, torch.tensor(boxes), [0, 1, 2], size=32)
    assert [t.size for t in thumbs] == [(32, 32)] * 3
    assert (np.asarray(thumbs[0]) == (255, 0, 0)).all()  # right/bottom = width: whole region
    assert tuple(np.asarray(thumbs[1])[16, 16]) == (GRAY, GRAY, GRAY)
    assert tuple(np.asarray(thumbs[2])[0, 16]) == (255, 255, 255)  # wide crop padded, not cut
    with pytest.raises(ValueError, match="out of range"):
        crop_thumbnails(img, boxes, [3])


# ----------------------------------------------------------------------------- captions


def test_topk_matches_torch_topk():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(7, 5, generator=gen), dim=1)
    names = [f"c{i}" for i in range(5)]
    got = topk(probs, names, k=3)
    ref_v, ref_i = torch.topk(probs, 3, dim=1)
    assert len(got) == 7
    for row, vals, idx in zip(got, ref_v, ref_i):
        assert [n for n, _ in row] == [names[j] for j in idx.tolist()]
        got_p = torch.tensor([p for _, p in row], dtype=torch.float64)
        torch.testing.assert_close(got_p, vals.double())
    assert len(topk(probs.numpy(), names, k=10)[0]) == 5  # k clipped to K
    with pytest.raises(ValueError, match="match class_names"):
        topk(probs, names[:4])
