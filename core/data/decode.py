"""Image bytes to RGB pictures: the header checks that validate them, and full decoding.

Loading (``core.data.images``) opens only the image header (Pillow ``Image.open`` is lazy) through
``_open_image``: format allowlist, pixel count, size. Full decoding (``decode_image``) happens
later and only for images whose features are not cached yet, so a cached rerun never pays for it.
A bad image raises ``BadImageError`` with its display name and a human reason; ``decode_many``
turns those into ``SkippedFile`` records and goes on with the rest.

Limit (keyword option of ``load_image_set``, ``decode_image`` and ``decode_many``):

- ``max_pixels`` 89,478,485 (Pillow's default ``MAX_IMAGE_PIXELS``, ~89 M, e.g. 9459 x 9459).
  Pillow itself refuses images over twice its global limit before we see their size.

``SkippedFile`` is defined here, in the lowest layer, because decoding, zip reading
(``core.data.archives``) and loading (``core.data.images``) all report with it;
``core.data.images`` re-exports
every public name.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # annotations only: core.data.images imports this module
    from core.data.images import ImageItem

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 89_478_485
SNIFF_BYTES = 4096  # read before the rest of a file: enough for Pillow to name most formats
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"BM", "BMP")
)


class BadImageError(ValueError):
    """An image that cannot be used; ``name`` is the file's display name, ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True)
class SkippedFile:
    """A file left out, by display name, with a human reason; ``index`` is its input position
    when ``decode_many`` reports it."""

    name: str
    reason: str
    index: int | None = None


class DecodeResult(NamedTuple):
    """``images`` (RGB) of the items that decoded, in input order; ``failures`` for the rest."""

    images: list[Image.Image]
    failures: list[SkippedFile]


# ----------------------------------------------------------------------------- decoding


def _open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Header-only open with the format allowlist and our pixel limit, as ``BadImageError``."""
    if not data:
        raise BadImageError(name, "empty file")
    # Pillow warns between 1x and 2x its global limit; we enforce our own limit instead. (Before
    # Python 3.14, catch_warnings is not thread-safe: a race could at worst keep this one filter.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            got = f"{int(found.group(1)):,} pixels" if found else "the image"
            raise BadImageError(name, f"decompression bomb: {got} exceeds the "
                                      f"{_count(max_pixels)} pixel limit") from None
        except UnidentifiedImageError:
            raise BadImageError(name, _identify(data)) from None
        except Exception as exc:  # malformed headers raise many types; report, never crash
            raise BadImageError(name, f"unreadable image header ({exc})") from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise BadImageError(name, f"decompression bomb: {width}x{height} pixels exceeds the "
                                  f"{_count(max_pixels)} pixel limit")
    if width == 0 or height == 0:
        im.close()
        raise BadImageError(name, f"empty image ({width}x{height})")
    return im


def _sniff(head: bytes, name: str) -> None:
    """Raise ``BadImageError`` unless ``head`` (a file's first bytes) starts like an allowed format.

    The same signatures Pillow's PNG, JPEG, GIF, BMP and WEBP plugins accept, so nothing that
    ``_open_image`` would take is refused; called before a file or zip member is read whole.
    """
    if not head:
        raise BadImageError(name, "empty file")
    if any(head.startswith(magic) for magic, _ in _MAGIC) or (
            head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return
    raise BadImageError(name, _identify(head))


def _identify(data: bytes) -> str:
    """Why an allowlisted open failed: a disallowed format, a corrupt header, or not an image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return f"format {im.format} not allowed (allowed: {', '.join(ALLOWED_FORMATS)})"
        except Exception:
            pass
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return f"truncated or corrupt {fmt} header"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "truncated or corrupt WEBP header"
    return "not an image"


def decode_image(item: ImageItem, *, max_side: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode an item to an RGB ``PIL.Image``.

    EXIF orientation applied; GIF/WEBP first frame; CMYK, palette, 1-bit and grey converted;
    alpha (including palette transparency) composited on white; 16-bit scaled to 8 bits.
    ``max_side`` shrinks (never enlarges) so the longer side is at most that, using JPEG's
    DCT-domain reduction first (much faster than decoding full size). Raises ``BadImageError``.
    """
    im = _open_image(item.data, item.name, max_pixels)  # in memory: nothing to close
    try:
        if max_side is not None and im.format in ("JPEG", "MPO"):
            scale = max_side / max(im.size)
            if scale < 1:  # draft keeps both sides >= the request; thumbnail finishes the job
                im.draft(None, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        out = _to_rgb(im)
    except BadImageError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise BadImageError(item.name, _decode_reason(exc)) from None
    if max_side is not None and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return out


def decode_many(items: Iterable[ImageItem], *, max_side: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """Decode every item, skipping bad ones; each failure keeps its input ``index``."""
    images, failures = [], []
    for index, item in enumerate(items):
        try:
            images.append(decode_image(item, max_side=max_side, max_pixels=max_pixels))
        except BadImageError as exc:
            failures.append(SkippedFile(item.name, exc.reason, index))
    return DecodeResult(images, failures)


def _decode_reason(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower() or "broken data stream" in text or isinstance(exc, EOFError):
        return "truncated file"
    return f"cannot decode ({type(exc).__name__}: {text})"


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(im)
    if im.has_transparency_data:  # RGBA, LA, PA, P with transparency, RGB/L with a tRNS key
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grey to 8 bits by scaling the full range, never by clipping."""
    a = np.asarray(im)
    if im.mode.startswith("I;16") or (a.size and a.min() >= 0 and a.max() <= 65535):
        grey = (a.astype(np.uint32) * 255 + 32767) // 65535  # rounded: 65535 -> 255, 32768 -> 128
    else:  # signed or float data: stretch its own range
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        grey = np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")


def _count(n: int) -> str:
    return f"{n / 1e6:.0f} M" if n >= 10**6 else f"{n:,}"

