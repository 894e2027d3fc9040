"""Staged extraction (issue 12): CLIP first, then the other models, then LaZSL's crops; the
stages share features (no forward pass twice) and the last equals a one-go extraction."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import core.pipeline.stages as stages_module
from core.data import load_image_set
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import ExtractSettings, extract
from core.pipeline.stages import extract_in_stages, stage_settings

CLASSES = ["red", "blue"]


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


@pytest.fixture()
def image_set(tmp_path):
    path = tmp_path / "set.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for c, color in enumerate([(200, 30, 30), (30, 30, 200)]):
            for i in range(3):
                arr = np.clip(np.array(color) + rng.normal(0, 20, (40, 56, 3)), 0, 255)
                buf = io.BytesIO()
                Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
                zf.writestr(f"set/{CLASSES[c]}/{i}.png", buf.getvalue())
    return load_image_set(path)


def test_stage_settings_drop_what_a_stage_does_not_need(keys):
    full = ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"], extra_vfms=(keys["dinov3"],),
                           extra_vlms=(keys["clip_rn"],), n_crops=2)
    names = [(n, s.vfms, s.vlms, s.n_crops) for n, s in stage_settings(full)]
    assert names == [("vlm", (), (keys["clip_vit"],), 0),
                     ("models", full.vfms, full.vlms, 0),
                     ("crops", full.vfms, full.vlms, 2)]
    alone = ExtractSettings(vlm=keys["clip_vit"], vfm=None)
    assert [n for n, _ in stage_settings(alone)] == ["vlm"]


def test_stages_grow_share_features_and_end_where_one_extraction_ends(keys, image_set, tmp_path):
    full = ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"], n_crops=2, batch_size=4)
    seen = []
    stages = list(extract_in_stages(image_set, CLASSES, full,
                                    cache=FeatureCache(tmp_path / "c"),
                                    progress=lambda d, t, desc: seen.append(desc)))
    assert [s.name for s in stages] == ["vlm", "models", "crops"]
    assert [s.last for s in stages] == [False, False, True]
    assert stages[0].methods == ("clip",) and "lazsl" in stages[2].methods
    assert stages[0].extraction.features.vfm_image is None
    assert stages[1].extraction.features.crops is None
    # each stage encodes only what the earlier ones lacked: the VLM's images once
    forwards = [s.extraction.stats["forward_passes"] for s in stages]
    one_go = extract(image_set, CLASSES, full, cache=None)
    assert sum(forwards) == one_go.stats["forward_passes"]
    last = stages[-1].extraction.features
    for name in ("vlm_image", "vfm_image", "crops", "text", "attributes"):
        torch.testing.assert_close(getattr(last, name), getattr(one_go.features, name))
    assert any(d.startswith("1/3 ") for d in seen) and any(d.startswith("3/3 ") for d in seen)


def test_without_a_cache_a_temporary_one_is_used_and_removed(keys, image_set, monkeypatch):
    made = []
    real = stages_module.tempfile.mkdtemp
    monkeypatch.setattr(stages_module.tempfile, "mkdtemp", lambda **kw: made.append(real(**kw))
                        or made[-1])
    full = ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"])
    stages = list(extract_in_stages(image_set, CLASSES, full, cache=None))
    assert len(stages) == 2
    one_go = extract(image_set, CLASSES, full, cache=None)
    assert sum(s.extraction.stats["forward_passes"] for s in stages) == (
        one_go.stats["forward_passes"])  # the temporary cache carried the VLM rows to stage 2
    assert made and not any(__import__("os").path.exists(p) for p in made)


def test_a_failing_stage_raises_after_the_earlier_ones_were_yielded(keys, image_set,
                                                                   monkeypatch, fail_second_call):
    with pytest.raises(ValueError, match="no-such-model"):  # bad keys: before any stage
        next(extract_in_stages(image_set, CLASSES,
                               ExtractSettings(vlm=keys["clip_vit"], vfm="no-such-model")))
    monkeypatch.setattr(stages_module, "extract", fail_second_call(
        stages_module.extract, OSError("weights of the VFM are not on this machine")))
    gen = extract_in_stages(image_set, CLASSES,
                            ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"]))
    assert next(gen).name == "vlm"
    with pytest.raises(OSError, match="VFM"):
        next(gen)
