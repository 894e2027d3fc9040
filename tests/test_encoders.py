"""Encoders: registry validity, tiny random-init models of the real architectures, offline errors.

Nothing here downloads: real registry entries are only used to check their fields against
open_clip's own pretrained configs and to prove that missing weights fail fast with a clear message.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import replace

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from core.checks import l2_normalize
from core.models import (
    MODELS,
    ModelSpec,
    WeightsUnavailableError,
    download_models,
    get_spec,
    list_models,
    load_encoder,
    model_choices,
    preload_from_hub_lines,
    register_model,
)
from core.models import load as encoders
from core.models.encoders import Encoder
from core.models.registry import IMAGENET_MEAN, IMAGENET_STD
from core.models.tiny import tiny_test_models

ATOL = 1e-5  # float32 features of the same inputs in different batch compositions
FAIL_FAST_S = 5.0

TINY = tiny_test_models()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Seven small images of varied sizes and modes (RGB, L, RGBA, P)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(90, 70), (64, 64), (50, 120), (128, 96), (77, 77), (200, 60),
                                (65, 90)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(arr)
        out.append(image.convert(["RGB", "L", "RGBA", "P"][i % 4]))
    return out


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache in tmp_path and no offline flag yet.

    tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, which freezes
    ``huggingface_hub.constants.HF_HUB_OFFLINE``; undo both to simulate a machine without the flag.
    """
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf" / "hub"


# ------------------------------------------------------------------------------------ registry
PUBLIC = list_models(include_hidden=False)


def test_registry_has_the_design_models():
    keys = {s.key for s in PUBLIC}
    expected = {"clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "clip-rn50", "siglip-vit-b16",
                "dinov2-small", "dinov2-base", "dinov2-large", "dinov2-giant", "dinov2-reg-small",
                "dinov2-reg-base", "dinov2-reg-large", "dinov2-reg-giant", "dinov3-vits16",
                "dinov3-vitb16", "dinov3-vitl16"}
    assert expected <= keys
    assert all(not s.hidden and not s.random_init for s in PUBLIC)
    assert all(s.hidden for s in MODELS.values() if s.key in TINY.values())


@pytest.mark.parametrize("spec", PUBLIC, ids=lambda s: s.key)
def test_entry_fully_specified(spec: ModelSpec):
    assert spec.key and spec.display_name and spec.model_id and spec.hf_repo
    assert spec.image_size > 0 and spec.resize_size >= spec.image_size and spec.output_dim > 0
    if spec.library == "transformers":
        # DINO preprocessing (v2 and v3): ImageNet statistics, never CLIP's mean/std; the DINO
        # repositories' eval transform, 256 -> center crop 224 bicubic (the papers' protocol).
        assert spec.kind == "vfm" and spec.pretrained is None and spec.hf_repo == spec.model_id
        assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
        resize = (spec.resize_mode, spec.resize_size, spec.image_size, spec.interpolation)
        assert resize == ("shortest", 256, 224, "bicubic")
        assert spec.n_prefix_tokens in (1, 5) and not spec.dense
        assert spec.gated == (spec.patch_size == 16)  # DINOv3 (patch 16) is gated, DINOv2 not


@pytest.mark.parametrize("spec", [s for s in PUBLIC if s.library == "open_clip"],
                         ids=lambda s: s.key)
def test_open_clip_entry_matches_open_clip(spec: ModelSpec):
    """Weights repo, activation and preprocessing agree with open_clip's own tables."""
    assert spec.model_id in open_clip.list_models()
    pcfg = open_clip.get_pretrained_cfg(spec.model_id, spec.pretrained)
    assert pcfg, f"{spec.model_id}:{spec.pretrained} is not an open_clip pretrained tag"
    assert spec.hf_repo == pcfg["hf_hub"].rstrip("/")
    assert spec.quick_gelu == pcfg.get("quick_gelu", False)
    assert spec.mean == tuple(pcfg["mean"]) and spec.std == tuple(pcfg["std"])
    assert spec.interpolation == pcfg["interpolation"]
    assert spec.resize_mode == pcfg["resize_mode"]
    cfg = open_clip.get_model_config(spec.model_id)
    assert spec.output_dim == cfg["embed_dim"]
    assert spec.tokenizer_repo == cfg["text_cfg"].get("hf_tokenizer_name")
    vision = cfg["vision_cfg"]
    assert spec.image_size == vision["image_size"]
    is_plain_vit = "timm_model_name" not in vision and isinstance(vision["layers"], int)
    assert spec.dense == is_plain_vit
    if is_plain_vit:
        assert spec.patch_size == vision["patch_size"] and spec.n_prefix_tokens == 1


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'clip-vit-b99'") as info:
        get_spec("clip-vit-b99")
    assert "clip-vit-b16" in str(info.value) and "dinov2-base" in str(info.value)
    with pytest.raises(ValueError, match="valid keys"):
        load_encoder("nope")


