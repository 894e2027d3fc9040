"""Loading models: weights from the Hugging Face Hub (or its local cache), once per process.

    >>> from core.models import load_encoder
    >>> clip = load_encoder("clip-vit-b16")                     # doctest: +SKIP
    >>> img = clip.encode_images(images)                        # (N, 512), unit norm
    >>> txt = clip.encode_sentences(["a photo of a cat."])      # (1, 512), unit norm
    >>> dino = load_encoder("dinov2-base")                      # doctest: +SKIP
    >>> patches = dino.encode_patches(images)                   # (N, 16, 16, 768)

Weights come from the Hugging Face Hub on the user's machine (`core.models.hub`): when they are
not cached and the Hub cannot be reached, `load_encoder` raises `WeightsUnavailableError` within
seconds, with the fix. `download_models` pre-fetches them (``python -m core download KEY ...``).
On Hugging Face Spaces, list the same files under ``preload_from_hub:`` in the README front matter
so they are baked into the image at build time (`preload_from_hub_lines` writes those lines).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import pickle
import threading
import warnings

import torch
from safetensors import SafetensorError

import core.models.onnx_runtime as onnx_runtime
from core.config import AUTO_CPU_PRECISIONS, FAST_PATH_MIN_COSINE
from core.models.bf16_cpu import bf16_twin
from core.models.encoders import Encoder, OpenClipEncoder, TransformersEncoder
from core.models.hub import (
    INCOMPLETE,
    TOKENIZER_FILES,
    FileNeed,
    cached_path,
    checkpoint_does_not_fit,
    ensure_weights,
    files_needed,
    hf_cache_dir,
    unavailable,
)
from core.models.onnx_runtime import PRECISION as ONNX_INT8
from core.models.onnx_runtime import onnx_int8_forward
from core.models.registry import ModelSpec, get_spec

__all__ = [
    "load_encoder", "download_models", "preload_from_hub_lines", "resolve_device", "PRECISIONS",
    "check_precision", "resolve_precision", "cpu_has_fast_bf16", "precision_runs_here",
    "one_time_setup",
]

logger = logging.getLogger(__name__)

# Encoder precisions and the devices they run on. "fp32" is exact and the default; "int8"
# (Linear layers dynamically quantised) is a fast CPU path, see benchmarks/README.md; the half
# precisions autocast on CUDA. "bf16" also runs on a CPU: autocast over a twin with bf16 matmul
# weights (`core.models.bf16_cpu`), fast only where the CPU has bf16 matrix instructions
# (`cpu_has_fast_bf16`: AMX or AVX-512 BF16; without them it was 0.6x fp32 on a 2-core CPU).
# "auto" is one of the others, chosen per model by `resolve_precision`.
# "onnx-int8" runs the global image forward in ONNX Runtime with per-channel int8 weights
# (`core.models.onnx_runtime`; needs the optional onnxruntime and onnx).
PRECISIONS = {"fp32": ("cpu", "cuda", "mps"), "auto": ("cpu", "cuda", "mps"), "int8": ("cpu",),
              "bf16": ("cpu", "cuda"), "fp16": ("cuda",), "onnx-int8": ("cpu",)}

_LOADED: dict[tuple[ModelSpec, str], Encoder] = {}  # shared read-only models, never user data
_LOADED_FAST: dict[tuple[ModelSpec, str, str], Encoder] = {}  # their non-fp32 twins
# One lock per (model, device[, precision]) being built, so that a second caller of the same one
# (a Run while the start-up warm-up exports its ONNX model) waits for it instead of building it
# twice, while other models load meanwhile. _LOAD_LOCK only guards the lock table.
_LOAD_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple, threading.Lock] = {}
# What reading a damaged checkpoint file raises (torch.load, safetensors).
_UNREADABLE = (OSError, RuntimeError, ValueError, EOFError, SafetensorError, pickle.UnpicklingError)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else cuda, then mps, then cpu."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_encoder(
    key: str, *, device: str | torch.device | None = None, precision: str = "fp32"
) -> Encoder:
    """Load (once per process, device and precision) the encoder of registry entry ``key``.

    ``precision``: "fp32" (exact, default), "int8" (CPU: every ``nn.Linear`` dynamically
    quantised to int8, `torch.ao.quantization.quantize_dynamic`; opt-in: its speed and cosine
    to fp32 are measured by ``benchmarks/encode.py --fast-paths``), "bf16" (autocast; on a CPU
    over a twin with bf16 matmul weights, `core.models.bf16_cpu`, fast where
    `cpu_has_fast_bf16`), "fp16" (CUDA autocast), "auto" (per model, see `resolve_precision`;
    the encoder returned says which),
    "onnx-int8" (CPU: global image features through ONNX Runtime with per-channel int8 weights,
    exported once and kept on disk; patches, dense features and text stay torch fp32; see
    `core.models.onnx_runtime`).
    Features of different precisions are cached apart.

    Raises
    ------
    ValueError
        Unknown key (the message lists the valid ones), or a precision the device cannot run.
    ImportError
        "onnx-int8" without onnxruntime / onnx installed (the message names the pip command).
    WeightsUnavailableError
        Weights not cached and not downloadable now; raised within seconds, never replaced by
        random weights.
    """
    spec = get_spec(key)
    dev = resolve_device(device)
    check_precision(precision, dev)
    precision = resolve_precision(spec, precision, dev)
    with _build_lock((spec, str(dev))):
        encoder = _LOADED.get((spec, str(dev)))
        if encoder is None:
            encoder = _build(spec, dev)
            _LOADED[(spec, str(dev))] = encoder
    if precision == "fp32":
        return encoder
    with _build_lock((spec, str(dev), precision)):
        fast = _LOADED_FAST.get((spec, str(dev), precision))
        if fast is None:
            fast = _with_precision(encoder, precision)
            _LOADED_FAST[(spec, str(dev), precision)] = fast
    return fast


def _build_lock(key: tuple) -> threading.Lock:
    with _LOAD_LOCK:
        return _BUILD_LOCKS.setdefault(key, threading.Lock())


def one_time_setup(key: str | ModelSpec, precision: str,
                   device: str | torch.device | None = None) -> str | None:
    """What loading ``key`` in ``precision`` on ``device`` must do once before its first forward,
    in words for a progress line, or None when nothing slow is pending: "onnx-int8" (also as
    "auto" resolves it) whose int8 ONNX model is neither loaded nor on disk yet needs its export
    and quantisation (``core.models.onnx_runtime``, ~40 s at real size)."""
    spec = get_spec(key)
    dev = resolve_device(device)
    if resolve_precision(spec, precision, dev) != ONNX_INT8:
        return None
    if (spec, str(dev), ONNX_INT8) in _LOADED_FAST or onnx_runtime.tower_on_disk(spec):
        return None
    return onnx_runtime.export_note(spec)


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError unless ``precision`` is one of `PRECISIONS` and runs on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}.")
    if device.type not in PRECISIONS[precision]:
        fits = [p for p, devices in PRECISIONS.items() if device.type in devices]
        raise ValueError(
            f"precision {precision!r} runs on {' / '.join(PRECISIONS[precision])}, not on "
            f"{device.type}; pick one of {fits} for this device."
        )


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX tiles or AVX-512 BF16), per torch.

    There bf16 matmuls run several times faster than fp32 (benchmarks/README.md); without them
    bf16 has no native instructions and runs slower than fp32. Probed once per process.
    """
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe is not None and bool(probe()) for probe in probes)


