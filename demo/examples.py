"""Example image sets the project draws itself (no downloaded images), and their attributes.

``python -m demo.examples`` (re)writes ``assets/examples/``:

- ``shapes.zip``: circles, squares, triangles and stars on plain backgrounds, one folder per class
  (folders become labels in the app);
- ``scenes.zip``: simple drawn scenes (sunset, night sky, forest, beach), one folder per class;
- ``attributes.json``: LaZSL descriptors for those eight classes, the built-in fallback when the
  user uploads no attribute file.

Everything is drawn with Pillow from a fixed seed, so the files are reproducible byte for byte;
the committed copies are what the app shows as ``gr.Examples``.
"""

from __future__ import annotations

import io
import json
import math
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
SHAPES = ("circle", "square", "triangle", "star")
SCENES = ("sunset", "night sky", "forest", "beach")
PER_CLASS = 5
# Zip timestamps are fixed so regenerating gives identical bytes.
_ZIP_DATE = (2025, 1, 1, 0, 0, 0)

ATTRIBUTES: dict[str, list[str]] = {
    "circle": ["a round outline", "no corners", "a smooth curved edge",
               "the same width everywhere"],
    "square": ["four straight sides", "four right-angled corners", "equal sides",
               "a flat top edge"],
    "triangle": ["three straight sides", "three pointed corners", "a wide base",
                 "a pointed top"],
    "star": ["five pointed tips", "sharp spikes", "a small centre", "inward corners"],
    "sunset": ["an orange sky", "a sun low on the horizon", "warm red and purple colours",
               "a dark horizon line"],
    "night sky": ["a dark blue sky", "small white stars", "a pale moon", "little light"],
    "forest": ["many green trees", "pointed tree tops", "brown tree trunks", "a green ground"],
    "beach": ["blue sea water", "yellow sand", "a bright blue sky", "a flat horizon over water"],
}


def _rgb(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))


