"""Segmentation lands where the image is: non-square synthetic images through the whole pipeline.

Stub encoders run the real preprocessing (``Encoder`` batching and ``to_uint8``) and then, instead
of a network, give each patch the mean of its pixels: a class part (the blue channel marks one
region) and a position part (red and green hold each pixel's x and y). So a patch feature says what
is under it and where it came from, and the tests can check that

- the overlays' class boundary lies within one patch of the true one (and, as a control, that the
  old whole-image stretching misses it by more), for a 4:3 and a 3:4 image;
- the "not seen" band is exactly what each model's centre crop leaves out;
- every pair in GPUA's patch pool joins a CLIP and a DINO feature of the same place.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import core.methods.gpua.fit as gpua_fit
import core.models.load as model_load
from core.data import ImageItem
from core.methods.gpua.segment import segment_dense_clip
from core.methods.run import FeatureSet
from core.models import ModelSpec, register_model
from core.models.encoders import Encoder
from core.models.registry import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from core.pipeline import NOT_SEEN
from core.pipeline.extraction import Extraction, ExtractSettings
from core.pipeline.segmentation import segment

POS = 0.05  # weight of the position part of a stub feature: small, so the class part decides
TEXT = torch.eye(4)[:2]  # class 0 "marked" (blue channel), class 1 "plain"
SIZES = [(256, 192), (192, 256)]  # (W, H): 4:3 and 3:4
PAIR_TOL_PX = 2.0  # pool pairs: position disagreement allowed (uint8 ramps, bilinear weights)

# Stub sizes chosen so the crop arithmetic is exact on 256 x 192 (48 * 4 / 3 = 64): CLIP keeps
# the central 192 x 192 square, DINO (42 of 48, as DINO's 224 of 256) the central 168 x 168.
_STUB = dict(pretrained=None, hf_repo=None, interpolation="bicubic", hidden=True,
             random_init=True, output_dim=4, n_prefix_tokens=1)
CLIP_STUB = ModelSpec(key="test-stub-position-clip", display_name="position stub CLIP",
                      kind="vlm", library="open_clip", model_id="stub", image_size=48,
                      resize_size=48, patch_size=4, mean=CLIP_MEAN, std=CLIP_STD, dense=True,
                      **_STUB)
SQUASH_STUB = ModelSpec(key="test-stub-position-squash", display_name="position stub squash",
                        kind="vlm", library="open_clip", model_id="stub", image_size=48,
                        resize_size=48, resize_mode="squash", patch_size=4, mean=CLIP_MEAN,
                        std=CLIP_STD, dense=True, **_STUB)
DINO_STUB = ModelSpec(key="test-stub-position-dino", display_name="position stub DINO",
                      kind="vfm", library="transformers", model_id="stub", image_size=42,
                      resize_size=48, patch_size=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, **_STUB)
EXPECTED_BOX = {  # the known answer, per model, for (W, H) = SIZES[0]; transposed for SIZES[1]
    CLIP_STUB.key: (32, 0, 224, 192), SQUASH_STUB.key: (0, 0, 256, 192),
    DINO_STUB.key: (44, 12, 212, 180),
}


class PositionEncoder(Encoder):
    """Patch feature = [blue, 1 - blue, POS * red, POS * green], means over the patch's pixels."""

    def _patch_means(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) normalised
        rgb = x * self._std.to(x.device) + self._mean.to(x.device)  # back to [0, 1]
        r, g, b = F.avg_pool2d(rgb, self.spec.patch_size).unbind(1)  # (B, h, w) each
        return torch.stack([b, 1 - b, POS * r, POS * g], dim=-1)  # (B, h, w, 4)

    _forward_patches = _patch_means
    _forward_dense = _patch_means


@pytest.fixture
def stubs(monkeypatch):
    for spec in (CLIP_STUB, SQUASH_STUB, DINO_STUB):
        register_model(spec)
    build = model_load._build

    def fake_build(spec, device):
        if spec.key.startswith("test-stub-position"):
            return PositionEncoder(spec, torch.nn.Identity(), device)
        return build(spec, device)

    monkeypatch.setattr(model_load, "_build", fake_build)
    calls = []
    fit = gpua_fit.fit_gpua

    def recording_fit(vfm_features, vlm_features, text_features, **kwargs):
        calls.append((vfm_features, vlm_features))
        return fit(vfm_features, vlm_features, text_features, **kwargs)

    monkeypatch.setattr(gpua_fit, "fit_gpua", recording_fit)
    return calls