def resolve_precision(key: str | ModelSpec, precision: str,
                      device: str | torch.device | None = None) -> str:
    """The precision model ``key`` really runs in for ``precision`` on ``device``.

    "auto" on a CPU is the first of ``core.config.AUTO_CPU_PRECISIONS`` (fastest first: "bf16",
    "onnx-int8", "int8") that runs here (`precision_runs_here`) and whose measured worst cosine
    to fp32 (``ModelSpec.worst_cos``) reaches ``core.config.FAST_PATH_MIN_COSINE``; "fp32" when
    none does (unmeasured models) and on every other device. Every other precision is returned
    as given.
    """
    if precision != "auto":
        return precision
    if resolve_device(device).type != "cpu":
        return "fp32"
    spec = get_spec(key)
    for candidate in AUTO_CPU_PRECISIONS:
        measured = spec.worst_cos(candidate)
        if measured is not None and measured >= FAST_PATH_MIN_COSINE \
                and precision_runs_here(candidate, "cpu"):
            return candidate
    return "fp32"


def precision_runs_here(precision: str, device: str | torch.device | None = None) -> bool:
    """Whether ``precision`` can run on ``device`` in this process: the device table
    (`PRECISIONS`), plus a CPU with native bf16 for "bf16" on a CPU (bf16 autocast without it
    was 0.6x fp32, benchmarks/README.md) and onnxruntime + onnx installed for "onnx-int8"."""
    dev = resolve_device(device)
    if dev.type not in PRECISIONS.get(precision, ()):
        return False
    if precision == "bf16" and dev.type == "cpu":
        return cpu_has_fast_bf16()
    if precision == ONNX_INT8:
        return onnx_runtime.available()
    return True


