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

import core.models.onnx_runtime as onnx_runtime
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


def _onnx_sessions(encoder, example, folder: Path, threads: int) -> dict:
    """ONNX Runtime sessions of the image tower: fp32, int8 per tensor and int8 per channel.

    Exported and quantised with the product's code (`core.models.onnx_runtime`, which the
    "onnx-int8" precision runs: the per-channel session here), once per folder. Empty when
    onnxruntime is missing.
    """
    try:
        onnx_runtime.require_onnxruntime()
    except ImportError as exc:
        print(f"ONNX Runtime candidates skipped: {exc}")
        return {}
    fp32_path = folder / "fp32.onnx"
    if not fp32_path.exists():
        seconds = onnx_runtime.export_image_tower(encoder, example, fp32_path)
        print(f"ONNX export: {seconds:.1f} s", flush=True)
    paths = {"ORT fp32": fp32_path}
    for name, per_channel in (("ORT int8 per tensor", False), ("ORT int8 per channel", True)):
        paths[name] = folder / f"int8_{'channel' if per_channel else 'tensor'}.onnx"
        if not paths[name].exists():
            onnx_runtime.quantize_image_tower(fp32_path, paths[name], per_channel=per_channel)
    found = {}
    for name, path in paths.items():
        forward = onnx_runtime.session_forward(onnx_runtime.ort_session(path, threads))
        found[name] = lambda x, f=forward: torch.nn.functional.normalize(f(x), dim=-1)
    return found


def candidates(key: str, example: torch.Tensor, *, names: set[str] | None = None,
               onnx_folder: Path | None = None, threads: int = 2) -> dict:
    """name -> forward(pixels (B, 3, S, S)) -> (B, d), L2-normalised features.

    ``names`` picks among "fp32 eager" (always), "int8 dynamic", "bf16" (precision "bf16": autocast
    over a bf16-weight twin, `core.models.bf16_cpu`), "fp32 channels-last", "torch.compile" and
    "onnx" (the ORT sessions, exported to ``onnx_folder``).
    """
    names = set(names or {"int8 dynamic", "bf16", "fp32 channels-last", "torch.compile", "onnx"})
    fp32 = load_encoder(key, device="cpu")
    found = {"fp32 eager": lambda x: fp32.encode_pixels(x, batch_size=len(x))}
    if "int8 dynamic" in names:
        int8 = load_encoder(key, device="cpu", precision="int8")
        found["int8 dynamic"] = lambda x: int8.encode_pixels(x, batch_size=len(x))
    if "bf16" in names:
        bf16 = load_encoder(key, device="cpu", precision="bf16")
        found["bf16"] = lambda x: bf16.encode_pixels(x, batch_size=len(x))
    if "fp32 channels-last" in names:
        # channels-last only changes the patch-embedding conv's input layout (one layer of a ViT).
        found["fp32 channels-last"] = lambda x: fp32.encode_pixels(
            x.contiguous(memory_format=torch.channels_last), batch_size=len(x))
    if "torch.compile" in names:
        compiled = torch.compile(onnx_runtime.GlobalImageForward(fp32).eval())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(example)
        print(f"torch.compile (inductor) first call: {time.perf_counter() - start:.1f} s",
              flush=True)

        def run_compiled(x):
            with torch.inference_mode():
                return torch.nn.functional.normalize(compiled(x), dim=-1)

        found["torch.compile"] = run_compiled
    if "onnx" in names and onnx_folder is not None:
        found.update(_onnx_sessions(fp32, example, onnx_folder, threads))
    return found


def bench_fast_paths(key: str, *, batch_size: int, repeats: int, threads: list[int],
                     names: set[str] | None = None, onnx_folder: Path | None = None) -> list[dict]:
    """Interleaved throughput of each candidate and its worst cosine to fp32 on natural images.

    ONNX Runtime sessions use ``max(threads)`` threads whatever the row's torch threads.
    """
    fp32 = load_encoder(key, device="cpu")
    images = natural_images()
    pixels = torch.stack([fp32.preprocess(im) for im in images])  # (n, 3, S, S)
    timing = pixels[:batch_size]
    found = candidates(key, timing, names=names, onnx_folder=onnx_folder, threads=max(threads))
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
    cosines = {name: (torch.cat([found[name](pixels[i:i + batch_size])  # batches: ORT memory
                                 for i in range(0, len(pixels), batch_size)]) * reference).sum(-1)
               for name in found}
    patch_cos = _patch_cosines(key, images, batch_size) if "bf16" in found else None
    rows = []
    for name, t in runs:
        cos = cosines[name]
        ratio = np.median([b / a for a, b in zip(times[(name, t)], base)])
        rows.append({"model": key, "candidate": name, "threads": t,
                     "img_s": batch_size / min(times[(name, t)]), "speedup_median": ratio,
                     "speedup_best": min(base) / min(times[(name, t)]),
                     "worst_cos": float(cos.min()), "mean_cos": float(cos.mean()),
                     "n_images": len(images), "load": float(np.mean(loads))})
        if name == "bf16" and patch_cos is not None:
            rows[-1].update(patch_worst_cos=float(patch_cos.min()),
                            patch_mean_cos=float(patch_cos.mean()))
    return rows


def _patch_cosines(key: str, images: list, batch_size: int) -> torch.Tensor | None:
    """Cosine of each bf16 patch feature to fp32 (DINO patch tokens, MaskCLIP dense), (N, h, w)."""
    fp32 = load_encoder(key, device="cpu")
    try:
        fp32._require_patches()
    except ValueError:
        return None
    bf16 = load_encoder(key, device="cpu", precision="bf16")
    return (fp32.encode_patches(images, batch_size=batch_size)
            * bf16.encode_patches(images, batch_size=batch_size)).sum(-1)
