"""LaZSL's crops drawn for the app: boxes over the image with the attribute each matched (labels
placed without overlap by ``demo.placement``), and the crops cut out as thumbnails.

Pure functions on PIL images and arrays; no gradio here. Colours and fonts come from
``demo.overlays`` so a crop box looks like the rest of the app.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from demo.overlays import as_array, class_colors, hex_to_rgb, label_font, rgb_image
from demo.placement import place_labels


def _check_boxes(boxes, size: tuple[int, int]) -> np.ndarray:
    arr = as_array(boxes, "boxes").astype(np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (M, 4) as (left, top, right, bottom), got "
                         f"{arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError("boxes: expected finite pixel coordinates, got NaN/Inf.")
    w, h = size
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, w)
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, h)
    return arr


def _outline(box: np.ndarray) -> tuple[float, float, float, float]:
    """Exclusive right/bottom (PIL crop) -> the inclusive corners ImageDraw.rectangle wants."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)


def _dashed_rect(draw: ImageDraw.ImageDraw, box, fill, width: int, dash: int) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1),
                                    (y0, y1, False, x0), (y0, y1, False, x1)):
        for s in np.arange(a, b, 2 * dash):
            e = min(s + dash, b)
            seg = (s, fixed, e, fixed) if horizontal else (fixed, s, fixed, e)
            draw.line(seg, fill=fill, width=width)


def crop_view(image: Image.Image, boxes, *, highlight: list[int] | None = None,
              labels: list[str] | None = None, kept=None) -> Image.Image:
    """Draw LaZSL crop boxes on an image.

    Kept crops get a thin light outline, crops dropped by vision selection a faint dashed one, and
    highlighted crops (those that explain an attribute) a thick coloured box with a short label.

    Parameters
    ----------
    boxes : array or Tensor, shape (M, 4)
        Pixel ``(left, top, right, bottom)``, right/bottom exclusive (PIL's crop convention, as
        ``core.methods.lazsl.crop_boxes`` returns); clipped to the image.
    highlight : list of int, optional
        Crops to emphasise; ``highlight[i]`` gets colour ``class_colors(...)[i]``.
    labels : list of str, optional, one short text per highlighted crop (cut at 28 chars);
        placed where it overlaps no other label (inside a corner of its box, else just outside),
        else shortened to its rank number
    kept : array or Tensor, shape (M,), bool, optional, vision-selection mask (None: all kept)

    Returns
    -------
    view : PIL.Image, RGB, same size as ``image``
    """
    img = rgb_image(image)
    arr = _check_boxes(boxes, img.size)
    m = arr.shape[0]
    kept_mask = np.ones(m, dtype=bool) if kept is None else as_array(kept, "kept").astype(bool)
    if kept_mask.shape != (m,):
        raise ValueError(f"kept: expected shape ({m},) to match boxes, got {kept_mask.shape}.")
    highlight = [] if highlight is None else [int(i) for i in highlight]
    if any(not 0 <= i < m for i in highlight):
        raise ValueError(f"highlight: expected crop indices in [0, {m - 1}], got {highlight}.")
    if labels is not None and len(labels) != len(highlight):
        raise ValueError(f"labels: expected one label per highlighted crop ({len(highlight)}), "
                         f"got {len(labels)}.")

    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    unit = max(1, round(min(img.size) / 250))
    special = set(highlight)
    for i in np.flatnonzero(~kept_mask):
        if i not in special:
            _dashed_rect(draw, _outline(arr[i]), (200, 200, 200, 150), unit, 4 * unit)
    for i in np.flatnonzero(kept_mask):
        if i not in special:
            draw.rectangle(_outline(arr[i]), outline=(255, 255, 255, 170), width=unit)
    out = Image.alpha_composite(base, layer)

    draw = ImageDraw.Draw(out)
    font = label_font(max(11, min(20, min(img.size) // 22)))
    palette = [hex_to_rgb(c) for c in class_colors(len(highlight))]
    for i, rgb in zip(highlight, palette):
        draw.rectangle(_outline(arr[i]), outline=rgb, width=3 * unit)
    texts = []
    for rank, i in enumerate(highlight):
        text = str(labels[rank]) if labels is not None else f"#{i}"
        texts.append(text if len(text) <= 28 else text[:27] + "...")
    for rgb, (text, tag) in zip(palette,
                                _label_boxes(draw, font, arr, highlight, texts, img.size, unit)):
        draw.rectangle(tag, fill=rgb)
        luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        left, top = draw.textbbox((0, 0), text, font=font)[:2]
        draw.text((tag[0] + 2 - left, tag[1] + 2 - top), text, font=font,
                  fill=(0, 0, 0) if luminance > 150 else (255, 255, 255))
    return out.convert("RGB")


def _label_boxes(draw, font, arr: np.ndarray, highlight: list[int], texts: list[str],
                 size: tuple[int, int], unit: int) -> list[tuple[str, tuple]]:
    """(text, tag box) per highlighted crop, tags overlapping no other tag: each label tries the
    four inside corners of its box, then just above and below it; a label with no room is
    shortened to its rank ("2"), which tries the same spots around the tags already placed."""

    def candidates(rank: int, text: str) -> np.ndarray:  # (6, 4) tag boxes
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x0, y0, x1, y1 = (float(v) for v in arr[highlight[rank]])
        o = 3 * unit
        corners = ((x0 + o, y0 + o), (x1 - o - tw, y0 + o), (x0 + o, y1 - o - th),
                   (x1 - o - tw, y1 - o - th), (x0, y0 - th - 1), (x0, y1 + 1))
        return np.array([(x, y, x + tw, y + th) for x, y in corners])

    bounds = (0, 0, *size)
    full = np.stack([candidates(r, t) for r, t in enumerate(texts)])  # (M, 6, 4)
    picks = place_labels(full, bounds=bounds)
    out: list[tuple[str, tuple] | None] = [
        None if p is None else (texts[r], tuple(full[r, p])) for r, p in enumerate(picks)]
    missing = [r for r, p in enumerate(picks) if p is None]
    if missing:
        placed = np.array([tag for _, tag in filter(None, out)]).reshape(-1, 4)
        short = np.stack([candidates(r, str(r + 1)) for r in missing])
        for j, p in enumerate(place_labels(short, obstacles=placed, bounds=bounds)):
            # Still no room: the number goes in its first spot (overlap beats losing it).
            out[missing[j]] = (str(missing[j] + 1), tuple(short[j, 0 if p is None else p]))
    return out


def crop_thumbnails(image: Image.Image, boxes, indices, size: int = 112) -> list[Image.Image]:
    """Cut crops out of an image for a gallery, each padded to a ``size`` x ``size`` square.

    ``boxes`` (M, 4) as in ``crop_view``; ``indices``: which crops, in order.
    """
    img = rgb_image(image)
    arr = _check_boxes(boxes, img.size)
    if int(size) < 1:
        raise ValueError(f"size: expected a positive integer, got {size}.")
    thumbs = []
    for i in indices:
        i = int(i)
        if not 0 <= i < arr.shape[0]:
            raise ValueError(f"indices: crop {i} out of range for {arr.shape[0]} boxes.")
        x0, y0, x1, y1 = (int(round(v)) for v in arr[i])
        crop = img.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
        thumbs.append(ImageOps.pad(crop, (int(size), int(size)), Image.BICUBIC, color="white"))
    return thumbs