def _with_precision(encoder: Encoder, precision: str) -> Encoder:
    """A twin of the fp32 ``encoder`` (same preprocessing and tokenizer) in ``precision``."""
    twin = copy.copy(encoder)  # shallow: shares spec, tokenizer; gets its own model and counter
    twin.precision = precision
    twin.n_forward = 0
    if precision == "int8":
        # A quantised copy: the fp32 model stays exact for fp32 callers. Only nn.Linear is
        # swapped (exact type match), so MultiheadAttention's packed in-projection and its
        # out_proj stay fp32 (the MaskCLIP dense path reads their weights).
        # torch.ao.quantization warns that it moves to torchao (not a dependency here); the
        # eager dynamic path still works in torch 2.14 and is what benchmarks/encode.py measures.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            # ResNet CLIP's attention pool reads its projections' .weight / .bias tensors
            # directly (open_clip's modified_resnet), which a quantised Linear does not have.
            names = {name for name, m in encoder.model.named_modules()
                     if type(m) is torch.nn.Linear and "attnpool" not in name.split(".")}
            twin.model = torch.ao.quantization.quantize_dynamic(
                encoder.model, names, dtype=torch.qint8
            )
    elif precision == "bf16" and encoder.device.type == "cpu":
        # CUDA autocasts the fp32 model itself; on a CPU that is slow for open_clip's attention,
        # so autocast runs over a bf16 twin (see core.models.bf16_cpu).
        if not cpu_has_fast_bf16():
            _warn_slow_bf16()
        twin.model = bf16_twin(encoder.model)
    elif precision == ONNX_INT8:
        # Only the global forward is swapped (an instance attribute shadows the method); the
        # twin shares the exact fp32 model for patches, dense features and text.
        twin._forward_global = onnx_int8_forward(encoder)
    return twin


@functools.cache  # once per process
def _warn_slow_bf16() -> None:
    logger.warning(
        "precision 'bf16' on a CPU without AMX or AVX-512 BF16: bf16 matmuls have no native "
        "instructions there and run slower than fp32; pick 'fp32' (exact) or 'int8' on this "
        "machine.")


def download_models(keys: list[str]) -> list[str]:
    """Pre-fetch the weights of ``keys`` into the Hugging Face cache (``python -m core download``).

    Returns the local paths of the fetched files, in order. Raises `WeightsUnavailableError`
    (fast) when the Hub is unreachable or a gated repo refuses access. For a Space, prefer
    ``preload_from_hub`` in the README front matter (see `preload_from_hub_lines`).
    """
    specs = [get_spec(k) for k in keys]  # validate every key before downloading anything
    paths: list[str] = []
    for spec in specs:
        if spec.random_init:
            continue
        _, found = ensure_weights(spec)
        paths.extend(found.values())
    return paths


def preload_from_hub_lines(keys: list[str]) -> list[str]:
    """``preload_from_hub`` entries for a Space README (``repo file`` or ``repo`` per line)."""
    lines: list[str] = []
    for spec in (get_spec(k) for k in keys):
        for need in files_needed(spec):
            whole_repo = spec.library == "transformers" or need.repo == spec.tokenizer_repo
            line = need.repo if whole_repo else f"{need.repo} {need.alternatives[0]}"
            if line not in lines:
                lines.append(line)
    return lines


# ----------------------------------------------------------------------------------- building
def _build(spec: ModelSpec, device: torch.device) -> Encoder:
    cache_dir = None
    paths: dict[str, str] = {}
    if not spec.random_init:
        cache_dir, paths = ensure_weights(spec)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-init entries are reproducible
            if spec.library == "open_clip":
                model, tokenizer_factory = _build_open_clip(spec, cache_dir, paths)
            else:
                model = _build_transformers(spec, cache_dir)
    except (OSError, SafetensorError) as exc:  # in the cache but incomplete: a missing shard,
        if spec.random_init:  # a truncated .safetensors (SafetensorError is not an OSError)
            raise
        raise unavailable(spec, cache_dir, f"{INCOMPLETE} ({exc})") from exc
    model = model.to(device).eval().requires_grad_(False)
    if spec.library == "open_clip":
        return OpenClipEncoder(spec, model, device, tokenizer_factory)
    return TransformersEncoder(spec, model, device)