def _truth(w: int, h: int) -> np.ndarray:
    """Class 0 on the first quarter of the long side, class 1 elsewhere: (H, W) int."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.where((xx if w >= h else yy) < max(w, h) // 4, 0, 1)


def _image(w: int, h: int) -> Image.Image:
    """Red = x, green = y (pixel indices), blue = 255 where the truth is class 0."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx, yy, 255 * (_truth(w, h) == 0)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _extraction(vlm: str) -> Extraction:
    items = []
    for w, h in SIZES:
        buf = io.BytesIO()
        _image(w, h).save(buf, format="PNG")
        items.append(ImageItem.from_bytes(f"{w}x{h}.png", buf.getvalue()))
    return Extraction(
        features=FeatureSet(vlm_image=torch.zeros(len(items), 4), text=TEXT), items=tuple(items),
        class_names=("marked", "plain"),
        settings=ExtractSettings(vlm=vlm, vfm=DINO_STUB.key, device="cpu", batch_size=4),
    )


def _expected_seen(key: str, w: int, h: int) -> np.ndarray:
    left, top, right, bottom = EXPECTED_BOX[key]
    if (w, h) != SIZES[0]:
        left, top, right, bottom = top, left, bottom, right
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return (xx >= left) & (xx < right) & (yy >= top) & (yy < bottom)


def _wrong_beyond_one_patch(labels: torch.Tensor, seen: np.ndarray, patch_px: float) -> int:
    """Seen pixels more than one patch from the true boundary whose label is not the truth."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    distance = np.abs((xx if w >= h else yy) - max(w, h) // 4)
    far = seen & (distance > patch_px)
    return int((labels.numpy()[far] != _truth(w, h)[far]).sum())


@pytest.mark.parametrize("vlm", [CLIP_STUB.key, SQUASH_STUB.key])
def test_overlays_land_on_the_true_boundary_and_not_seen_is_the_cropped_band(stubs, vlm):
    ex = _extraction(vlm)
    seg = segment(ex, [0, 1], per_class=64, ths_steps=20)
    for j, image in enumerate(seg.images):
        w, h = image.size
        for key, labels, seen, grid in (
            (vlm, seg.clip_labels[j], seg.clip_seen[j], 12),
            (DINO_STUB.key, seg.gpua_labels[j], seg.gpua_seen[j], 14),
        ):
            expected = _expected_seen(key, w, h)
            assert np.array_equal(seen.numpy(), expected), (key, w, h)
            assert np.array_equal(labels.numpy() == NOT_SEEN, ~expected)
            left, top, right, bottom = EXPECTED_BOX[key]
            patch_px = max(right - left, bottom - top) / grid  # the long side of a patch
            assert _wrong_beyond_one_patch(labels, expected, patch_px) == 0, (key, w, h)
            assert (labels.numpy()[expected] == 0).any() and (labels.numpy()[expected] == 1).any()


def test_stretching_over_the_whole_image_misses_the_boundary(stubs):
    # The control that shows the boundary check can fail: the old placement (CLIP's grid
    # stretched over the whole image) puts the boundary 21 px (> one 16 px patch) off.
    encoder = model_load.load_encoder(CLIP_STUB.key, device="cpu")
    for w, h in SIZES:
        x = encoder.encode_dense([_image(w, h)])
        stretched = segment_dense_clip(x, TEXT, image_size=(h, w)).labels[0]
        assert _wrong_beyond_one_patch(stretched, np.ones((h, w), bool), 16.0) > 0


def _decode_position(features: torch.Tensor) -> torch.Tensor:
    """(n, 4) stub features (any positive scale) -> (n, 2) pixel positions (x, y) - 1/2."""
    return 255.0 * features[:, 2:] / (POS * (features[:, 0:1] + features[:, 1:2]))


@pytest.mark.parametrize("vlm", [CLIP_STUB.key, SQUASH_STUB.key])
def test_pool_pairs_clip_and_dino_patches_of_the_same_place(stubs, vlm):
    ex = _extraction(vlm)
    segment(ex, [0], pool_indices=[0, 1], per_class=64, ths_steps=5)
    assert len(stubs) == 1
    z, x = stubs[0]
    assert z.shape[0] == x.shape[0] >= 64
    gap = (_decode_position(z) - _decode_position(x)).abs().max()
    assert float(gap) < PAIR_TOL_PX
    # Control: pairing by grid index (the old way) joins patches up to 12 px apart here.
    if vlm == CLIP_STUB.key:
        clip = model_load.load_encoder(vlm, device="cpu")
        dino = model_load.load_encoder(DINO_STUB.key, device="cpu")
        image = _image(*SIZES[0])
        zz = dino.encode_patches([image]).reshape(-1, 4)
        xx = F.interpolate(clip.encode_dense([image]).permute(0, 3, 1, 2), size=(14, 14),
                           mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        old_gap = (_decode_position(zz) - _decode_position(xx.reshape(-1, 4))).abs().max()
        assert float(old_gap) > 3 * PAIR_TOL_PX
