"""Speed settings with tiny models: int8 / half precisions, their cache keys, the trimmed text
forward, and per-batch progress with a time estimate through the extraction."""

from __future__ import annotations

import copy
import io
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import build_parser
from core.config import FAST_PATH_MIN_COSINE
from core.data import load_image_set
from core.models import get_spec, load_encoder, register_model, resolve_precision
from core.models.encoders import _encode_text_trimmed
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache, model_key
from core.pipeline.extraction import ExtractSettings, extract
from core.pipeline.progress import WorkProgress, format_eta

TINY = tiny_test_models()
INT8_COS = 0.99  # tiny random models, int8 Linear layers: features stay close to fp32
TEXT_ATOL = 1e-5  # trimmed vs full-context text forward: float rounding only


def _zip(tmp_path, n=5):
    rng = np.random.default_rng(0)
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            arr = rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(buf, format="PNG")
            zf.writestr(f"set/{'ab'[i % 2]}/{i}.png", buf.getvalue())
    return path


def test_int8_twin_is_quantised_and_leaves_fp32_exact():
    fp32 = load_encoder(TINY["clip_vit"], device="cpu")
    before = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    int8 = load_encoder(TINY["clip_vit"], device="cpu", precision="int8")
    assert load_encoder(TINY["clip_vit"], device="cpu", precision="int8") is int8
    assert int8.precision == "int8" and fp32.precision == "fp32" and int8.spec == fp32.spec
    mlp = int8.model.visual.transformer.resblocks[0].mlp.c_fc
    assert "quantized" in type(mlp).__module__ and not isinstance(mlp, torch.nn.Linear)
    assert isinstance(fp32.model.visual.transformer.resblocks[0].mlp.c_fc, torch.nn.Linear)
    for k, v in fp32.model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cos = (int8.encode_pixels(x) * fp32.encode_pixels(x)).sum(-1)
    assert cos.min() > INT8_COS and not torch.equal(int8.encode_pixels(x), fp32.encode_pixels(x))
    text = ["a photo of a cat.", "a dog"]
    assert (int8.encode_sentences(text) * fp32.encode_sentences(text)).sum(-1).min() > INT8_COS
    dino = load_encoder(TINY["dinov2"], device="cpu", precision="int8")
    assert dino.encode_pixels(torch.randn(2, 3, 56, 56)).shape == (2, 32)


def test_precision_is_validated_against_the_device():
    with pytest.raises(ValueError, match="expected one of"):
        load_encoder(TINY["clip_vit"], device="cpu", precision="int4")
    with pytest.raises(ValueError, match="runs on cuda"):
        load_encoder(TINY["clip_vit"], device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="runs on cpu"):
        extract(None, ["a", "b"], ExtractSettings(vlm=TINY["clip_vit"], device="cuda",
                                                  precision="int8"))


def test_half_precision_autocasts_only_when_asked():
    # The CUDA path's logic, checked on CPU (autocast works there too): bf16 changes the numbers
    # a little, fp32 and int8 do not autocast. Unverified on a GPU here.
    fp32 = load_encoder(TINY["clip_vit"], device="cpu")
    half = copy.copy(fp32)  # same model and tokenizer, as load_encoder's twins
    half.precision = "bf16"
    assert not torch.is_autocast_enabled("cpu")
    with half._autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with fp32._autocast():
        assert not torch.is_autocast_enabled("cpu")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    a, b = fp32.encode_pixels(x), half.encode_pixels(x)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert (a * b).sum(-1).min() > INT8_COS


def test_cache_keys_separate_precisions_and_keep_fp32_keys():
    spec = get_spec(TINY["clip_vit"])
    assert model_key(spec, "fp32") == model_key(spec)
    keys = {model_key(spec, p) for p in ("fp32", "int8", "bf16", "fp16")}
    assert len(keys) == 4


def test_trimmed_text_forward_equals_open_clip_encode_text():
    fp32 = load_encoder(TINY["clip_vit"], device="cpu")
    sentences = ["cat", "a photo of a small striped cat sitting on a red sofa.", "a dog", "x y"]
    tokens = fp32._text_tokenizer()(sentences)
    with torch.inference_mode():
        full = fp32.model.encode_text(tokens)  # (4, d), all 77 positions
        trimmed = _encode_text_trimmed(fp32.model, tokens)
        alone = _encode_text_trimmed(fp32.model, tokens[:1])  # shorter batch, shorter trim
    torch.testing.assert_close(trimmed, full, atol=TEXT_ATOL, rtol=0)
    torch.testing.assert_close(alone, full[:1], atol=TEXT_ATOL, rtol=0)
    assert int(tokens[:1].argmax(-1)) + 1 < 77  # the trim really drops positions


def test_work_progress_eta_known_answer():
    calls, now = [], [0.0]
    work = WorkProgress(lambda d, t, s: calls.append((d, t, s)), 10, clock=lambda: now[0])
    part = work.part("encoding")
    part(2, 4, "x")  # first batch: no rate yet
    now[0] = 1.0
    part(4, 4, "x")  # 2 units in 1 s -> 6 left -> 3 s
    assert calls[0] == (2, 10, "encoding")
    assert calls[1] == (4, 10, "encoding, about 3 s left")
    work.drop(2)
    work.part("more")(4, 4, "y")
    assert calls[-1][:2] == (8, 8)
    assert format_eta(300) == "about 5 min left"