def _build_open_clip(spec: ModelSpec, cache_dir: str | None, paths: dict[str, str]):
    import open_clip

    arch = spec.arch_config if spec.arch_config is not None else (
        open_clip.get_model_config(spec.model_id) or {})
    if arch.get("embed_dim", spec.output_dim) != spec.output_dim:
        raise ValueError(
            f"registry entry '{spec.key}' disagrees with its model (output_dim: spec "
            f"{spec.output_dim} vs model {arch['embed_dim']})."
        )
    weights = next(iter(paths.values()), None)  # the first need is the checkpoint
    if spec.arch_config is not None:
        cfg = copy.deepcopy(dict(spec.arch_config))
        model_cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
        model = model_cls(**cfg, quick_gelu=spec.quick_gelu)
        context_length = cfg.get("text_cfg", {}).get("context_length", 77)
    else:
        # What create_model(pretrained=<file>) does, with the checkpoint loaded by us below.
        model = open_clip.create_model(spec.model_id, force_quick_gelu=spec.quick_gelu)
        context_length = None
    if weights is not None:
        _load_open_clip_checkpoint(model, weights, spec, cache_dir or hf_cache_dir())

    def tokenizer_factory():
        if spec.tokenizer_repo:
            from open_clip.tokenizer import HFTokenizer

            cfg = open_clip.get_model_config(spec.model_id) or {}
            text_cfg = cfg.get("text_cfg", {})
            folder = cache_dir or hf_cache_dir()
            # The cached snapshot folder, not the repo id: given a repo id with
            # local_files_only=True, AutoTokenizer also wants the repo's config.json, which
            # tokenizer-only repos (timm/ViT-B-16-SigLIP) do not have.
            found = cached_path(FileNeed(spec.tokenizer_repo, TOKENIZER_FILES), folder)
            try:
                if found is None:  # only random-init twins get here without a checked cache
                    raise OSError(f"{spec.tokenizer_repo}/{TOKENIZER_FILES[0]} is not cached")
                return HFTokenizer(
                    os.path.dirname(found), local_files_only=True,
                    context_length=context_length or text_cfg["context_length"],
                    **text_cfg.get("tokenizer_kwargs", {}),
                )
            except OSError as exc:
                raise unavailable(
                    spec, folder, f"its tokenizer ({spec.tokenizer_repo}) is not cached ({exc})"
                ) from exc
        if context_length is not None:
            return open_clip.SimpleTokenizer(context_length=context_length)
        return open_clip.get_tokenizer(spec.model_id)

    return model, tokenizer_factory


def _load_open_clip_checkpoint(model, weights: str, spec: ModelSpec, cache_dir: str) -> None:
    """open_clip's strict ``load_checkpoint``, its refusals turned into the clear cache error.

    open_clip raises ``load_state_dict``'s RuntimeError for a missing, extra or misshaped tensor
    (a KeyError for some missing ones); the checkpoint is then read again only to name them.
    """
    import open_clip

    try:
        open_clip.load_checkpoint(model, weights)  # strict=True
    except (RuntimeError, KeyError) as exc:
        try:
            found = open_clip.factory.load_state_dict(weights)
        except _UNREADABLE:  # a truncated .bin fails in torch.load: exc already says so
            found = None
        if found is None:
            raise checkpoint_does_not_fit(spec, cache_dir, detail=str(exc)) from exc
        expected = model.state_dict()
        raise checkpoint_does_not_fit(
            spec, cache_dir, detail=str(exc).splitlines()[-1],
            missing=[k for k in expected if k not in found],
            unexpected=[k for k in found if k not in expected],
            mismatched=[(k, found[k].shape, v.shape) for k, v in expected.items()
                        if k in found and found[k].shape != v.shape],
        ) from exc


def _build_transformers(spec: ModelSpec, cache_dir: str | None):
    from transformers import AutoConfig, AutoModel

    if spec.random_init:
        if spec.arch_config is None:
            raise ValueError(
                f"'{spec.key}': a random-init transformers entry needs arch_config (the config "
                "kwargs with 'model_type'), since the config itself lives on the Hub."
            )
        model = AutoModel.from_config(AutoConfig.for_model(**dict(spec.arch_config)))
    else:
        # ignore_mismatched_sizes: a misshaped tensor is reported in ``info`` (and refused
        # below) instead of raising a bare RuntimeError after a table on stderr.
        model, info = AutoModel.from_pretrained(
            spec.hf_repo, cache_dir=cache_dir, local_files_only=True, dtype=torch.float32,
            output_loading_info=True, ignore_mismatched_sizes=True,
        )
        # transformers fills tensors missing from the checkpoint (or of the wrong shape) with
        # random values and only prints a table: that would be a silent random-weights model.
        # Tensors the architecture does not use (heads of other tasks) are fine.
        missing, mismatched = info.get("missing_keys", ()), info.get("mismatched_keys", ())
        if missing or mismatched:
            raise checkpoint_does_not_fit(spec, cache_dir or hf_cache_dir(), missing=missing,
                                          mismatched=mismatched)
    config = model.config
    n_registers = int(getattr(config, "num_register_tokens", 0))
    expected = {
        "n_prefix_tokens": (spec.n_prefix_tokens, 1 + n_registers),
        "patch_size": (spec.patch_size, config.patch_size),
        "output_dim": (spec.output_dim, config.hidden_size),
    }
    wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
    if wrong:
        listing = ", ".join(f"{k}: spec {a} vs model {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"registry entry '{spec.key}' disagrees with its model ({listing}).")
    return model
