"""Image overlays for the app: segmentation masks, their legend, side-by-side views, top-k.

Pure functions on PIL images, numpy arrays and tensors; no gradio here (STYLE.md rule 9). The
categorical palette lives here (`class_colors`) and `demo/plots.py` imports it, so a class has the
same colour in the embedding map, the segmentation overlay and its legend.
"""

from __future__ import annotations

import colorsys
import html
import re

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from core.pipeline import NOT_SEEN, UNLABELED

# Twenty hand-picked, well-separated hues (strong first, lighter companions second); classes beyond
# twenty get golden-angle hues. None of them is gray: gray means "unknown / unlabeled" in the app.
_BASE_COLORS = (
    "#1f6fb4", "#f07d14", "#2a9c3a", "#d12b2b", "#8a5cc2",
    "#8c5648", "#db6cbf", "#b7bb1f", "#17b3c7", "#3b3f9e",
    "#9cc4ea", "#ffbd7a", "#95db89", "#fc9a96", "#c7b2de",
    "#c99c91", "#f5bad5", "#dede8f", "#9ce0eb", "#6d8c4e",
)
UNKNOWN_COLOR = "#9e9e9e"
# "Not seen" (outside the model's centre crop: no prediction at all) is drawn as the image darkened
# under light diagonal stripes, a texture no class colour can be mistaken for.
NOT_SEEN_DARKEN = 0.4  # image brightness kept under the stripes
NOT_SEEN_STRIPE = (235, 235, 235)
NOT_SEEN_TEXT = "not seen (outside the model's crop)"
_HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_GOLDEN = 0.618033988749895


def class_colors(n: int) -> list[str]:
    """Return ``n`` distinct, deterministic hex colours; the first ``m`` never depend on ``n``.

    Class ``i`` always gets ``colors[i]`` (``"#rrggbb"``), whatever ``n`` is: the first twenty
    are a hand-picked categorical palette, the rest walk the hue circle by the golden angle.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}.")
    n = int(n)
    colors = list(_BASE_COLORS[:n])
    rgb = {hex_to_rgb(c) for c in colors}
    i = 0
    while len(colors) < n:
        # Golden-angle hue walk; saturation and value cycle so neighbours in hue still differ.
        # Up to 64 classes a candidate too close to an earlier colour (RGB distance < 32) is
        # skipped; beyond that the eye cannot separate them anyway, so only exact repeats are.
        hue = (0.07 + i * _GOLDEN) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, (0.85, 0.55, 0.7)[i % 3], (0.8, 0.95, 0.6)[i // 3 % 3])
        cand = (round(r * 255), round(g * 255), round(b * 255))
        i += 1
        if cand in rgb or (len(colors) < 64 and i < 10_000 and any(
                sum((p - q) ** 2 for p, q in zip(cand, o)) < 32**2 for o in rgb)):
            continue
        rgb.add(cand)
        colors.append("#{:02x}{:02x}{:02x}".format(*cand))
    return colors


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> ``(r, g, b)`` integers in [0, 255]."""
    if not isinstance(color, str) or not _HEX_RE.match(color):
        raise ValueError(f"color: expected a '#rrggbb' string, got {color!r}.")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def as_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - message path
        raise ValueError(f"{name}: expected an array or tensor, got {type(x).__name__}.") from exc


MIN_VIEW_SIDE = 480  # small images are enlarged for display so labels and overlays stay legible


def enlarged(image: Image.Image, resample) -> Image.Image:
    """``image`` scaled up so its longer side is at least :data:`MIN_VIEW_SIDE` (else as is)."""
    side = max(image.size)
    if side >= MIN_VIEW_SIDE:
        return image
    f = MIN_VIEW_SIDE / side
    return image.resize((round(image.width * f), round(image.height * f)), resample)


def rgb_image(image, name: str = "image") -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name}: expected a PIL.Image, got {type(image).__name__}.")
    return image.convert("RGB")


