"""Models: the registry of VLMs and VFMs (frozen specs), loading from the Hub, encoders,
preprocessing, dense CLIP features, and tiny random-initialised test models."""

from core.models.encoders import Encoder
from core.models.hub import WeightsUnavailableError, ensure_weights, hf_cache_dir
from core.models.load import (
    cpu_has_fast_bf16,
    download_models,
    load_encoder,
    one_time_setup,
    precision_runs_here,
    preload_from_hub_lines,
    resolve_device,
    resolve_precision,
)
from core.models.preprocess import CropGeometry, crop_box, crop_geometry, to_uint8
from core.models.registry import (
    MODELS,
    ModelSpec,
    get_spec,
    list_models,
    model_choices,
    register_model,
)
from core.models.tiny import tiny_test_models

__all__ = [
    "MODELS", "ModelSpec", "Encoder", "WeightsUnavailableError", "register_model", "get_spec",
    "list_models", "model_choices", "load_encoder", "download_models",
    "preload_from_hub_lines", "resolve_device", "resolve_precision", "ensure_weights",
    "cpu_has_fast_bf16", "one_time_setup", "precision_runs_here",
    "tiny_test_models",
    "CropGeometry", "crop_box", "crop_geometry", "hf_cache_dir", "to_uint8",
]