def test_choices_and_listing():
    vfm_keys = [key for _, key in model_choices("vfm")]
    vlm_keys = [key for _, key in model_choices("vlm")]
    assert "dinov2-base" in vfm_keys and set(vlm_keys) <= set(vfm_keys)  # VLM image towers too
    assert vfm_keys[-len(vlm_keys):] == vlm_keys  # towers after the vision-only models
    assert not set(TINY.values()) & set(vfm_keys)
    assert set(TINY.values()) <= {s.key for s in list_models(include_hidden=True)}
    with pytest.raises(ValueError, match="kind"):
        list_models("clip")
    with pytest.raises(ValueError, match="kind"):
        model_choices("clip")


def test_model_choices_lists_extra_hidden_entries_first_once():
    extra = [TINY["dinov2"], TINY["clip_vit"], "dinov2-base"]
    vlms = [key for _, key in model_choices("vlm", extra=extra)]
    vfms = [key for _, key in model_choices("vfm", extra=extra)]
    assert vlms[0] == TINY["clip_vit"] and TINY["dinov2"] not in vlms
    assert vfms[0] == TINY["dinov2"] and vfms[1] == "dinov2-base"  # extra first, in order
    assert len(vfms) == len(set(vfms))  # a visible key given as extra is listed once
    assert vfms.index(TINY["clip_vit"]) > vfms.index("dinov2-large")  # a tower, after the VFMs
    hidden = {key for _, key in model_choices("vfm", include_hidden=True)}
    assert set(TINY.values()) <= hidden


def test_spec_validation_and_registration():
    base = get_spec(TINY["clip_vit"])
    with pytest.raises(ValueError, match="hidden"):
        replace(base, key="x", hidden=False)
    with pytest.raises(ValueError, match="interpolation"):
        replace(base, key="x", interpolation="nearest")
    with pytest.raises(ValueError, match="hf_repo"):
        replace(get_spec("dinov2-base"), hf_repo=None)
    register_model(base)  # identical: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_model(replace(base, output_dim=64))


def test_preload_lines():
    lines = preload_from_hub_lines(["clip-vit-b16", "dinov2-base", "siglip-vit-b16"])
    assert "timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors" in lines
    assert "facebook/dinov2-base" in lines and "timm/ViT-B-16-SigLIP" in lines


# ------------------------------------------------------------------------------- preprocessing
def test_preprocess_matches_open_clip_transform(images):
    spec = get_spec("clip-vit-b16")
    encoder = Encoder(spec, torch.nn.Identity(), torch.device("cpu"))  # no weights needed
    reference = open_clip.image_transform(224, is_train=False, mean=spec.mean, std=spec.std,
                                          resize_mode="shortest", interpolation="bicubic")
    # We convert to RGB first (open_clip converts after resizing, which resizes palette images
    # with nearest neighbour); on RGB input the two are bit-identical.
    for image in images:
        rgb = image.convert("RGB")
        torch.testing.assert_close(encoder.preprocess(image), reference(rgb), atol=0, rtol=0)


@pytest.mark.parametrize("key", ["dinov2-base", "dinov3-vitb16"])
def test_preprocess_matches_dino_eval_transform(images, key):
    spec = get_spec(key)
    encoder = Encoder(spec, torch.nn.Identity(), torch.device("cpu"))
    reference = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    for image in images:
        got = encoder.preprocess(image)
        assert got.shape == (3, 224, 224)
        torch.testing.assert_close(got, reference(image.convert("RGB")), atol=0, rtol=0)