def segmentation_overlay(image: Image.Image, label_map, class_names: list[str], *,
                         alpha: float = 0.5, visible: set[int] | None = None,
                         colors: list[str] | None = None, outline: int = 0) -> Image.Image:
    """Blend a per-pixel class map over an image.

    Parameters
    ----------
    image : PIL.Image, any mode (converted to RGB)
    label_map : array or Tensor, shape (H, W), int
        Class index per pixel, ``-1`` = unlabeled (left as is), ``-2`` = not seen by the model
        (darkened and hatched, whatever ``alpha`` and ``visible``); resized with NEAREST to the
        image if needed.
    class_names : list of str, length K
    alpha : float in [0, 1], opacity of the class colour
    visible : set of int, optional
        Classes to paint; others stay transparent like unlabeled pixels (``None``: all).
    colors : list of str, optional, hex per class (default ``class_colors(K)``)
    outline : int, optional
        Width (pixels) of an opaque border in the pure class colour drawn inside each painted
        region: whatever the photo underneath, every region shows the exact legend colour.

    Returns
    -------
    overlay : PIL.Image, RGB, same size as ``image``
    """
    img = rgb_image(image)
    labels = as_array(label_map, "label_map")
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"label_map: expected a non-empty (H, W) array, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_map: expected integer class indices, got dtype {labels.dtype}.")
    k = len(class_names)
    if labels.min() < NOT_SEEN or labels.max() >= k:
        raise ValueError(f"label_map: expected values in [-1, {k - 1}] for {k} classes "
                         f"({UNLABELED} unlabeled, {NOT_SEEN} not seen), got "
                         f"[{labels.min()}, {labels.max()}]; pass the full class list.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}.")
    colors = class_colors(k) if colors is None else list(colors)
    if len(colors) < k:
        raise ValueError(f"colors: expected {k} colours (one per class), got {len(colors)}.")

    w, h = img.size
    if labels.shape != (h, w):
        # Mode "I" keeps -1 and large class ids; NEAREST never invents a class at a boundary.
        labels = np.asarray(
            Image.fromarray(labels.astype(np.int32), mode="I").resize((w, h), Image.NEAREST)
        )
    labels = labels.astype(np.int64)

    palette = np.array([hex_to_rgb(c) for c in colors[:k]] or [(0, 0, 0)], dtype=np.float32)
    paint = labels >= 0  # (H, W)
    if visible is not None:
        shown = np.zeros(max(k, 1), dtype=bool)
        ids = [int(c) for c in visible if 0 <= int(c) < k]
        shown[ids] = True
        paint &= shown[np.clip(labels, 0, None)]

    out = np.asarray(img, dtype=np.float32).copy()  # (H, W, 3)
    colour = palette[np.clip(labels, 0, None)]  # (H, W, 3)
    blended = (1.0 - alpha) * out + alpha * colour
    out[paint] = blended[paint]
    if outline > 0:
        edge = _edges(np.where(paint, labels, NOT_SEEN - 1), int(outline)) & paint
        out[edge] = colour[edge]
    _hatch(out, labels == NOT_SEEN)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def _edges(labels: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels within ``width`` of a pixel with another label (4-neighbourhood)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for _ in range(width):  # each pass grows the border one pixel into both regions
        grow = edge.copy()
        diff_x = labels[:, 1:] != labels[:, :-1]
        diff_y = labels[1:, :] != labels[:-1, :]
        grow[:, 1:] |= diff_x | edge[:, :-1]
        grow[:, :-1] |= diff_x | edge[:, 1:]
        grow[1:, :] |= diff_y | edge[:-1, :]
        grow[:-1, :] |= diff_y | edge[1:, :]
        edge = grow
    return edge


def _hatch(out: np.ndarray, where: np.ndarray) -> None:
    """Darken ``out`` (H, W, 3) float where ``where`` (H, W) and draw 45-degree light stripes."""
    if not where.any():
        return
    h, w = where.shape
    period = max(4, min(h, w) // 40)  # stripes stay visible on small and large images alike
    yy, xx = np.mgrid[0:h, 0:w]
    stripe = where & (((xx + yy) // period) % 3 == 0)  # one light stripe, two dark, per period
    out[where] *= NOT_SEEN_DARKEN
    out[stripe] = 0.5 * out[stripe] + 0.5 * np.asarray(NOT_SEEN_STRIPE, dtype=np.float32)


def legend_html(class_ids_present, class_names: list[str], colors: list[str] | None = None, *,
                not_seen: bool = False) -> str:
    """Small coloured chips, one per present class, as an HTML snippet (names are escaped).

    ``class_ids_present``: class indices in display order (duplicates and negative ids ignored);
    ``colors``: hex per class (default ``class_colors(K)``), validated since they go into CSS;
    ``not_seen``: add the hatched "not seen" chip (some pixels lie outside a model's crop).
    """
    k = len(class_names)
    colors = class_colors(k) if colors is None else list(colors)
    chips = []
    seen: set[int] = set()
    for raw in class_ids_present:
        c = int(raw)
        if c < 0 or c in seen:
            continue
        if c >= k or c >= len(colors):
            raise ValueError(f"class_ids_present: id {c} out of range for {k} classes.")
        seen.add(c)
        r, g, b = hex_to_rgb(colors[c])  # validates: a colour is never free text in CSS
        chips.append(_chip(f"rgb({r},{g},{b})", str(class_names[c])))
    if not chips:
        chips.append('<em style="margin-right:8px">no labelled pixels</em>')
    if not_seen:
        light = "rgb({},{},{})".format(*NOT_SEEN_STRIPE)
        dark = "rgb({0},{0},{0})".format(round(NOT_SEEN_DARKEN * 128))
        chips.append(_chip(f"repeating-linear-gradient(45deg,{light} 0 2px,{dark} 2px 6px)",
                           NOT_SEEN_TEXT))
    body = "".join(chips)
    return f'<div class="seg-legend" style="display:flex;flex-wrap:wrap">{body}</div>'


def _chip(background_css: str, text: str) -> str:
    """One legend entry: a 12 px swatch (``background_css`` is ours, never user text) + text."""
    return (
        '<span style="display:inline-flex;align-items:center;margin:2px 8px 2px 0;'
        'font-size:13px;white-space:nowrap">'
        '<span style="display:inline-block;width:12px;height:12px;border-radius:3px;'
        f'margin-right:4px;background:{background_css}"></span>'
        f"{html.escape(text)}</span>"
    )


def label_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def side_by_side(images: list[Image.Image], titles: list[str], *, pad: int = 8) -> Image.Image:
    """Place images in a row at a common height, each under a short title band.

    Returns one RGB image on a white background; ``titles`` has one string per image.
    """
    if not images or len(images) != len(titles):
        raise ValueError(f"images/titles: expected equal, non-zero lengths, got {len(images)} "
                         f"and {len(titles)}.")
    imgs = [rgb_image(im, "images[i]") for im in images]
    height = min(im.height for im in imgs)
    imgs = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in imgs]
    font_size = max(12, min(24, height // 20))
    band = font_size + 2 * pad
    width = sum(im.width for im in imgs) + pad * (len(imgs) + 1)
    canvas = Image.new("RGB", (width, height + band + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = label_font(font_size)
    x = pad
    for im, title in zip(imgs, titles):
        canvas.paste(im, (x, band))
        draw.text((x, pad), str(title), fill=(30, 30, 30), font=font)
        x += im.width + pad
    return canvas


def topk(probs, class_names: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-``k`` classes per row, best first.

    ``probs`` (N, K) -> N lists of ``min(k, K)`` pairs ``(class_name, probability)``.
    """
    p = probs if isinstance(probs, torch.Tensor) else torch.as_tensor(np.asarray(probs))
    if p.ndim != 2 or p.shape[1] != len(class_names) or p.shape[1] == 0:
        raise ValueError(f"probs: expected shape (N, {len(class_names)}) to match class_names, "
                         f"got {tuple(p.shape)}.")
    if int(k) < 1:
        raise ValueError(f"k: expected a positive integer, got {k}.")
    values, idx = torch.topk(p.detach().double().cpu(), min(int(k), p.shape[1]), dim=1)
    return [
        [(class_names[j], float(v)) for v, j in zip(vrow, irow)]
        for vrow, irow in zip(values.tolist(), idx.tolist())
    ]