def test_extraction_reports_every_batch_monotonically_to_the_total(tmp_path):
    settings = ExtractSettings(vlm=TINY["clip_vit"], vfm=TINY["dinov2"], n_crops=2, batch_size=2)
    calls = []
    extract(load_image_set(_zip(tmp_path)), ["a", "b"], settings, cache=None,
            progress=lambda d, t, s: calls.append((d, t, s)))
    image_calls = [c for c in calls if c[2].startswith(("encoding images", "decoding", "images"))]
    done = [d for d, _, _ in image_calls]
    assert done == sorted(done)
    total = 5 * (1 + 1 + 3)  # 5 images: CLIP global, DINO global, 1 + 2 crop views
    assert all(t == total for _, t, _ in image_calls)
    assert image_calls[-1][:2] == (total, total)
    # per batch: 3 batches of 2 for each global pass, 15 views of crops in batches of 2 images
    n_batches = 3 + 3 + 8
    assert len({d for d in done if 0 < d < total}) >= n_batches - 1
    assert any("left" in s for _, _, s in image_calls)


def test_int8_features_never_mix_with_fp32_in_the_cache(tmp_path):
    image_set = load_image_set(_zip(tmp_path, n=3))
    cache = FeatureCache(tmp_path / "cache")
    settings = ExtractSettings(vlm=TINY["clip_vit"], vfm=TINY["dinov2"])
    exact = extract(image_set, ["a", "b"], settings, cache=cache)
    fast = extract(image_set, ["a", "b"], replace(settings, precision="int8"), cache=cache)
    assert fast.stats["cache_hits"] == 0 and fast.stats["forward_passes"] > 0
    assert not torch.equal(fast.features.vlm_image, exact.features.vlm_image)
    again = extract(image_set, ["a", "b"], replace(settings, precision="int8"), cache=cache)
    assert again.stats["forward_passes"] == 0
    torch.testing.assert_close(again.features.vlm_image, fast.features.vlm_image)


def _int8_twin(role: str, worst_cos: float | None) -> str:
    """A tiny entry registered with a measured int8 cosine (what `int8_worst_cos` records)."""
    spec = get_spec(TINY[role])
    return register_model(replace(spec, key=f"{spec.key}-int8-{worst_cos}",
                                  int8_worst_cos=worst_cos)).key


def test_auto_precision_is_int8_only_where_the_measured_cosine_passes():
    passes, fails, unmeasured = (_int8_twin("clip_vit", FAST_PATH_MIN_COSINE + 5e-4),
                                 _int8_twin("dinov2", FAST_PATH_MIN_COSINE - 1e-3),
                                 _int8_twin("dinov2", None))
    assert resolve_precision(passes, "auto", "cpu") == "int8"
    assert resolve_precision(fails, "auto", "cpu") == "fp32"
    assert resolve_precision(unmeasured, "auto", "cpu") == "fp32"
    assert resolve_precision(passes, "auto", "cuda") == "fp32"  # int8 is a CPU path
    assert resolve_precision(fails, "int8", "cpu") == "int8"  # explicit precisions stay
    assert load_encoder(passes, device="cpu", precision="auto") is load_encoder(
        passes, device="cpu", precision="int8")
    assert load_encoder(fails, device="cpu", precision="auto") is load_encoder(fails,
                                                                               device="cpu")
    # the recorded measurement is not part of the features' identity (the cache key's digest)
    digest = model_key(get_spec(passes)).rsplit("-", 1)[1]
    assert digest == model_key(get_spec(TINY["clip_vit"])).rsplit("-", 1)[1]
    # the real entries' policy (onnx-int8 first where installed): tests/test_app_precision.py


def test_auto_precision_is_honoured_end_to_end(tmp_path):
    image_set = load_image_set(_zip(tmp_path, n=3))
    cache = FeatureCache(tmp_path / "cache")
    vlm, vfm = _int8_twin("clip_vit", 0.9999), _int8_twin("dinov2", 0.99)
    settings = ExtractSettings(vlm=vlm, vfm=vfm)
    exact = extract(image_set, ["a", "b"], settings, cache=cache)
    int8 = extract(image_set, ["a", "b"], replace(settings, precision="int8"), cache=None)
    auto = extract(image_set, ["a", "b"], replace(settings, precision="auto"), cache=cache)
    # CLIP runs int8 (its own cache entries), the DINOv2 features are the exact ones, from cache
    torch.testing.assert_close(auto.features.vlm_image, int8.features.vlm_image, atol=0, rtol=0)
    assert not torch.equal(auto.features.vlm_image, exact.features.vlm_image)
    cos = (auto.features.vlm_image * exact.features.vlm_image).sum(-1)
    assert cos.min() > INT8_COS
    torch.testing.assert_close(auto.features.vfm_image, exact.features.vfm_image, atol=0, rtol=0)
    assert not torch.equal(int8.features.vfm_image, exact.features.vfm_image)
    # the DINOv2 pass was a cache hit (the fp32 run's entries): fewer passes than all-int8
    assert 0 < auto.stats["forward_passes"] < int8.stats["forward_passes"]


def test_cli_accepts_auto_precision():
    args = build_parser().parse_args(["run", "--images", "x", "--classes", "a,b",
                                      "--precision", "auto"])
    assert args.precision == "auto"