def test_preprocess_squash_for_siglip(images):
    spec = get_spec("siglip-vit-b16")
    encoder = Encoder(spec, torch.nn.Identity(), torch.device("cpu"))
    reference = open_clip.image_transform(224, is_train=False, mean=spec.mean, std=spec.std,
                                          resize_mode="squash", interpolation="bicubic")
    for image in images[:4]:
        rgb = image.convert("RGB")
        torch.testing.assert_close(encoder.preprocess(image), reference(rgb), atol=0, rtol=0)


# --------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("role", ["clip_vit", "clip_rn", "dinov2", "dinov2_reg", "dinov3"])
def test_tiny_encode_images(role, images):
    encoder = load_encoder(TINY[role], device="cpu")
    assert load_encoder(TINY[role], device="cpu") is encoder  # loaded once
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    feats = encoder.encode_images(images, batch_size=3)
    assert feats.shape == (len(images), encoder.spec.output_dim) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(images)))
    assert not feats.is_inference()  # usable later in autograd (GPUA refinement)
    again = encoder.encode_images(images, batch_size=len(images))
    torch.testing.assert_close(again, feats, atol=ATOL, rtol=0)
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    from_pixels = encoder.encode_pixels(pixels, batch_size=4)
    torch.testing.assert_close(from_pixels, feats, atol=ATOL, rtol=0)


def test_random_init_is_reproducible():
    spec = get_spec(TINY["dinov2"])
    a = encoders._build(spec, torch.device("cpu")).model
    b = encoders._build(spec, torch.device("cpu")).model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("role", ["dinov2", "dinov2_reg", "dinov3"])
def test_dino_global_and_patches_match_the_model(role, images):
    """Global = CLS after the final norm; patches = tokens after CLS and registers, on the grid."""
    encoder = load_encoder(TINY[role], device="cpu")
    spec = encoder.spec
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        hidden = encoder.model(pixel_values=pixels).last_hidden_state  # (N, prefix + h*w, d)
    h, w = spec.grid_size
    assert hidden.shape[1] == spec.n_prefix_tokens + h * w
    torch.testing.assert_close(encoder.encode_images(images), l2_normalize(hidden[:, 0]),
                               atol=ATOL, rtol=0)
    patches = encoder.encode_patches(images, batch_size=2)
    assert patches.shape == (len(images), h, w, spec.output_dim)
    expected = l2_normalize(hidden[:, spec.n_prefix_tokens:]).reshape(len(images), h, w, -1)
    torch.testing.assert_close(patches, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="dense"):
        encoder.encode_dense(images)
    with pytest.raises(ValueError, match="vision-only"):
        encoder.encode_sentences(["a photo of a cat."])


def test_encode_sentences_equals_the_text_tower():
    encoder = load_encoder(TINY["clip_vit"], device="cpu")
    sentences = ["a photo of a golden retriever.", "a drawing of a cat.", "tabby cat"]
    got = encoder.encode_sentences(sentences, batch_size=2)
    assert got.shape == (3, 32) and encoder.n_forward > 0
    tokens = encoder._text_tokenizer()(sentences)
    with torch.no_grad():
        manual = l2_normalize(encoder.model.encode_text(tokens))  # (S, d)
    torch.testing.assert_close(got, manual, atol=ATOL, rtol=0)
    # Prompts are batched by length (each batch is trimmed to its longest), output in input order
    seen = []
    real = encoder._forward_text
    encoder._forward_text = lambda t: seen.append(int(t.argmax(-1).max()) + 1) or real(t)
    varied = ["a", "a photo of a very large and quite golden retriever dog.", "b c", "a cat.",
              "one more rather long prompt about a tabby cat sitting", "dog"]
    got = encoder.encode_sentences(varied, batch_size=2)
    assert seen == sorted(seen) and seen[0] < seen[-1]
    with torch.no_grad():
        manual = l2_normalize(encoder.model.encode_text(encoder._text_tokenizer()(varied)))
    torch.testing.assert_close(got, manual, atol=ATOL, rtol=0)
    del encoder._forward_text
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode_sentences("one string")
    with pytest.raises(ValueError, match="non-empty"):
        encoder.encode_sentences(["cat", " "])