def _star(cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.42
        a = turn + i * math.pi / 5 - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(kind: str, rng: random.Random, size: int = 128) -> Image.Image:
    """One shape of ``kind`` (see ``SHAPES``) with random colours, size and place."""
    bg = _rgb(rng, 170, 255)
    fg = _rgb(rng, 0, 150)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.28, 0.42) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    turn = rng.uniform(-0.3, 0.3)
    if kind == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "square":
        pts = [(cx + r * math.cos(turn + k * math.pi / 2 + math.pi / 4),
                cy + r * math.sin(turn + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
        d.polygon(pts, fill=fg)
    elif kind == "triangle":
        pts = [(cx + r * math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2),
                cy + r * math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2))
               for k in range(3)]
        d.polygon(pts, fill=fg)
    elif kind == "star":
        d.polygon(_star(cx, cy, r, turn), fill=fg)
    else:
        raise ValueError(f"kind: expected one of {SHAPES}, got {kind!r}.")
    return im


def _vertical_gradient(size, top, bottom) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size)
    d = ImageDraw.Draw(im)
    for y in range(h):
        t = y / max(1, h - 1)
        d.line((0, y, w, y), fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return im


def draw_scene(kind: str, rng: random.Random, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A simple drawn scene of ``kind`` (see ``SCENES``)."""
    w, h = size
    horizon = rng.uniform(0.55, 0.7) * h
    if kind == "sunset":
        im = _vertical_gradient(size, (110 + rng.randint(0, 40), 40, 120), (250, 140, 40))
        d = ImageDraw.Draw(im)
        r, cx = rng.uniform(14, 24), rng.uniform(0.25, 0.75) * w
        d.ellipse((cx - r, horizon - r, cx + r, horizon + r), fill=(255, 220, 90))
        d.rectangle((0, horizon, w, h), fill=(50, 25, 40))
    elif kind == "night sky":
        im = _vertical_gradient(size, (5, 10, 40), (20, 30, 80))
        d = ImageDraw.Draw(im)
        for _ in range(rng.randint(25, 45)):
            x, y, s = rng.uniform(0, w), rng.uniform(0, horizon), rng.choice((1, 1, 2))
            d.ellipse((x, y, x + s, y + s), fill=(255, 255, 235))
        mx, my = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.35) * h
        d.ellipse((mx - 10, my - 10, mx + 10, my + 10), fill=(235, 235, 210))
        d.rectangle((0, horizon + 10, w, h), fill=(10, 15, 20))
    elif kind == "forest":
        im = _vertical_gradient(size, (150, 200, 230), (200, 225, 235))
        d = ImageDraw.Draw(im)
        d.rectangle((0, horizon, w, h), fill=(60, 110, 40))
        for _ in range(rng.randint(7, 11)):
            x, th = rng.uniform(0, w), rng.uniform(0.35, 0.6) * h
            base = horizon + rng.uniform(0, 0.2) * h
            d.rectangle((x - 2, base - 6, x + 2, base + 6), fill=(100, 60, 30))
            green = (20 + rng.randint(0, 40), 90 + rng.randint(0, 50), 30)
            d.polygon([(x, base - th), (x - th / 3, base - 4), (x + th / 3, base - 4)], fill=green)
    elif kind == "beach":
        im = _vertical_gradient(size, (90, 160, 235), (170, 210, 245))
        d = ImageDraw.Draw(im)
        sea = horizon - rng.uniform(0.15, 0.25) * h
        d.rectangle((0, sea, w, horizon), fill=(30, 100 + rng.randint(0, 40), 170))
        d.polygon([(0, horizon), (w, horizon - rng.uniform(0, 10)), (w, h), (0, h)],
                  fill=(235, 210, 150))
        sx = rng.uniform(0.1, 0.9) * w
        d.ellipse((sx - 9, 10, sx + 9, 28), fill=(255, 245, 170))
    else:
        raise ValueError(f"kind: expected one of {SCENES}, got {kind!r}.")
    return im


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def example_zip(kind: str, *, per_class: int = PER_CLASS, seed: int = 0) -> bytes:
    """Bytes of a zip with one folder per class ("shapes" or "scenes")."""
    if kind == "shapes":
        classes, draw = SHAPES, draw_shape
    elif kind == "scenes":
        classes, draw = SCENES, draw_scene
    else:
        raise ValueError(f"kind: expected 'shapes' or 'scenes', got {kind!r}.")
    rng = random.Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for cls in classes:
            folder = cls.replace(" ", "_")
            for i in range(per_class):
                info = zipfile.ZipInfo(f"{kind}/{folder}/{folder}_{i + 1:02d}.png", _ZIP_DATE)
                zf.writestr(info, _png(draw(cls, rng)))
    return buf.getvalue()


def example_paths() -> dict[str, Path]:
    """Where the committed example files live."""
    return {
        "shapes": EXAMPLES_DIR / "shapes.zip",
        "scenes": EXAMPLES_DIR / "scenes.zip",
        "attributes": EXAMPLES_DIR / "attributes.json",
    }


def write_examples(out_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """(Re)write the example zips and attribute file into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("shapes", "scenes"):
        path = out_dir / f"{kind}.zip"
        path.write_bytes(example_zip(kind))
        written.append(path)
    path = out_dir / "attributes.json"
    path.write_text(json.dumps(ATTRIBUTES, indent=1) + "\n", encoding="utf-8")
    written.append(path)
    return written


def example_rows() -> list[list]:
    """``gr.Examples`` rows: [[zip path], class list text] for each example set present."""
    paths = example_paths()
    rows = []
    for kind, classes in (("shapes", SHAPES), ("scenes", SCENES)):
        if paths[kind].is_file():
            rows.append([[str(paths[kind])], "\n".join(classes)])
    return rows


if __name__ == "__main__":
    for p in write_examples():
        print(f"wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")
