"""Real-size random-weight entries: hidden, registered only on request, published sizes.

Built on the meta device (no memory, no random init), so these checks are cheap; the loader's own
path is exercised at real size by benchmarks/encode.py.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from transformers import AutoConfig, AutoModel, DINOv3ViTConfig

from core.models import MODELS, get_spec, list_models, model_choices
from core.models.realsize import DINOV2_BASE_CONFIG, realsize_models

# Published parameter counts: OpenAI CLIP ViT-B/16 (its model card / the CLIP notebook) and
# DINOv2 ViT-B/14 (torch.hub dinov2_vitb14).
CLIP_B16_PARAMS = 149_620_737
DINOV2_B14_PARAMS = 86_580_480
# DINOv3 ViTs as facebookresearch/dinov3 builds them (hub/backbones.py: width, depth, heads; MLP
# ratio 4, patch 16, 4 storage = register tokens for every size) and their model cards' sizes.
DINOV3_PUBLISHED = {  # key: (width, depth, heads, parameters)
    "dinov3-vits16": (384, 12, 6, 21e6),
    "dinov3-vitb16": (768, 12, 12, 86e6),
    "dinov3-vitl16": (1024, 24, 16, 300e6),
}
DINOV3_REGISTERS = 4  # transformers' DINOv3ViTConfig defaults to 0; the Hub configs set 4


def _vit_params(*, width, layers, mlp, patch, n_pos, channels=3):
    """Parameter count of a pre-norm ViT built from its hyper-parameters (independent count)."""
    per_layer = (2 * width  # norm1
                 + 3 * (width * width + width) + (width * width + width)  # q, k, v, out
                 + 2 * width  # norm2
                 + (width * mlp + mlp) + (mlp * width + width))  # fc1, fc2
    embed = channels * patch * patch * width + width + n_pos * width
    return embed, per_layer * layers


def test_not_registered_until_asked_then_hidden():
    fresh = [k for k in MODELS if k.startswith("realsize-")]
    keys = realsize_models()
    assert keys == {"clip": "realsize-clip-vit-b16", "dinov2": "realsize-dinov2-base"}
    assert realsize_models() == keys  # idempotent
    assert not fresh or set(fresh) <= set(keys.values())
    pickers = model_choices("vlm") + model_choices("vfm")
    shown = {s.key for s in list_models()} | {k for _, k in pickers}
    for key in keys.values():
        spec = get_spec(key)
        assert spec.hidden and spec.random_init and spec.hf_repo is None
        assert key not in shown


def test_same_preprocessing_as_the_real_entries():
    keys = realsize_models()
    for role, real in (("clip", "clip-vit-b16"), ("dinov2", "dinov2-base")):
        twin, spec = get_spec(keys[role]), get_spec(real)
        for name in ("image_size", "resize_size", "mean", "std", "interpolation", "patch_size",
                     "n_prefix_tokens", "output_dim", "quick_gelu", "dense", "resize_mode"):
            assert getattr(twin, name) == getattr(spec, name), name


def test_clip_b16_published_size():
    spec = get_spec(realsize_models()["clip"])
    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config(spec.model_id),
                               quick_gelu=spec.quick_gelu)
    assert sum(p.numel() for p in model.parameters()) == CLIP_B16_PARAMS
    block = model.visual.transformer.resblocks[0]
    assert isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU)
    assert model.visual.conv1.weight.shape == (768, 3, 16, 16)
    assert len(model.visual.transformer.resblocks) == 12
    assert model.text_projection.shape == (512, spec.output_dim)


def test_dinov2_base_published_size():
    spec = get_spec(realsize_models()["dinov2"])
    assert dict(spec.arch_config) == DINOV2_BASE_CONFIG
    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.for_model(**dict(spec.arch_config)))
    n_pos = (518 // 14) ** 2 + 1
    embed, blocks = _vit_params(width=768, layers=12, mlp=3072, patch=14, n_pos=n_pos)
    layer_scales = 12 * 2 * 768
    expected = embed + 2 * 768 + blocks + layer_scales + 2 * 768  # + CLS, mask; final norm
    assert expected == DINOV2_B14_PARAMS
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.config.hidden_size == spec.output_dim


def test_every_dinov3_entry_is_in_the_published_table():
    dinov3 = {s.key for s in list_models("vfm") if s.model_id.startswith("facebook/dinov3")}
    assert dinov3 == set(DINOV3_PUBLISHED)


@pytest.mark.parametrize("key", sorted(DINOV3_PUBLISHED))
def test_dinov3_entry_matches_its_published_architecture(key):
    """The entry's token layout and width, on the real-size architecture (meta device): the
    prefix the loader strips is CLS + registers, and the patch grid fills the rest."""
    spec = get_spec(key)
    width, depth, heads, params = DINOV3_PUBLISHED[key]
    config = DINOv3ViTConfig(hidden_size=width, num_hidden_layers=depth,
                             num_attention_heads=heads, intermediate_size=4 * width,
                             patch_size=16, num_register_tokens=DINOV3_REGISTERS)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
        out = model(pixel_values=torch.empty(1, 3, spec.image_size, spec.image_size))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.03)  # rounded
    h, w = spec.grid_size
    assert out.last_hidden_state.shape == (1, spec.n_prefix_tokens + h * w, spec.output_dim)
    assert spec.n_prefix_tokens == 1 + DINOV3_REGISTERS and spec.patch_size == config.patch_size
    assert spec.gated and spec.hf_repo.endswith("-pretrain-lvd1689m")
