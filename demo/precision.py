"""The encoders' precision in the app: its default, the "Model precision" options, and the words
that say which precision each model of a Run ran in (notes, Compare tab).

The default on a CPU is "auto" (``core.config.APP_CPU_PRECISION``): per model the fastest path
whose measured worst cosine to the fp32 features reaches ``core.config.FAST_PATH_MIN_COSINE``,
exact fp32 for the others (``core.models.resolve_precision``). The options list exact fp32 first
and only the precisions that run on this machine (``core.models.precision_runs_here``).
"""

from __future__ import annotations

import torch

from core.config import APP_CPU_PRECISION, FAST_PATH_MIN_COSINE, ONNX_EXPORT_SECONDS, PRECISION
from core.models import get_spec, precision_runs_here, resolve_device

# The options, in the order the radio lists them, each with what was measured of it (speed-ups
# and worst cosines to fp32 at real size on the project's 2-core CPU, benchmarks/README.md,
# "Real-size CPU fast paths"; random weights; bf16 on a CPU: measured on an AMX CPU, "bf16 on a
# CPU with AMX"). bf16 has one label per device type.
LABELS = {
    "fp32": "fp32 (exact)",
    "auto": (f"auto: per model the fastest path at cosine ≥ {FAST_PATH_MIN_COSINE:g} to fp32, "
             "else fp32"),
    "int8": "int8 (torch): CLIP B/16 1.4x at cosine 0.9999, DINOv2-B 1.6x at 0.997",
    "onnx-int8": ("onnx-int8 (ONNX Runtime): CLIP B/16 3.5x at cosine 0.9998, DINOv2-B 2.2x "
                  f"at 0.9992; one-time export ~{ONNX_EXPORT_SECONDS} s per model"),
    "bf16": {"cpu": ("bf16 (CPU with native bf16): CLIP B/16 2.8x, DINOv2-B 3.0x, text 3.5x at "
                     "cosine 0.9999"),
             "cuda": "bf16 (GPU autocast; not measured here)"},
}


def app_precision() -> str:
    """The encoders' precision when the user picks none: ``APP_CPU_PRECISION`` ("auto") on a
    CPU, ``PRECISION`` (exact fp32) on a GPU, where "auto" would be fp32 anyway."""
    return PRECISION if torch.cuda.is_available() else APP_CPU_PRECISION


def precision_choices(device: str | torch.device | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs of the "Model precision" radio for ``device`` (default: the app's):
    exact fp32 first, then those of :data:`LABELS` that run here ("auto" only on a CPU, where it
    can pick a fast path; onnx-int8 only with onnxruntime installed; bf16 on a CPU only with
    native bf16)."""
    dev = resolve_device(device)
    out = []
    for value, label in LABELS.items():
        if value == "auto" and dev.type != "cpu":
            continue
        if isinstance(label, dict):
            label = label.get(dev.type)
        if label is not None and precision_runs_here(value, dev):
            out.append((label, value))
    return out


def precision_text(extraction) -> str:
    """Which precision each model of ``extraction`` ran in, e.g. "CLIP ViT-B/16 (OpenAI):
    onnx-int8 (auto); DINOv2 ViT-L/14: fp32 (auto)"; "" when it does not say (synthetic)."""
    asked = extraction.settings.precision
    tag = f" ({asked})" if asked == "auto" else ""
    return "; ".join(f"{get_spec(key).display_name}: {ran}{tag}"
                     for key, ran in extraction.precisions.items())
