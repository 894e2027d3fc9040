"""Patch grids in image coordinates: where each patch lies, sampling a grid at image points.

A ViT sees a square crop of the image (``core.models.crop_box`` gives it, in pixels, from the same
arithmetic as the preprocessing); its ``(h, w)`` patch grid tiles that box, patch ``(r, c)``
covering ``left + [c, c + 1) * (right - left) / w`` horizontally and the like vertically. Two
operations need that geometry, and both are one bilinear sampler here:

- `place_in_image`: patch logits -> every pixel of the image. Inside the box the logits are
  interpolated bilinearly between patch centres (exactly ``F.interpolate(..., "bilinear",
  align_corners=False)`` when the box is the whole image); outside it the model saw nothing, and
  the pixel is marked "not seen" rather than extrapolated.
- `resample_patches`: one model's patch grid at the centres of another model's patches, so
  GPUA's patch pool pairs a CLIP and a DINO feature of the same place (their grids cover
  different boxes: CLIP 224 of 224, DINO 224 of 256 of the short side).

Bilinear, not nearest, for the pairing: a DINO patch centre generally falls between CLIP patch
centres (the grids differ in pitch and offset), and the bilinear value is the CLIP feature field's
estimate at that very point, whereas nearest would pair a feature up to half a CLIP patch away
(the same order as the misregistration being fixed) and would jump at every CLIP patch edge.
It is also how the logits are upsampled for the overlay, so the pool and the display agree. Both
see the features as a field sampled at patch centres; near the box edges the sampler clamps to
the outermost patch (as ``align_corners=False`` interpolation does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.checks import as_float_tensor, check_int

__all__ = ["check_boxes", "patch_centers", "sample_grid", "place_in_image", "resample_patches"]


def check_boxes(boxes, n: int, name: str = "boxes") -> Tensor:
    """Validate one box (4,) or one per image (n, 4) as (left, top, right, bottom).

    Returns float64 Tensor, shape (n, 4).
    """
    b = as_float_tensor(boxes, name).to(torch.float64)
    if b.ndim == 1:
        b = b.unsqueeze(0).expand(n, -1)
    if b.ndim != 2 or b.shape != (n, 4):
        raise ValueError(
            f"{name}: expected (left, top, right, bottom) as shape (4,) or ({n}, 4), got "
            f"{tuple(b.shape)}; core.models.crop_box gives a model's box for an image size."
        )
    if not bool(torch.isfinite(b).all()) or bool(
            ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
        raise ValueError(f"{name}: expected finite boxes with right > left and bottom > top, "
                         f"got {b.tolist()}.")
    return b.cpu()


def patch_centers(boxes: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Centres of an (h, w) grid of patches tiling each box.

    boxes : Tensor, shape (n, 4) float64. Returns xs (n, w) and ys (n, h), in image pixels.
    """
    h, w = grid
    fx = (torch.arange(w, dtype=torch.float64) + 0.5) / w  # (w,) fractions of the box
    fy = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = boxes[:, 0:1] + fx * (boxes[:, 2:3] - boxes[:, 0:1])  # (n, w)
    ys = boxes[:, 1:2] + fy * (boxes[:, 3:4] - boxes[:, 1:2])  # (n, h)
    return xs, ys


