"""Sliding-window geometry and logit averaging for dataset segmentation (MMSegmentation's protocol).

SCLIP and SC-CLIP evaluate MaskCLIP and themselves with MMSegmentation's test pipeline:

1. ``Resize(scale=(long_max, short_side), keep_ratio=True)``: the image is scaled by
   ``min(long_max / long, short_side / short)``, sizes rounded half up (:func:`resized_size`);
2. ``slide_inference``: windows of ``crop`` pixels every ``stride`` pixels, the last row / column
   moved back inside the image (:func:`window_boxes`); each window's logits are resized
   bilinearly to the window, summed into the image and divided by the window count per pixel;
3. the averaged logits are resized bilinearly to the label map and argmaxed.

What differs here: the model sees each window resampled straight from the *original* image
(``Image.resize(box=...)`` of the window's box mapped back), not cropped from a resized copy:
the same pixels up to resampling. A window smaller than ``crop`` (an image whose resized side is
below ``crop``) is stretched to the model's input square where MMSegmentation feeds it as it is.
"whole" mode is one window, the whole resized image, stretched to the input square.
Logit maps are upsampled with :func:`core.methods.gpua.patch_grid.place_in_image` (bilinear
between patch centres, edges clamped: ``F.interpolate(align_corners=False)``'s sampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from core.checks import check_int
from core.config import SEG_CROP, SEG_LONG_MAX, SEG_MODES, SEG_STRIDE
from core.methods.gpua.patch_grid import place_in_image

__all__ = ["SlideSettings", "average_windows", "image_windows", "resized_size", "upsample_to",
           "window_boxes"]


@dataclass(frozen=True)
class SlideSettings:
    """How an image becomes windows (defaults: ``core.config``; short side per dataset).

    mode : "slide" or "whole"; short_side, long_max : the resize; crop, stride : the windows.
    """

    short_side: int
    long_max: int = SEG_LONG_MAX
    crop: int = SEG_CROP
    stride: int = SEG_STRIDE
    mode: str = "slide"

    def __post_init__(self):
        if self.mode not in SEG_MODES:
            raise ValueError(f"mode: expected one of {', '.join(SEG_MODES)}, got {self.mode!r}.")
        for name in ("short_side", "long_max", "crop", "stride"):
            check_int(getattr(self, name), name, 1)

    def as_dict(self) -> dict:
        return asdict(self)


def resized_size(size: Sequence[int], short_side: int, long_max: int) -> tuple[int, int]:
    """(w, h) after MMSegmentation's keep-ratio resize to the scale (long_max, short_side)."""
    w, h = (int(v) for v in size)
    scale = min(long_max / max(w, h), short_side / min(w, h))
    return int(w * scale + 0.5), int(h * scale + 0.5)


def window_boxes(size: Sequence[int], crop: int, stride: int) -> Tensor:
    """Sliding windows over an image of ``size`` = (w, h), as MMSegmentation's slide_inference.

    Returns
    -------
    Tensor, shape (M, 4), float64
        (left, top, right, bottom) in pixels, row-major; the last window of each row / column
        ends at the border; windows are clipped to the image when it is smaller than ``crop``.
    """
    w, h = (int(v) for v in size)

    def starts(extent: int) -> list[tuple[int, int]]:
        n = max(extent - crop + stride - 1, 0) // stride + 1
        out = []
        for i in range(n):
            end = min(i * stride + crop, extent)
            out.append((max(end - crop, 0), end))
        return out

    boxes = [(x0, y0, x1, y1) for (y0, y1) in starts(h) for (x0, x1) in starts(w)]
    return torch.tensor(boxes, dtype=torch.float64)


def image_windows(size: Sequence[int], settings: SlideSettings) -> tuple[tuple[int, int], Tensor,
                                                                         Tensor]:
    """An image's windows: ``(resized (w', h'), boxes in resized pixels (M, 4), boxes in the
    original image's pixels (M, 4))``."""
    resized = resized_size(size, settings.short_side, settings.long_max)
    if settings.mode == "whole":
        boxes = torch.tensor([[0.0, 0.0, float(resized[0]), float(resized[1])]],
                             dtype=torch.float64)
    else:
        boxes = window_boxes(resized, settings.crop, settings.stride)
    scale = torch.tensor([size[0] / resized[0], size[1] / resized[1]] * 2, dtype=torch.float64)
    return resized, boxes, boxes * scale


def average_windows(logits: Tensor, boxes: Tensor, resized: tuple[int, int]) -> Tensor:
    """Window logit maps placed in the resized image and averaged where windows overlap.

    Parameters
    ----------
    logits : Tensor, shape (M, K, h, w)
        One patch-grid map per window (the grid tiles the window).
    boxes : Tensor, shape (M, 4)
        Windows in resized pixels, integer-valued (:func:`image_windows`).
    resized : (w', h')

    Returns
    -------
    Tensor, shape (K, h', w')
        Sum over windows of the bilinearly upsampled maps, divided by the windows per pixel.
    """
    w, h = resized
    total = torch.zeros((logits.shape[1], h, w), dtype=torch.float32)
    count = torch.zeros((h, w), dtype=torch.float32)
    for m, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        # The window's grid spread over the window's own pixels, then pasted in place.
        placed, _ = place_in_image(logits[m:m + 1].float(), (y1 - y0, x1 - x0))  # (1, K, hh, ww)
        total[:, y0:y1, x0:x1] += placed[0]
        count[y0:y1, x0:x1] += 1
    if bool((count == 0).any()):  # the windows tile the image by construction
        raise AssertionError("average_windows: some pixel lies in no window")
    return total / count


def upsample_to(logits: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """(K, h', w') logits resized bilinearly to (K, H, W), the label map's size."""
    if tuple(logits.shape[1:]) == tuple(size_hw):
        return logits
    return place_in_image(logits[None], size_hw)[0][0]
