"""Full-size random-initialised twins of real models, for benchmarks at real size without weights.

They have the published architectures and the real entries' preprocessing, but seeded random
weights (seed 0, like `core.models.tiny`), so timings are real-size on any machine while features
mean nothing. They are registered only by an explicit call, hidden from the UI, and never used in
place of a real model: their keys are their own.

    >>> from core.models.realsize import realsize_models
    >>> keys = realsize_models()       # registers them; idempotent
    >>> keys["clip"], keys["dinov2"]
    ('realsize-clip-vit-b16', 'realsize-dinov2-base')

- "realsize-clip-vit-b16": open_clip's bundled ``ViT-B-16`` config (``pretrained=None``) with
  QuickGELU, as OpenAI's weights need; 149.6 M parameters (86.2 M image tower).
- "realsize-dinov2-base": ``Dinov2Config`` with the hyper-parameters of ``facebook/dinov2-base``'s
  config.json (ViT-B/14, 12 layers, width 768, 12 heads, MLP ratio 4, LayerScale 1.0, position
  embeddings for 518 px); 86.6 M parameters.
"""

from __future__ import annotations

from dataclasses import replace

from core.models.registry import ModelSpec, get_spec, register_model

__all__ = ["realsize_models", "DINOV2_BASE_CONFIG"]

# facebook/dinov2-base config.json (the published hyper-parameters).
DINOV2_BASE_CONFIG = {
    "model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14, "image_size": 518,
    "num_channels": 3, "layerscale_value": 1.0, "layer_norm_eps": 1e-6, "qkv_bias": True,
    "use_swiglu_ffn": False, "hidden_act": "gelu", "drop_path_rate": 0.0,
}


def _twin(key: str, new_key: str, arch_config: dict | None = None) -> ModelSpec:
    # Same preprocessing, token layout and output size as the real entry; only weights differ.
    # The measured worst cosines (int8_, onnx_int8_, bf16_worst_cos) carry over unchanged:
    # they were measured on these very twins (benchmarks/README.md, random weights), so
    # precision "auto" resolves the same for a twin as for its real entry.
    real = get_spec(key)
    extra = {"pretrained": None} if real.library == "open_clip" else {}
    return replace(real, key=new_key, display_name=f"{real.display_name} (real size, random)",
                   hf_repo=None, tokenizer_repo=None, gated=False, hidden=True,
                   random_init=True, arch_config=arch_config, **extra)


def _realsize_specs() -> dict[str, ModelSpec]:
    return {
        # arch_config None: open_clip's own ViT-B-16 config, built with pretrained=None.
        "clip": _twin("clip-vit-b16", "realsize-clip-vit-b16"),
        "dinov2": _twin("dinov2-base", "realsize-dinov2-base", dict(DINOV2_BASE_CONFIG)),
    }


def realsize_models() -> dict[str, str]:
    """Register the real-size random-weight entries (idempotent); returns ``{role: key}``.

    Roles: "clip" (CLIP ViT-B/16 architecture), "dinov2" (DINOv2 ViT-B/14 architecture).
    """
    return {role: register_model(spec).key for role, spec in _realsize_specs().items()}
