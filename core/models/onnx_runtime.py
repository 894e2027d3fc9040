"""Precision "onnx-int8": the global image forward in ONNX Runtime with int8 weights (issue 12).

The image tower's global forward, pixels (B, 3, S, S) -> features (B, d), is exported once with
``torch.onnx.export(dynamo=True)`` (dynamic batch), its MatMul / Gemm weights are quantised to
int8 with one scale per output channel (ORT's dynamic quantisation: activations are quantised at
run time), and the result is kept on disk and run with an ``onnxruntime.InferenceSession``.
Measured on the real-size architectures (benchmarks/README.md, "torch.compile and ONNX
Runtime"): the only candidate at a worst cosine >= 0.999 to fp32 on both CLIP ViT-B/16 (0.9998)
and DINOv2-B (0.9992), 1.5-3.3x faster on the project's 2-core CPU.

Only the global image features go through ONNX Runtime: those of `Encoder.encode_images`,
`encode_pixels` and `encode_crops` (LaZSL's crops are global features of crops). Patch tokens
(DINO), MaskCLIP dense features and the text tower stay on the exact torch fp32 model of the
same encoder; they are still cached under the "onnx-int8" key (the precision is part of every
cache key), so they are recomputed once rather than shared with fp32 runs.

On disk: ``<feature cache dir>/onnx/<model_key(spec, "onnx-int8")>-ort<version>/image_int8.onnx``
(model identity, precision and onnxruntime version; written to a temporary file and renamed, so
a crash or a concurrent process never leaves a half-written model). The folder lies beside the
feature entries, outside what the cache's size cap counts and evicts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from core.config import ONNX_EXPORT_SECONDS

PRECISION = "onnx-int8"
# Pinned in requirements.txt; onnxscript is what torch's dynamo exporter writes ONNX with.
PIP_COMMAND = "pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2"
FILE_NAME = "image_int8.onnx"

logger = logging.getLogger(__name__)


def require_onnxruntime():
    """The ``onnxruntime`` module, or ImportError naming the pip command when it (or onnx) is
    missing."""
    try:
        import onnx  # noqa: F401  (quantize_dynamic reads and writes ONNX protos with it)
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"precision {PRECISION!r} needs ONNX Runtime and onnx, which are not installed "
            f"({exc}); install them with `{PIP_COMMAND}`, or pick precision 'fp32' or 'int8'."
        ) from exc
    return onnxruntime


def available() -> bool:
    """Whether onnxruntime and onnx import here (what precision "onnx-int8" needs). Not cached:
    an import that failed once is retried, and tests hide the modules."""
    try:
        require_onnxruntime()
    except ImportError:
        return False
    return True


class GlobalImageForward(torch.nn.Module):
    """An encoder's global image forward as a module, for torch.onnx.export / torch.compile."""

    def __init__(self, encoder):
        super().__init__()
        self.model = encoder.model  # registered, so the exporter sees the weights
        self.forward_global = encoder._forward_global

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, d), not normalised
        return self.forward_global(x)


def export_image_tower(encoder, example: Tensor, path: str | os.PathLike) -> float:
    """Export ``encoder``'s global image forward to ONNX at ``path`` (dynamic batch, weights
    inside the file); returns the seconds it took. ``example``: (B >= 2, 3, S, S) float."""
    start = time.perf_counter()
    # external_data=False: one self-contained file (ViT-B is 345 MB, far under ONNX's 2 GB
    # limit) that can be renamed into place. input name "pixels" is what `session_forward` feeds.
    torch.onnx.export(GlobalImageForward(encoder).eval(), (example,), str(path), dynamo=True,
                      input_names=["pixels"], output_names=["features"], external_data=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    return time.perf_counter() - start


def quantize_image_tower(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *,
                         per_channel: bool = True) -> None:
    """ORT dynamic int8 quantisation of an exported tower (MatMul / Gemm weights, QInt8).

    ``per_channel=True`` (one scale per output channel) is what passes the 0.999 bar on
    DINOv2-B (0.9992; per tensor 0.9988, benchmarks/README.md).
    """
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8,
                     per_channel=per_channel)


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU InferenceSession of ``path`` with ``threads`` intra-op threads (default: torch's)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Spinning worker threads steal the cores of a shared machine (ORT fp32 measured 0.6x torch
    # with spinning on, under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_forward(session):
    """``forward(pixels (B, 3, S, S) float) -> (B, d)`` float32 tensor (not normalised)."""
    def forward(x: Tensor) -> Tensor:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {"pixels": pixels})[0])

    return forward


def onnx_path(spec) -> Path:
    """Where the int8 tower of ``spec`` is kept: see the module docstring."""
    ort = require_onnxruntime()
    from core.pipeline.cache import default_cache_dir, model_key  # deferred: pipeline uses models

    folder = f"{model_key(spec, PRECISION)}-ort{ort.__version__}"
    return default_cache_dir() / "onnx" / folder / FILE_NAME


def tower_on_disk(spec) -> bool:
    """Whether the int8 tower of ``spec`` is already on disk (False without onnxruntime)."""
    try:
        return onnx_path(spec).is_file()
    except ImportError:
        return False


def export_note(spec) -> str:
    """What a user is told while the tower of ``spec`` is exported for the first time."""
    return (f"preparing the int8 ONNX model of {spec.display_name} "
            f"(one time, ~{ONNX_EXPORT_SECONDS} s)")


def build_int8_tower(encoder, path: str | os.PathLike) -> float:
    """Export and quantise ``encoder``'s image tower to ``path`` atomically; returns seconds.

    The fp32 export lives in a temporary folder; the int8 model is written beside ``path`` under
    a temporary name and renamed over it (``os.replace``), so readers see all or nothing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"precision {PRECISION!r} keeps its ONNX model in {path.parent}, which cannot be "
            f"created ({exc}); set FUSIONLAB_CACHE_DIR to a writable folder."
        ) from exc
    side = encoder.spec.image_size
    # Batch 2, not 1: the exporter would specialise a batch of one and drop the dynamic axis.
    example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusionlab-onnx-") as scratch:
        fp32_path = Path(scratch) / "fp32.onnx"
        export_image_tower(encoder, example, fp32_path)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
        os.close(handle)
        try:
            quantize_image_tower(fp32_path, tmp, per_channel=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return time.perf_counter() - start


def onnx_int8_forward(encoder):
    """The global forward of ``encoder`` (an fp32 CPU encoder) through its cached int8 tower.

    Builds the tower on first use (36-39 s at real size on 2 cores, once per model and
    onnxruntime version), then opens it; rebuilds a file ORT cannot open. Raises ImportError
    with the pip command without onnxruntime.
    """
    path = onnx_path(encoder.spec)
    if not path.exists():
        build_int8_tower(encoder, path)
        return session_forward(ort_session(path))
    try:
        session = ort_session(path)
    except Exception as exc:  # noqa: BLE001  ORT's load errors (InvalidProtobuf, Fail, ...)
        # derive from Exception only. A file that ORT cannot open (damaged on disk, written by
        # hand) is rebuilt once; an error the second time is raised as it is.
        logger.warning("rebuilding the unreadable ONNX model %s (%s)", path, exc)
        path.unlink(missing_ok=True)
        build_int8_tower(encoder, path)
        session = ort_session(path)
    return session_forward(session)
