"""Where each model's patches lie in the image: the crop box, the patch-grid sampler.

The crop box comes from the same arithmetic as the preprocessing (``crop_geometry``); it is checked
here against torchvision's own Resize + CenterCrop on index images (pixel value = coordinate), and
the sampler against ``F.interpolate`` and naive loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from core.checks import l2_normalize
from core.methods.gpua.patch_grid import place_in_image, resample_patches
from core.methods.gpua.segment import NOT_SEEN, segment_dense_clip, select_patch_pool
from core.models import crop_box, crop_geometry, get_spec

# Pillow's bicubic reproduces a linear ramp up to this many pixels away from the image border
# (measured: <= 0.023 px when downsampling, ~1e-5 px when upsampling); a box off by one resized
# pixel, or by truncating instead of rounding, is off by >= 0.2 px.
ATOL_PX = 0.05
SIZES = [(400, 300), (300, 400), (333, 251), (97, 211), (500, 120), (224, 224), (225, 224)]
MODELS = ["clip-vit-b16", "dinov2-base", "siglip-vit-b16"]  # 224/224, 256/224, squash


def _torchvision_transform(spec):
    bicubic = T.InterpolationMode.BICUBIC
    if spec.resize_mode == "squash":
        return T.Resize((spec.image_size, spec.image_size), interpolation=bicubic)
    return T.Compose([T.Resize(spec.resize_size, interpolation=bicubic),
                      T.CenterCrop(spec.image_size)])


def _index_images(w: int, h: int) -> tuple[Image.Image, Image.Image]:
    """Float images whose pixel (y, x) holds x, resp. y."""
    xs = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    ys = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    return Image.fromarray(xs, mode="F"), Image.fromarray(ys, mode="F")


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("size", SIZES)
def test_crop_box_matches_torchvision_on_an_index_image(key, size):
    spec = get_spec(key)
    w, h = size
    side = spec.image_size
    transform = _torchvision_transform(spec)
    x_img, y_img = _index_images(w, h)
    got_x, got_y = np.asarray(transform(x_img)), np.asarray(transform(y_img))  # (S, S) each
    geometry = crop_geometry(size, spec)
    left, top, right, bottom = geometry.box
    assert crop_box(size, spec) == geometry.box
    # Output pixel c of the crop samples the original at box.left + (c + 1/2) * width / S, i.e.
    # at that continuous coordinate minus 1/2 in pixel indices (pixel x is centred at x + 1/2).
    want_x = left + (np.arange(side) + 0.5) * (right - left) / side - 0.5  # (S,)
    want_y = top + (np.arange(side) + 0.5) * (bottom - top) / side - 0.5
    # Away from the image border, where Pillow's kernel is truncated (support 2 px x scale).
    sx, sy = max(1.0, w / geometry.resized[0]), max(1.0, h / geometry.resized[1])
    keep_x = (want_x > 2 * sx + 1) & (want_x < w - 3 - 2 * sx)
    keep_y = (want_y > 2 * sy + 1) & (want_y < h - 3 - 2 * sy)
    assert keep_x.sum() > side // 3 and keep_y.sum() > side // 3
    np.testing.assert_allclose(got_x[:, keep_x], np.broadcast_to(want_x[keep_x], (side,
                               int(keep_x.sum()))), atol=ATOL_PX, rtol=0)
    np.testing.assert_allclose(got_y[keep_y, :], np.broadcast_to(want_y[keep_y, None],
                               (int(keep_y.sum()), side)), atol=ATOL_PX, rtol=0)
    # The box lies in the image, and its resized size is torchvision's.
    assert 0 <= left < right <= w + 1e-9 and 0 <= top < bottom <= h + 1e-9
    if spec.resize_mode == "shortest":
        resized = T.Resize(spec.resize_size, interpolation=T.InterpolationMode.BICUBIC)(x_img)
        assert resized.size == geometry.resized


def test_crop_box_known_answers_for_4_3_and_3_4():
    # On 256 x 192, CLIP keeps the central square of side 192, DINO the central square of side
    # 224/256 of that (168), SigLIP squashes the whole image; up to the resize's truncation of the
    # long side (torchvision's int()), which moves the box by less than one resized pixel.
    clip, dino, siglip = (get_spec(k) for k in MODELS)
    resized_px = 256 / (224 * 4 / 3)  # one pixel of the resized image, in original pixels
    near = {"abs": resized_px, "rel": 0}
    assert crop_box((256, 192), clip) == pytest.approx((32, 0, 224, 192), **near)
    assert crop_box((192, 256), clip) == pytest.approx((0, 32, 192, 224), **near)
    assert crop_box((256, 192), dino) == pytest.approx((44, 12, 212, 180), **near)
    assert crop_box((192, 256), dino) == pytest.approx((12, 44, 180, 212), **near)
    assert crop_box((256, 192), siglip) == (0, 0, 256, 192)
    with pytest.raises(ValueError, match="size"):
        crop_box((0, 10), clip)


# ----------------------------------------------------------------------------- the sampler


def test_place_in_image_whole_box_equals_interpolate():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    for size in [(13, 29), (5, 7), (40, 11)]:
        placed, seen = place_in_image(logits, size)
        ref = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(placed, ref, atol=1e-5, rtol=0)
        assert bool(seen.all())


def test_place_in_image_box_equals_interpolate_pasted_and_marks_the_rest():
    # An integer box: the reference is interpolate to the box's size, pasted at its corner.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 3, 5, generator=g)
    box = (6, 2, 21, 11)  # (left, top, right, bottom) in a 30 x 14 (W x H) image
    placed, seen = place_in_image(logits, (14, 30), box)
    ref = F.interpolate(logits, size=(9, 15), mode="bilinear", align_corners=False)
    torch.testing.assert_close(placed[..., 2:11, 6:21], ref, atol=1e-5, rtol=0)
    expected = torch.zeros(1, 14, 30, dtype=torch.bool)
    expected[:, 2:11, 6:21] = True
    assert torch.equal(seen, expected)


def test_seen_mask_is_pixel_centres_in_a_fractional_box_naive_loop():
    logits = torch.zeros(2, 1, 4, 4)
    boxes = torch.tensor([[2.4, 0.0, 9.6, 5.5], [0.5, 1.49, 10.0, 7.0]], dtype=torch.float64)
    _, seen = place_in_image(logits, (7, 10), boxes)
    for i in range(2):
        left, top, right, bottom = boxes[i].tolist()
        for y in range(7):
            for x in range(10):
                inside = left <= x + 0.5 < right and top <= y + 0.5 < bottom
                assert bool(seen[i, y, x]) == inside, (i, y, x)


def _position_field(box, grid):
    """(1, h, w, 2) features = (x, y) of each patch centre of a grid tiling ``box``."""
    left, top, right, bottom = box
    h, w = grid
    xs = left + (torch.arange(w, dtype=torch.float64) + 0.5) * (right - left) / w
    ys = top + (torch.arange(h, dtype=torch.float64) + 0.5) * (bottom - top) / h
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, h, w, 2)


def test_resample_patches_reads_the_source_at_target_positions():
    # CLIP-like grid over (32, 0, 224, 192) and DINO-like over (44, 12, 212, 180) (a 4:3 image):
    # a linear field of positions is reproduced exactly at every target centre inside the
    # source's outermost centres, and the clamped ones stay within half a source patch.
    src_box, dst_box = (32.0, 0.0, 224.0, 192.0), (44.0, 12.0, 212.0, 180.0)
    source = _position_field(src_box, (12, 12))
    got, paired = resample_patches(source, source_boxes=src_box, target_boxes=dst_box,
                                   target_grid=(14, 14))
    want = _position_field(dst_box, (14, 14))
    assert got.shape == (1, 14, 14, 2) and bool(paired.all())
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=0)
    # Identity when the grids coincide.
    same, _ = resample_patches(source, source_boxes=src_box, target_boxes=src_box,
                               target_grid=(12, 12))
    torch.testing.assert_close(same.double(), source, atol=1e-4, rtol=0)
    # Grid-index pairing (the old way) is off by up to 12 px here: the test above can fail.
    old = F.interpolate(source.permute(0, 3, 1, 2), size=(14, 14), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1)
    assert float((old - want).abs().max()) > 8.0


def test_resample_patches_marks_targets_outside_the_source():
    src_box, dst_box = (10.0, 0.0, 50.0, 40.0), (0.0, 0.0, 60.0, 40.0)
    source = _position_field(src_box, (4, 4))
    _, paired = resample_patches(source, source_boxes=src_box, target_boxes=dst_box,
                                 target_grid=(4, 6))  # target centres x = 5, 15, ..., 55
    assert paired[0, :, 1:5].all() and not paired[0, :, [0, 5]].any()
    with pytest.raises(ValueError, match="source_boxes"):
        resample_patches(source, source_boxes=(5, 0, 1, 4), target_boxes=dst_box,
                         target_grid=(4, 6))
    with pytest.raises(ValueError, match="target_boxes"):
        resample_patches(source, source_boxes=src_box, target_boxes=torch.zeros(2, 4),
                         target_grid=(4, 6))


# ----------------------------------------------------------------------------- segmentation


def test_segment_marks_not_seen_outside_the_crop_box():
    g = torch.Generator().manual_seed(2)
    patches, text = torch.randn(1, 4, 4, 6, generator=g), torch.randn(3, 6, generator=g)
    box = (10, 0, 40, 30)  # the central square of a 50 x 30 image
    seg = segment_dense_clip(patches, text, image_size=(30, 50), crop_box=box)
    labels, probs = seg  # still unpacks as a pair
    assert torch.equal(seg.seen[0, :, 10:40], torch.ones(30, 30, dtype=torch.bool))
    assert not seg.seen[0, :, :10].any() and not seg.seen[0, :, 40:].any()
    assert bool((labels[~seg.seen] == NOT_SEEN).all()) and bool((labels[seg.seen] >= 0).all())
    torch.testing.assert_close(probs.sum(1)[seg.seen], torch.ones(900))
    assert float(probs.sum(1)[~seg.seen].abs().max()) == 0.0
    # Inside, exactly the whole-image segmentation of the crop alone.
    alone = segment_dense_clip(patches, text, image_size=(30, 30))
    torch.testing.assert_close(probs[..., 10:40], alone.probs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="image_size"):
        segment_dense_clip(patches, text, crop_box=box)


def test_select_patch_pool_with_a_mask_picks_among_candidates_only():
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(2, 5, 6, 8, generator=g), torch.randn(3, 8, generator=g)
    mask = torch.rand(2, 5, 6, generator=g) < 0.5
    idx = select_patch_pool(x, text, per_class=4, mask=mask)
    flat_mask = mask.reshape(-1)
    assert bool(flat_mask[idx].all())
    cand = flat_mask.nonzero().squeeze(1)  # reference: top-4 per class among the candidates
    sim = l2_normalize(x.reshape(-1, 8)[cand]) @ l2_normalize(text).T
    assert torch.equal(idx, torch.unique(cand[sim.topk(4, dim=0).indices.reshape(-1)]))
    with pytest.raises(ValueError, match="mask"):
        select_patch_pool(x, text, mask=mask[0])
    with pytest.raises(ValueError, match="overlap"):
        select_patch_pool(x, text, mask=torch.zeros_like(mask))