def sample_grid(values: Tensor, boxes: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples of patch grids at image points (the separable product xs x ys).

    Parameters
    ----------
    values : Tensor, shape (n, c, h, w)
        Image i's (h, w) grid tiles ``boxes[i]``; value (r, q) sits at the centre of patch (r, q).
    boxes : Tensor, shape (n, 4), float64, (left, top, right, bottom) in image pixels
    xs : Tensor, shape (n, W); ys : Tensor, shape (n, H)
        Point coordinates in the same pixels (a pixel's centre is ``index + 0.5``).

    Returns
    -------
    sampled : Tensor, shape (n, c, H, W), the dtype of ``values``
        Bilinear between patch centres, clamped to the outermost patch beyond them.
    inside : Tensor, shape (n, H, W), bool
        Points in the box (half-open: ``left <= x < right``), i.e. points the model saw.
    """
    n, height, width = values.shape[0], ys.shape[1], xs.shape[1]
    left, top, right, bottom = (boxes[:, j : j + 1] for j in range(4))  # each (n, 1)
    # grid_sample's normalised coordinates with align_corners=False: -1 and 1 are the outer
    # edges of the grid, i.e. the box edges, and the patch centres sit at (2 q + 1) / w - 1.
    gx = 2.0 * (xs - left) / (right - left) - 1.0  # (n, W)
    gy = 2.0 * (ys - top) / (bottom - top) - 1.0  # (n, H)
    grid = torch.stack(
        (gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)), dim=-1
    )  # (n, H, W, 2)
    grid = grid.to(device=values.device, dtype=values.dtype)
    sampled = F.grid_sample(
        values, grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (n, c, H, W)
    in_x = (xs >= left) & (xs < right)  # (n, W)
    in_y = (ys >= top) & (ys < bottom)  # (n, H)
    inside = (in_y[:, :, None] & in_x[:, None, :]).to(values.device)  # (n, H, W)
    return sampled, inside


def place_in_image(
    logits: Tensor, image_size: tuple[int, int], boxes=None
) -> tuple[Tensor, Tensor]:
    """Patch logits at every pixel of the image, and where the model saw the image.

    Parameters
    ----------
    logits : Tensor, shape (n, K, h, w)
    image_size : (H, W)
    boxes : (4,) or (n, 4), optional
        Where each grid lies in the image (``core.models.crop_box(image.size, spec)``); None:
        the grid covers the whole image (the old stretched placement, right only for a square
        image or a "squash" model).

    Returns
    -------
    logits : Tensor, shape (n, K, H, W)
        Bilinear between patch centres inside the box; meaningless outside it (use ``seen``).
    seen : Tensor, shape (n, H, W), bool
        Pixels whose centre lies in the box.
    """
    if len(image_size) != 2:
        raise ValueError(f"image_size: expected (H, W), got {image_size!r}.")
    height, width = (check_int(s, "image_size", 1) for s in image_size)
    n = logits.shape[0]
    b = check_boxes((0.0, 0.0, float(width), float(height)) if boxes is None else boxes, n,
                    "crop_box")
    xs = (torch.arange(width, dtype=torch.float64) + 0.5).expand(n, width)  # pixel centres
    ys = (torch.arange(height, dtype=torch.float64) + 0.5).expand(n, height)
    return sample_grid(logits, b, xs, ys)


def resample_patches(
    patches, *, source_boxes, target_boxes, target_grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """A patch grid sampled at the centres of another grid's patches, in image coordinates.

    Parameters
    ----------
    patches : Tensor, shape (n, h, w, d)
        E.g. dense CLIP features; image i's grid tiles ``source_boxes[i]``.
    source_boxes, target_boxes : (4,) or (n, 4)
        The two models' crop boxes in pixels of each image (``core.models.crop_box``).
    target_grid : (h_t, w_t)
        The other model's patch grid (e.g. DINO's), tiling ``target_boxes[i]``.

    Returns
    -------
    resampled : Tensor, shape (n, h_t, w_t, d)
        Bilinear between source patch centres (see the module docstring for why bilinear).
    paired : Tensor, shape (n, h_t, w_t), bool
        Target patches whose centre the source model saw; the others have no counterpart.
    """
    x = as_float_tensor(patches, "patches")
    if x.ndim != 4:
        raise ValueError(f"patches: expected shape (n, h, w, d), got {tuple(x.shape)}.")
    if len(target_grid) != 2:
        raise ValueError(f"target_grid: expected (h, w), got {target_grid!r}.")
    grid = tuple(check_int(g, "target_grid", 1) for g in target_grid)
    n = x.shape[0]
    src = check_boxes(source_boxes, n, "source_boxes")
    xs, ys = patch_centers(check_boxes(target_boxes, n, "target_boxes"), grid)
    sampled, paired = sample_grid(x.permute(0, 3, 1, 2), src, xs, ys)  # (n, d, h_t, w_t)
    return sampled.permute(0, 2, 3, 1), paired
