"""Fast CPU inference candidates at real size (random weights), used by benchmarks/encode.py.

Throughput ratios to fp32 eager are measured interleaved (A, B, A, B, ...) in one process, so a
shared machine's load slows every candidate alike; the load average is printed beside them.
Agreement is the worst cosine to the fp32 features over natural-looking images: the project's
example images (assets/examples/*.zip) and generated photos (gradients, textures, shapes), not
only noise. Random weights may quantise differently from trained ones: the cosine says how int8
behaves on these architectures, not on the released weights.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from core.models import load_encoder

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def natural_images(n_generated: int = 24, seed: int = 0) -> list[Image.Image]:
    """The example images plus generated photo-like ones (gradients, blurred shapes, texture)."""
    out = []
    for archive in sorted(EXAMPLES.glob("*.zip")):
        with zipfile.ZipFile(archive) as z:
            for name in sorted(z.namelist()):
                if name.lower().endswith((".jpg", ".jpeg", ".png")):
                    out.append(Image.open(io.BytesIO(z.read(name))).convert("RGB"))
    rng = np.random.default_rng(seed)
    for _ in range(n_generated):
        w, h = 320, 240
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy)[..., None]
        sky = (c0 * (1 - t) + c1 * t).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(sky)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(3, 8)):  # objects
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            box = [x0, y0, x0 + rng.integers(20, 160), y0 + rng.integers(20, 120)]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        grain = rng.normal(0, rng.uniform(2, 15), (h, w, 3))  # sensor noise / texture
        out.append(Image.fromarray((np.asarray(image) + grain).clip(0, 255).astype(np.uint8)))
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def candidates(key: str) -> dict:
    """name -> forward(pixels (B, 3, S, S)) -> (B, d), L2-normalised features."""
    fp32 = load_encoder(key, device="cpu")
    int8 = load_encoder(key, device="cpu", precision="int8")
    found = {
        "fp32 eager": lambda x: fp32.encode_pixels(x, batch_size=len(x)),
        "int8 dynamic": lambda x: int8.encode_pixels(x, batch_size=len(x)),
        "fp32 channels-last": lambda x: fp32.encode_pixels(
            x.contiguous(memory_format=torch.channels_last), batch_size=len(x)),
    }
    # channels-last only changes the patch-embedding conv's input layout (one layer of a ViT).
    return found


def bench_fast_paths(key: str, *, batch_size: int, repeats: int, threads: list[int]) -> list[dict]:
    """Interleaved throughput of each candidate and its worst cosine to fp32 on natural images."""
    fp32 = load_encoder(key, device="cpu")
    images = natural_images()
    pixels = torch.stack([fp32.preprocess(im) for im in images])  # (n, 3, S, S)
    timing = pixels[:batch_size]
    found = candidates(key)
    reference = found["fp32 eager"](pixels)
    default_threads = torch.get_num_threads()
    runs = [(name, t) for name in found for t in threads]
    times: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    loads = []
    for name, t in runs:  # warm-up
        torch.set_num_threads(t)
        found[name](timing)
    for _ in range(repeats):
        for name, t in runs:
            torch.set_num_threads(t)
            times[(name, t)].append(_timed(lambda fn=found[name]: fn(timing)))
            loads.append(os.getloadavg()[0])
    torch.set_num_threads(default_threads)
    base = times[("fp32 eager", max(threads))]
    cosines = {name: (found[name](pixels) * reference).sum(-1) for name in found}
    rows = []
    for name, t in runs:
        cos = cosines[name]
        ratio = np.median([b / a for a, b in zip(times[(name, t)], base)])
        rows.append({"model": key, "candidate": name, "threads": t,
                     "img_s": batch_size / min(times[(name, t)]), "speedup_median": ratio,
                     "speedup_best": min(base) / min(times[(name, t)]),
                     "worst_cos": float(cos.min()), "mean_cos": float(cos.mean()),
                     "n_images": len(images), "load": float(np.mean(loads))})
    return rows


def bench_compile(key: str, *, batch_size: int, repeats: int) -> dict:
    """torch.compile of the image tower: compile seconds, then interleaved speed vs eager."""
    fp32 = load_encoder(key, device="cpu")
    x = torch.stack([fp32.preprocess(im) for im in natural_images(4)][:batch_size])
    model = fp32.model.visual if hasattr(fp32.model, "visual") else fp32.model
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(x) if hasattr(fp32.model, "visual") else compiled(pixel_values=x)
    compile_s = time.perf_counter() - start

    def run(m):
        with torch.inference_mode():
            return m(x) if hasattr(fp32.model, "visual") else m(pixel_values=x)

    eager_t, comp_t = [], []
    for _ in range(repeats):
        eager_t.append(_timed(lambda: run(model)))
        comp_t.append(_timed(lambda: run(compiled)))
    return {"model": key, "compile_s": compile_s,
            "speedup_median": float(np.median([e / c for e, c in zip(eager_t, comp_t)])),
            "load": os.getloadavg()[0]}
