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


def natural_images(n_generated: int = 24, seed: int = 0, *,
                   examples: bool = True) -> list[Image.Image]:
    """The example images (unless ``examples=False``) plus generated photo-like ones
    (gradients, blurred shapes, texture)."""
    out = []
    for archive in sorted(EXAMPLES.glob("*.zip")) if examples else []:
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


def _openvino_models(encoder, example: torch.Tensor, names: set[str], threads: int) -> dict:
    """OpenVINO CPU models of the image tower, those of ``names`` (`OPENVINO_NAMES`).

    ``ov.convert_model`` traces the same global forward as the ORT export (dynamic batch).
    "fp32" and "bf16" compile it with that INFERENCE_PRECISION_HINT (bf16 is OpenVINO's own
    default on AMX CPUs, so fp32 must be asked for); "int8 weights" is nncf's weights-only int8
    (``compress_weights``, INT8_ASYM, per channel; the CPU plugin's DYNAMIC_QUANTIZATION_GROUP_SIZE
    defaults to 32, so those layers also quantise activations at run time); "int8" is nncf's
    static post-training quantisation (``quantize``, transformer preset: int8 activations and
    weights, VNNI / AMX int8 kernels), calibrated on 32 generated images disjoint from the
    cosine set. The int8 models compile with the f32 hint, so only int8 differs from "fp32".
    PERFORMANCE_HINT LATENCY: one stream with all ``threads``, the thread count the torch and
    ORT candidates get (THROUGHPUT, streams of one thread, was faster only under load, where
    one thread straggles less: benchmarks/README.md). Empty, with one printed line, when
    openvino (or nncf, for the int8 ones) is missing.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        print(f"OpenVINO candidates skipped: {exc} (pip install openvino)")
        return {}
    start = time.perf_counter()
    model = ov.convert_model(onnx_runtime.GlobalImageForward(encoder).eval(),
                             example_input=example)
    side = example.shape[-1]
    model.reshape([-1, 3, side, side])  # static image size, dynamic batch
    version = ov.__version__.split("-")[0]
    print(f"OpenVINO {version} convert_model: {time.perf_counter() - start:.1f} s", flush=True)
    models = {"openvino fp32": (model, "f32"), "openvino bf16": (model, "bf16")}
    if names & {"openvino int8", "openvino int8 weights"}:
        try:
            import nncf
        except ImportError as exc:
            print(f"OpenVINO int8 candidates skipped: {exc} (pip install nncf)")
        else:
            if "openvino int8 weights" in names:
                start = time.perf_counter()
                models["openvino int8 weights"] = (nncf.compress_weights(model.clone()), "f32")
                print(f"nncf {nncf.__version__} compress_weights: "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
            if "openvino int8" in names:
                calibration = torch.stack([encoder.preprocess(im) for im in natural_images(
                    32, seed=1, examples=False)])  # (32, 3, S, S), not in the cosine set
                start = time.perf_counter()
                quantised = nncf.quantize(
                    model.clone(), nncf.Dataset([c[None].numpy() for c in calibration]),
                    model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
                models["openvino int8"] = (quantised, "f32")
                print(f"nncf {nncf.__version__} quantize (32 calibration images): "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
    core = ov.Core()
    found = {}
    for name in (n for n in models if n in names):
        model, precision = models[name]
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY"})

        def forward(x, c=compiled):
            features = torch.from_numpy(c(x.detach().float().contiguous().numpy())[0])
            return torch.nn.functional.normalize(features, dim=-1)

        found[name] = forward
    return found


OPENVINO_NAMES = ("openvino fp32", "openvino bf16", "openvino int8 weights", "openvino int8")


def candidates(key: str, example: torch.Tensor, *, names: set[str] | None = None,
               onnx_folder: Path | None = None, threads: int = 2) -> dict:
    """name -> forward(pixels (B, 3, S, S)) -> (B, d), L2-normalised features.

    ``names`` picks among "fp32 eager" (always), "int8 dynamic", "bf16" (precision "bf16": autocast
    over a bf16-weight twin, `core.models.bf16_cpu`), "fp32 channels-last", "torch.compile",
    "onnx" (the ORT sessions, exported to ``onnx_folder``), the `OPENVINO_NAMES` and "openvino"
    (all of them).
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
    wanted_ov = set(OPENVINO_NAMES) if "openvino" in names else names & set(OPENVINO_NAMES)
    if wanted_ov:
        found.update(_openvino_models(fp32, example, wanted_ov, threads))
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
