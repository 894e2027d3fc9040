"""Precision "onnx-int8" with tiny models: ONNX Runtime image towers with per-channel int8
weights, exported once and kept on disk, keyed apart from fp32, optional dependency."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import core.models.load as load
import core.models.onnx_runtime as onnx_runtime
from core.cli import build_parser
from core.data import load_image_set
from core.models import get_spec, load_encoder
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache, model_key
from core.pipeline.extraction import ExtractSettings, extract

TINY = tiny_test_models()
ROOT = Path(__file__).resolve().parents[1]
# Worst cosine to fp32 of the tiny random models' int8 towers: measured 0.99994-0.99995 on all
# five tiny models (32 random images), 0.9992-0.9998 at real size (benchmarks/README.md). 0.999
# is the bar the precision was adopted at; a wrong export, input layout or normalisation gives
# cosines far below it.
ONNX_COS = 0.999


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A fresh on-disk cache for the module, no onnx-int8 twins in memory, export calls counted."""
    pytest.importorskip("onnxruntime")
    calls = []
    real_export = onnx_runtime.export_image_tower

    def counting(encoder, example, path):
        calls.append(encoder.spec.key)
        return real_export(encoder, example, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(onnx_runtime, "export_image_tower", counting)
        mp.setattr(load, "_LOADED_FAST", {})
        yield calls


def _pixels(key: str, n: int = 6) -> torch.Tensor:
    side = get_spec(key).image_size
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_onnx_int8_tower_is_exported_once_cached_on_disk_and_reused(exports, monkeypatch):
    key = TINY["clip_vit"]
    fp32 = load_encoder(key, device="cpu")
    fast = load_encoder(key, device="cpu", precision="onnx-int8")
    assert fast.precision == "onnx-int8" and fast.model is fp32.model  # text etc. stay fp32
    assert exports == [key]
    path = onnx_runtime.onnx_path(fp32.spec)
    assert path.is_file() and path.name == "image_int8.onnx"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    import onnxruntime

    assert path.parent.name.endswith(f"-ort{onnxruntime.__version__}")
    assert model_key(fp32.spec, "onnx-int8") in path.parent.name
    x = _pixels(key)
    first = fast.encode_pixels(x)
    cos = (first * fp32.encode_pixels(x)).sum(-1)
    assert cos.min() > ONNX_COS and not torch.equal(first, fp32.encode_pixels(x))
    # A new process (no twin in memory) opens the file instead of exporting again.
    monkeypatch.setattr(load, "_LOADED_FAST", {})
    again = load_encoder(key, device="cpu", precision="onnx-int8")
    assert again is not fast and exports == [key]
    torch.testing.assert_close(again.encode_pixels(x), first, atol=0, rtol=0)
    # Activations are quantised with one scale per batch, so an image's features move a little
    # with its batch mates (as with torch's int8): within the tolerance, never bit for bit.
    alone = again.encode_pixels(x[:1])
    assert (alone * first[:1]).sum() > ONNX_COS
    # A file ORT cannot open is rebuilt (once), not a dead end.
    path.write_bytes(b"not an onnx model")
    monkeypatch.setattr(load, "_LOADED_FAST", {})
    rebuilt = load_encoder(key, device="cpu", precision="onnx-int8")
    assert exports == [key, key]
    torch.testing.assert_close(rebuilt.encode_pixels(x), first, atol=0, rtol=0)
    sentences = ["a photo of a cat.", "a dog"]
    torch.testing.assert_close(fast.encode_sentences(sentences),
                               fp32.encode_sentences(sentences), atol=0, rtol=0)


def test_onnx_int8_dino_global_is_int8_and_patches_stay_exact_fp32(exports, tmp_path):
    from PIL import Image

    key = TINY["dinov2"]
    fp32 = load_encoder(key, device="cpu")
    fast = load_encoder(key, device="cpu", precision="onnx-int8")
    x = _pixels(key)
    cos = (fast.encode_pixels(x) * fp32.encode_pixels(x)).sum(-1)
    assert cos.min() > ONNX_COS and not torch.equal(fast.encode_pixels(x), fp32.encode_pixels(x))
    images = [Image.new("RGB", (40 + 8 * i, 48), (30 * i, 200, 90)) for i in range(3)]
    torch.testing.assert_close(fast.encode_patches(images), fp32.encode_patches(images),
                               atol=0, rtol=0)
    crops = fast.encode_crops(images, torch.tensor([[0.0, 0.0, 20.0, 20.0]]).expand(3, 1, 4))
    assert (crops[:, 0] * fast.encode_images(images)).sum(-1).min() > ONNX_COS  # view 0: image


def test_onnx_int8_cache_key_differs_and_features_never_mix(exports, tmp_path):
    spec = get_spec(TINY["clip_vit"])
    keys = {model_key(spec, p) for p in ("fp32", "int8", "onnx-int8")}
    assert len(keys) == 3
    from tests.test_speed import _zip

    image_set = load_image_set(_zip(tmp_path, n=3))
    cache = FeatureCache(tmp_path / "cache")
    settings = ExtractSettings(vlm=TINY["clip_vit"], vfm=TINY["dinov2"])
    exact = extract(image_set, ["a", "b"], settings, cache=cache)
    fast = extract(image_set, ["a", "b"], replace(settings, precision="onnx-int8"), cache=cache)
    assert fast.stats["cache_hits"] == 0 and fast.stats["forward_passes"] > 0
    assert not torch.equal(fast.features.vlm_image, exact.features.vlm_image)
    assert (fast.features.vlm_image * exact.features.vlm_image).sum(-1).min() > ONNX_COS
    again = extract(image_set, ["a", "b"], replace(settings, precision="onnx-int8"), cache=cache)
    assert again.stats["forward_passes"] == 0
    torch.testing.assert_close(again.features.vlm_image, fast.features.vlm_image)


def test_cli_accepts_onnx_int8_and_cuda_refuses_it():
    args = build_parser().parse_args(["run", "--images", "x", "--classes", "a,b",
                                      "--precision", "onnx-int8"])
    assert args.precision == "onnx-int8"
    with pytest.raises(ValueError, match="runs on cpu"):
        load.check_precision("onnx-int8", torch.device("cuda"))


def test_missing_onnxruntime_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    monkeypatch.setattr(load, "_LOADED_FAST", {})
    with pytest.raises(ImportError, match=r"pip install onnxruntime==[\d.]+ onnx=="):
        load_encoder(TINY["clip_vit"], device="cpu", precision="onnx-int8")
    assert load_encoder(TINY["clip_vit"], device="cpu").precision == "fp32"  # fp32 unaffected


def test_core_imports_without_onnxruntime():
    code = ("import sys; sys.modules.update(onnxruntime=None, onnx=None, onnxscript=None); "
            "import core, core.models, core.pipeline, core.cli, core.models.onnx_runtime")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unwritable_cache_dir_says_which_setting_to_change(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(blocker))
    monkeypatch.setattr(load, "_LOADED_FAST", {})
    with pytest.raises(OSError, match="FUSIONLAB_CACHE_DIR to a writable folder"):
        load_encoder(TINY["clip_vit"], device="cpu", precision="onnx-int8")
