"""Precision "bf16" on a CPU with tiny models: autocast over a twin with bf16 matmul weights
(`core.models.bf16_cpu`), close to fp32 on every path, the fp32 model left exact, and the warning
on a CPU without bf16 matrix instructions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import core.models.load as load
from core.config import FAST_PATH_MIN_COSINE
from core.models import get_spec, load_encoder
from core.models.bf16_cpu import Bf16Attention, bf16_twin
from core.models.tiny import tiny_test_models
from core.pipeline.cache import model_key

TINY = tiny_test_models()
# Tiny random models in bf16 vs fp32: measured worst cosines 0.99993 (text) to 0.99999 (images);
# the bound is the one a fast path must keep at real size.
BF16_COS = FAST_PATH_MIN_COSINE


def _images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):  # smooth colour fields plus grain: photo-like, not pure noise
        coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((80 + 8 * i, 64), Image.BICUBIC))
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255)
                                   .astype(np.uint8)))
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    return (a * b).sum(-1)


@pytest.mark.parametrize("role", ["clip_vit", "clip_rn", "dinov2", "dinov2_reg"])
def test_bf16_global_features_are_close_to_fp32_and_not_equal(role):
    fp32 = load_encoder(TINY[role], device="cpu")
    bf16 = load_encoder(TINY[role], device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and bf16.model is not fp32.model
    images = _images()
    a, b = fp32.encode_images(images), bf16.encode_images(images)
    assert not torch.equal(a, b)  # it really ran in bf16
    assert _cos(a, b).min() > BF16_COS


@pytest.mark.parametrize("role", ["clip_vit", "dinov2"])
def test_bf16_patches_dense_and_crops_are_close_to_fp32(role):
    fp32 = load_encoder(TINY[role], device="cpu")
    bf16 = load_encoder(TINY[role], device="cpu", precision="bf16")
    images = _images()
    patches = _cos(fp32.encode_patches(images), bf16.encode_patches(images))
    assert patches.shape == (3, *fp32.grid_size) and patches.min() > BF16_COS
    boxes = torch.tensor([[[0, 0, 40, 40], [10, 5, 60, 50]]], dtype=torch.float32).repeat(3, 1, 1)
    crops = _cos(fp32.encode_crops(images, boxes), bf16.encode_crops(images, boxes))
    assert crops.shape == (3, 3) and crops.min() > BF16_COS
    if fp32.spec.dense:
        dense = _cos(fp32.encode_dense(images), bf16.encode_dense(images))
        assert dense.min() > BF16_COS


@pytest.mark.parametrize("role", ["clip_vit", "clip_rn"])
def test_bf16_text_is_close_to_fp32(role):
    fp32 = load_encoder(TINY[role], device="cpu")
    bf16 = load_encoder(TINY[role], device="cpu", precision="bf16")
    text = ["a photo of a cat.", "a dog", "a blurry photo of a small red car on a road."]
    a, b = fp32.encode_sentences(text), bf16.encode_sentences(text)
    assert not torch.equal(a, b) and _cos(a, b).min() > BF16_COS


def test_bf16_twin_leaves_the_fp32_model_exact():
    key = TINY["clip_vit"]
    load._LOADED_FAST.pop((get_spec(key), "cpu", "bf16"), None)  # build the twin here
    fp32 = load_encoder(key, device="cpu")
    before = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    images = _images()
    ref, text_ref = fp32.encode_images(images), fp32.encode_sentences(["a cat"])
    bf16 = load_encoder(key, device="cpu", precision="bf16")
    assert load_encoder(key, device="cpu", precision="bf16") is bf16  # built once
    bf16.encode_images(images), bf16.encode_sentences(["a cat"])
    for k, v in fp32.model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert torch.equal(fp32.encode_images(images), ref)
    assert torch.equal(fp32.encode_sentences(["a cat"]), text_ref)
    block = bf16.model.visual.transformer.resblocks[0]
    assert type(block.attn) is Bf16Attention and block.mlp.c_fc.weight.dtype == torch.bfloat16
    assert type(fp32.model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    assert block.ln_1.weight.dtype == torch.float32  # norms stay fp32, as autocast wants


def test_bf16_attention_runs_outside_autocast_in_bf16(monkeypatch):
    torch.manual_seed(0)
    attn = torch.nn.Sequential(torch.nn.MultiheadAttention(16, 2, batch_first=True))
    twin = bf16_twin(attn)[0]
    assert type(attn[0]) is torch.nn.MultiheadAttention
    assert attn[0].in_proj_weight.dtype == torch.float32  # the original is untouched
    seen = []  # (autocast on?, query dtype, query is key is value, mask dtype) in the base forward
    base = torch.nn.MultiheadAttention.forward

    def spy(self, query, key, value, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), query.dtype, query is key is value,
                     kwargs["attn_mask"].dtype))
        return base(self, query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", spy)
    x = torch.randn(2, 5, 16)
    mask = torch.full((5, 5), float("-inf")).triu(1)  # causal, as CLIP's text tower
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = twin(x, x, x, need_weights=False, attn_mask=mask)[0]
        ref = attn[0](x, x, x, need_weights=False, attn_mask=mask)[0]
        soft = twin(x, x, x, need_weights=False, attn_mask=mask.clamp(min=-5.0))[0]
    # The twin meets the fast path's conditions (no autocast, bf16, self-attention, and the
    # 0 / -inf mask as the equal boolean one: the fast path refuses float masks); plain autocast
    # does not. A mask with other values stays additive (floats).
    assert seen[0] == (False, torch.bfloat16, True, torch.bool)
    assert seen[1] == (True, torch.float32, True, torch.float32)
    assert seen[2] == (False, torch.bfloat16, True, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and not torch.allclose(out, soft)
    assert _cos(torch.nn.functional.normalize(out.float(), dim=-1),
                torch.nn.functional.normalize(ref.float(), dim=-1)).min() > BF16_COS


def test_bf16_cache_keys_differ_from_other_precisions():
    spec = get_spec(TINY["clip_vit"])
    keys = [model_key(spec, p) for p in ("fp32", "int8", "bf16", "onnx-int8")]
    assert len(set(keys)) == 4


def test_cpu_has_fast_bf16_follows_torch_probes(monkeypatch):
    load.cpu_has_fast_bf16.cache_clear()
    try:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        assert load.cpu_has_fast_bf16() is False
        load.cpu_has_fast_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        assert load.cpu_has_fast_bf16() is True
    finally:
        load.cpu_has_fast_bf16.cache_clear()


def test_bf16_on_a_slow_cpu_still_runs_and_warns_once(monkeypatch, caplog):
    key = TINY["dinov2"]
    monkeypatch.setattr(load, "cpu_has_fast_bf16", lambda: False)
    load._warn_slow_bf16.cache_clear()
    caplog.set_level(logging.WARNING, logger=load.__name__)
    fp32 = load_encoder(key, device="cpu")
    for _ in range(2):  # two fresh twins, one warning
        load._LOADED_FAST.pop((get_spec(key), "cpu", "bf16"), None)
        bf16 = load_encoder(key, device="cpu", precision="bf16")
    warned = [r for r in caplog.records if "AMX" in r.getMessage()]
    assert len(warned) == 1 and "slower than fp32" in warned[0].getMessage()
    images = _images(2)
    assert _cos(fp32.encode_images(images), bf16.encode_images(images)).min() > BF16_COS
    load._warn_slow_bf16.cache_clear()
