"""Tiny random-initialised models of the real architectures, for tests and benchmarks.

They never touch the Hub: `ModelSpec.random_init` builds the architecture from `arch_config` with
seeded random weights (seed 0, so two loads agree). They are hidden from the UI.

    >>> from core.models.tiny import tiny_test_models
    >>> keys = tiny_test_models()          # registers them; idempotent
    >>> enc = load_encoder(keys["clip_vit"])

Keys (stable, also usable directly once registered): "test-tiny-clip-vit" (open_clip ViT, QuickGELU,
dense path, bundled CLIP tokenizer), "test-tiny-clip-rn" (open_clip ModifiedResNet: no patches, no
dense path), "test-tiny-dinov2", "test-tiny-dinov2-reg" (4 registers) and "test-tiny-dinov3"
(RoPE, 4 registers).
"""

from __future__ import annotations

from dataclasses import replace

from core.models.registry import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    get_spec,
    register_model,
)

_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
_TINY_DINO = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64}


def _tiny_specs() -> dict[str, ModelSpec]:
    clip = dict(kind="vlm", library="open_clip", pretrained=None, hf_repo=None, mean=CLIP_MEAN,
                std=CLIP_STD, interpolation="bicubic", quick_gelu=True, hidden=True,
                random_init=True, batch_size=16)
    dino = dict(kind="vfm", library="transformers", pretrained=None, hf_repo=None,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic", hidden=True,
                random_init=True, batch_size=16)
    return {
        "clip_vit": ModelSpec(
            key="test-tiny-clip-vit", display_name="Tiny CLIP ViT (test)", model_id="tiny-vit-p16",
            image_size=64, resize_size=64, patch_size=16, n_prefix_tokens=1, output_dim=32,
            dense=True, **clip,
            arch_config={"embed_dim": 32, "text_cfg": _TINY_TEXT, "vision_cfg": {
                "image_size": 64, "patch_size": 16, "width": 64, "head_width": 32, "layers": 2}},
        ),
        "clip_rn": ModelSpec(
            key="test-tiny-clip-rn", display_name="Tiny CLIP ResNet (test)", model_id="tiny-rn",
            image_size=64, resize_size=64, patch_size=None, n_prefix_tokens=0, output_dim=32,
            **clip,
            arch_config={"embed_dim": 32, "text_cfg": _TINY_TEXT, "vision_cfg": {
                "image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None}},
        ),
        "dinov2": ModelSpec(
            key="test-tiny-dinov2", display_name="Tiny DINOv2 (test)", model_id="tiny-dinov2",
            image_size=56, resize_size=64, patch_size=14, n_prefix_tokens=1, output_dim=32, **dino,
            arch_config={"model_type": "dinov2", "patch_size": 14, "image_size": 56, **_TINY_DINO},
        ),
        "dinov2_reg": ModelSpec(
            key="test-tiny-dinov2-reg", display_name="Tiny DINOv2 + registers (test)",
            model_id="tiny-dinov2-reg", image_size=56, resize_size=64, patch_size=14,
            n_prefix_tokens=5, output_dim=32, **dino,
            arch_config={"model_type": "dinov2_with_registers", "patch_size": 14,
                         "image_size": 56, "num_register_tokens": 4, **_TINY_DINO},
        ),
        "dinov3": ModelSpec(
            key="test-tiny-dinov3", display_name="Tiny DINOv3 (test)", model_id="tiny-dinov3",
            image_size=64, resize_size=72, patch_size=16, n_prefix_tokens=5, output_dim=32, **dino,
            arch_config={"model_type": "dinov3_vit", "patch_size": 16, "image_size": 64,
                         "num_register_tokens": 4, **_TINY_DINO},
        ),
    }


def tiny_test_models() -> dict[str, str]:
    """Register the tiny test entries (idempotent); returns ``{role: key}``.

    Roles: "clip_vit", "clip_rn", "dinov2", "dinov2_reg", "dinov3".
    """
    return {role: register_model(spec).key for role, spec in _tiny_specs().items()}


def random_init_copy(key: str) -> str:
    """Register a hidden random-weight twin of an open_clip entry (real size, same preprocessing).

    For timing without weights (benchmarks). Returns the new key, ``"<key>-random"``.
    """
    spec = get_spec(key)
    if spec.library != "open_clip" and spec.arch_config is None:
        raise ValueError(
            f"random_init_copy: '{key}' is a transformers entry whose architecture lives on the "
            "Hub; pick an open_clip entry or a tiny test entry."
        )
    twin = replace(spec, key=f"{spec.key}-random", display_name=f"{spec.display_name} (random)",
                   hidden=True, random_init=True)
    return register_model(twin).key