def test_dense_features_grid_norm_and_reference(images):
    """MaskCLIP = last block with each token attending only to itself, minus residual and MLP."""
    encoder = load_encoder(TINY["clip_vit"], device="cpu")
    dense = encoder.encode_dense(images, batch_size=3)
    h, w = encoder.spec.grid_size
    assert dense.shape == (len(images), h, w, 32)
    torch.testing.assert_close(dense.norm(dim=-1), torch.ones(len(images), h, w))
    torch.testing.assert_close(encoder.encode_patches(images), dense, atol=ATOL, rtol=0)

    visual = encoder.model.visual
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(len(x), 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        y = last.ln_1(x)
        n = y.shape[1]
        self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        attn = last.attn(y, y, y, need_weights=False, attn_mask=self_only)[0]
        ref = visual.ln_post(attn[:, 1:]) @ visual.proj
    torch.testing.assert_close(dense, l2_normalize(ref).reshape(dense.shape), atol=ATOL, rtol=0)


def test_resnet_has_no_dense_path(images):
    encoder = load_encoder(TINY["clip_rn"], device="cpu")
    with pytest.raises(ValueError, match="no dense CLIP path"):
        encoder.encode_dense(images)
    with pytest.raises(ValueError, match="no patch features"):
        encoder.encode_patches(images)
    assert encoder.encode_sentences(["cat"]).shape == (1, 32)  # the text tower still works


@pytest.mark.parametrize("role", ["clip_vit", "dinov2_reg"])
def test_crops_shape_view0_and_crop_content(role, images):
    encoder = load_encoder(TINY[role], device="cpu")
    side = encoder.spec.image_size
    n_crops = 3
    boxes = torch.tensor([[[0, 0, 40, 40], [10, 5, 50, 45], [20, 20, 60, 60]]] * len(images),
                         dtype=torch.float32)
    crops = encoder.encode_crops(images, boxes, batch_size=5)
    assert crops.shape == (len(images), 1 + n_crops, encoder.spec.output_dim)
    torch.testing.assert_close(crops[:, 0], encoder.encode_images(images), atol=ATOL, rtol=0)
    torch.testing.assert_close(crops.norm(dim=-1), torch.ones(len(images), 1 + n_crops))
    # A crop view is the box resized to the input size, encoded like any image of that size.
    image = images[3].convert("RGB")
    patch = image.resize((side, side), Image.Resampling.BICUBIC, box=(10, 5, 50, 45))
    if encoder.spec.resize_size == side:
        alone = encoder.encode_images([patch])[0]
        torch.testing.assert_close(crops[3, 2], alone, atol=ATOL, rtol=0)
    by_callable = encoder.encode_crops(images, lambda im: boxes[0], batch_size=8)
    torch.testing.assert_close(by_callable, crops, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="expected shape"):
        encoder.encode_crops(images, boxes[:2])
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_crops(images[:1], torch.tensor([[[30.0, 30, 20, 40]]]))


class _Lazy:
    """A lazy image sequence (decodes on read) with one unreadable item."""

    def __init__(self, images, broken: int):
        self.images, self.broken = images, broken

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == self.broken:
            raise OSError(f"cannot decode item {i}")
        return self.images[i]


def test_lazy_sequences_and_errors_from_workers(images):
    encoder = load_encoder(TINY["dinov2"], device="cpu")
    lazy = _Lazy(images, broken=-1)
    torch.testing.assert_close(encoder.encode_images(lazy, batch_size=2),
                               encoder.encode_images(images, batch_size=2), atol=ATOL, rtol=0)
    with pytest.raises(OSError, match="cannot decode item 5"):
        encoder.encode_images(_Lazy(images, broken=5), batch_size=2)
    # The encoder still works after an aborted run (no stuck threads or queues).
    assert encoder.encode_images(images[:2]).shape == (2, 32)


def test_progress_callback_and_input_errors(images):
    encoder = load_encoder(TINY["dinov2"], device="cpu")
    calls = []
    encoder.encode_images(images, batch_size=3, progress=lambda d, t, s: calls.append((d, t)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    with pytest.raises(ValueError, match="at least one"):
        encoder.encode_images([])
    with pytest.raises(TypeError, match="PIL"):
        encoder.encode_images([np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode_images(images, batch_size=0)


# ----------------------------------------------------------------------- weights and offline
def _fake_hub_snapshot(cache_dir, repo: str, files: dict) -> None:
    """Lay out ``files`` like a Hugging Face cache snapshot of ``repo`` (refs/main -> commit)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache_dir / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        write(snapshot / name)


@pytest.mark.parametrize("key", ["clip-vit-b16", "dinov2-base", "siglip-vit-b16"])
def test_offline_flag_fails_fast_with_fix(key, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_spec(key)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(key)
    assert time.perf_counter() - start < FAIL_FAST_S
    message = str(info.value)
    assert spec.display_name in message and spec.hf_repo in message
    assert str(no_hub) in message and f"python -m core download {key}" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert info.value.key == key and info.value.cache_dir == str(no_hub)


def test_gated_model_message_explains_the_token(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder("dinov3-vitb16")
    message = str(info.value)
    assert "gated" in message and "licence" in message
    assert "HF_TOKEN" in message and "hf auth login" in message


@pytest.mark.parametrize("key", ["clip-vit-b32", "dinov2-small"])
def test_unreachable_endpoint_fails_fast_without_offline_flag(key, no_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="unreachable") as info:
        load_encoder(key)
    assert time.perf_counter() - start < FAIL_FAST_S
    assert "127.0.0.1:9" in str(info.value) and "python -m core download" in str(info.value)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError):
        download_models([key])
    assert time.perf_counter() - start < FAIL_FAST_S


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A Hub that answers 401 'GatedRepo' to everything."""

    def _refuse(self):
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to this model is restricted.")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b'{"error": "Access to this model is restricted."}')

    do_GET = do_HEAD = _refuse

    def log_message(self, *args):  # keep pytest output clean
        pass


def test_gated_refusal_becomes_a_clear_error(no_hub, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError, match="gated") as info:
            load_encoder("dinov3-vits16")
        assert time.perf_counter() - start < FAIL_FAST_S
        assert "HF_TOKEN" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_cached_weights_load_offline(no_hub, monkeypatch, images):
    """The real loading path (cache lookup, from_pretrained / checkpoint) with a local snapshot."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dino = load_encoder(TINY["dinov2_reg"], device="cpu")
    clip = load_encoder(TINY["clip_vit"], device="cpu")
    from safetensors.torch import save_file

    def save_dino(folder):
        dino.model.save_pretrained(folder)

    dino_repo, clip_repo = "fusionlab-test/tiny-dinov2-reg", "fusionlab-test/tiny-clip-vit"
    _fake_hub_snapshot(no_hub, dino_repo, {".": save_dino})
    state = {k: v.contiguous() for k, v in clip.model.state_dict().items()}
    _fake_hub_snapshot(no_hub, clip_repo, {
        "open_clip_model.safetensors": lambda path: save_file(state, str(path))})

    for source, repo in ((dino, dino_repo), (clip, clip_repo)):
        tag = "test" if source.spec.library == "open_clip" else None
        cached = replace(source.spec, key=f"{source.spec.key}-cached", random_init=False,
                         hf_repo=repo, pretrained=tag)
        spec = register_model(cached, overwrite=True)
        loaded = load_encoder(spec.key, device="cpu")
        torch.testing.assert_close(loaded.encode_images(images), source.encode_images(images),
                                   atol=ATOL, rtol=0)


def test_incomplete_cache_is_reported(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "fusionlab-test/config-only"
    config = '{"model_type": "dinov2"}'
    _fake_hub_snapshot(no_hub, repo, {"config.json": lambda p: p.write_text(config)})
    spec = register_model(replace(get_spec("dinov2-small"), key="test-config-only", hf_repo=repo,
                                  model_id=repo, hidden=True), overwrite=True)
    with pytest.raises(WeightsUnavailableError, match="model.safetensors"):
        load_encoder(spec.key)



# ------------------------------------------------- loading defects (issue 10, item 7): reproduced
def _tiny_hf_tokenizer(folder) -> None:
    """A word-level Hugging Face tokenizer (ids < the tiny text tower's vocabulary), saved the way
    a Hub repo without a model config holds it: tokenizer files only, no config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "a": 3, "photo": 4, "of": 5, "cat": 6, "dog": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="</s>").save_pretrained(folder)


def _cached_clip_spec(no_hub, clip, *, key, repo, tokenizer_repo=None, weights=None):
    """Register a non-random twin of the tiny CLIP whose weights sit in a fake Hub snapshot."""
    from safetensors.torch import save_file

    def write(path):
        save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(path))
        if weights is not None:
            weights(path)

    _fake_hub_snapshot(no_hub, repo, {"open_clip_model.safetensors": write})
    return register_model(replace(clip.spec, key=key, random_init=False, hf_repo=repo,
                                  pretrained="test", tokenizer_repo=tokenizer_repo,
                                  hidden=True), overwrite=True)


def _cached_dino_spec(no_hub, dino, *, key, repo, damage):
    def write(folder):
        dino.model.save_pretrained(folder)
        damage(folder / "model.safetensors")

    _fake_hub_snapshot(no_hub, repo, {".": write})
    return register_model(replace(dino.spec, key=key, random_init=False, hf_repo=repo,
                                  hidden=True), overwrite=True)


def test_hf_tokenizer_from_a_repo_without_config_json_encodes_text(no_hub, monkeypatch):
    """SigLIP's Hub repo has tokenizer files but no config.json; AutoTokenizer given the repo id
    with local_files_only=True then fails, so text encoding never worked offline."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_encoder(TINY["clip_vit"], device="cpu")
    tok_repo = "fusionlab-test/tokenizer-no-config"
    _fake_hub_snapshot(no_hub, tok_repo, {".": _tiny_hf_tokenizer})
    spec = _cached_clip_spec(no_hub, clip, key="test-hf-tokenizer-no-config",
                             repo="fusionlab-test/tiny-clip-hf-tok", tokenizer_repo=tok_repo)
    encoder = load_encoder(spec.key, device="cpu")
    feats = encoder.encode_sentences(["a photo of a cat", "a photo of a dog"])
    assert feats.shape == (2, spec.output_dim) and torch.isfinite(feats).all()
    snapshot = next((no_hub / f"models--{tok_repo.replace('/', '--')}" / "snapshots").iterdir())
    ids = AutoTokenizer.from_pretrained(str(snapshot))(
        ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        manual = l2_normalize(clip.model.encode_text(ids).float())
    torch.testing.assert_close(feats[:1], manual, atol=ATOL, rtol=0)


def test_transformers_checkpoint_with_missing_tensors_is_an_error_not_random_weights(
        no_hub, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dino = load_encoder(TINY["dinov2"], device="cpu")

    def drop_one(path):
        state = load_file(str(path))
        del state["embeddings.patch_embeddings.projection.weight"]
        save_file(state, str(path), metadata={"format": "pt"})

    spec = _cached_dino_spec(no_hub, dino, key="test-dino-missing-tensor",
                             repo="fusionlab-test/dino-missing-tensor", damage=drop_one)
    with pytest.raises(WeightsUnavailableError, match="missing") as info:
        load_encoder(spec.key, device="cpu")
    message = str(info.value)
    assert "embeddings.patch_embeddings.projection.weight" in message
    assert "random" in message and "python -m core download" in message


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # an interrupted download: the tail is missing


@pytest.mark.parametrize("library", ["transformers", "open_clip"])
def test_truncated_safetensors_reports_incomplete_cache(no_hub, monkeypatch, library):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if library == "transformers":
        spec = _cached_dino_spec(no_hub, load_encoder(TINY["dinov2"], device="cpu"),
                                 key="test-dino-truncated", repo="fusionlab-test/dino-truncated",
                                 damage=_truncate)
    else:
        spec = _cached_clip_spec(no_hub, load_encoder(TINY["clip_vit"], device="cpu"),
                                 key="test-clip-truncated", repo="fusionlab-test/clip-truncated",
                                 weights=_truncate)
    with pytest.raises(WeightsUnavailableError, match="cached files are incomplete") as info:
        load_encoder(spec.key, device="cpu")
    assert "python -m core download" in str(info.value)


def _edit_checkpoint(edit):
    """A ``weights`` hook for _cached_clip_spec: load the saved state dict, ``edit`` it, save."""
    from safetensors.torch import load_file, save_file

    def rewrite(path):
        state = load_file(str(path))
        edit(state)
        save_file(state, str(path))
    return rewrite


def _drop_visual_proj(state):
    del state["visual.proj"]


def _misshape_visual_proj(state):
    state["visual.proj"] = torch.zeros(8, 32)  # the architecture's is (64, 32)


def _by_name(monkeypatch, spec, clip):
    """``spec`` built the way real entries are (open_clip.create_model by name), with the tiny
    architecture registered in open_clip under a test name."""
    name = "fusionlab-tiny-vit-p16"
    cfg = {**clip.spec.arch_config, "quick_gelu": True}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    return register_model(replace(spec, arch_config=None, model_id=name), overwrite=True)


def test_open_clip_entry_built_by_name_loads_its_cached_checkpoint(no_hub, monkeypatch, images):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_encoder(TINY["clip_vit"], device="cpu")
    spec = _cached_clip_spec(no_hub, clip, key="test-clip-by-name", repo="fusionlab-test/by-name")
    spec = _by_name(monkeypatch, spec, clip)
    loaded = load_encoder(spec.key, device="cpu")
    assert loaded.model is not clip.model
    torch.testing.assert_close(loaded.encode_images(images), clip.encode_images(images),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("build", ["arch_config", "create_model"])
@pytest.mark.parametrize("edit,expected", [
    (_drop_visual_proj, ["missing 1 tensor", "visual.proj"]),
    (_misshape_visual_proj, ["1 tensor(s) of the wrong shape", "visual.proj", "(8, 32)",
                             "(64, 32)"]),
])
def test_open_clip_checkpoint_that_does_not_fit_is_a_clear_error_not_random_weights(
        no_hub, monkeypatch, build, edit, expected):
    """A cached open_clip checkpoint lacking a tensor (or with one of the wrong shape) gives the
    same 'cached files are incomplete' error as the transformers path, not load_state_dict's raw
    RuntimeError, and never a model with random weights in its place. Both ways we build open_clip
    models: from the entry's arch_config (CLIP(...)) and by name (create_model, the real
    entries)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_encoder(TINY["clip_vit"], device="cpu")
    repo = f"fusionlab-test/clip-{edit.__name__.strip('_')}-{build}"
    spec = _cached_clip_spec(no_hub, clip, key=f"test-{repo.split('/')[1]}", repo=repo,
                             weights=_edit_checkpoint(edit))
    if build == "create_model":
        spec = _by_name(monkeypatch, spec, clip)
    with pytest.raises(WeightsUnavailableError, match="cached files are incomplete") as info:
        load_encoder(spec.key, device="cpu")
    message = str(info.value)
    for part in expected + ["not the expected model", "random", "python -m core download"]:
        assert part in message, (part, message)
    assert info.value.key == spec.key and info.value.cache_dir == str(no_hub)


def test_transformers_checkpoint_with_a_tensor_of_the_wrong_shape_is_the_same_error(
        no_hub, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dino = load_encoder(TINY["dinov2"], device="cpu")
    name = "embeddings.patch_embeddings.projection.weight"  # (32, 3, 14, 14)

    def misshape(path):
        state = load_file(str(path))
        state[name] = torch.zeros(32, 3, 7, 7)
        save_file(state, str(path), metadata={"format": "pt"})

    spec = _cached_dino_spec(no_hub, dino, key="test-dino-wrong-shape",
                             repo="fusionlab-test/dino-wrong-shape", damage=misshape)
    with pytest.raises(WeightsUnavailableError, match="cached files are incomplete") as info:
        load_encoder(spec.key, device="cpu")
    message = str(info.value)
    for part in [name, "wrong shape", "(32, 3, 7, 7)", "(32, 3, 14, 14)", "not the expected model",
                 "random", "python -m core download"]:
        assert part in message, (part, message)


def test_int8_twin_of_a_resnet_clip_keeps_its_attention_pool_in_fp32():
    """open_clip's ResNet attention pool reads .weight / .bias of its projections directly, so
    quantising them breaks the forward; the twin must leave them alone."""
    fp32 = load_encoder(TINY["clip_rn"], device="cpu")
    int8 = load_encoder(TINY["clip_rn"], device="cpu", precision="int8")
    assert type(int8.model.visual.attnpool.q_proj) is torch.nn.Linear
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    got, ref = int8.encode_images(images), fp32.encode_images(images)
    assert got.shape == ref.shape and torch.isfinite(got).all()
