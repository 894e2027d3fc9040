"""End-to-end pipeline with tiny random-initialised models: extraction, cache, methods, CLI,
export."""

import csv
import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core.checks import l2_normalize
from core.cli import main as cli_main
from core.config import GPUASettings, MethodSettings
from core.data import load_image_set
from core.methods.run import run_methods, sensitivity_sweep
from core.models import get_spec, load_encoder
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache, kind_key, model_key
from core.pipeline.extraction import ExtractSettings, extract, resolve_labels
from core.pipeline.features import text_hashes
from core.pipeline.segmentation import NOT_SEEN, segment

COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
FAST = MethodSettings(gpua=GPUASettings(ths_steps=5))


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


def _png(color, seed, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def image_zip(tmp_path):
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for c, (name, color) in enumerate(COLORS.items()):
            for i in range(4):
                zf.writestr(f"set/{name}/{i}.png", _png(color, 10 * c + i))
        zf.writestr("set/red/broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    return path


@pytest.fixture()
def settings(keys):
    return ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"], n_crops=3, batch_size=8)


def test_forward_pass_count_is_this_calls_own(image_zip, settings, keys):
    # Models are shared across calls in a process; each extraction reports only its own passes,
    # each model counted once though the VLM serves global features, crops and text.
    image_set = load_image_set(image_zip)
    encoders = [load_encoder(keys["clip_vit"]), load_encoder(keys["dinov2"])]
    runs = []
    for _ in range(2):
        before = [e.n_forward for e in encoders]
        stats = extract(image_set, list(COLORS), settings, cache=None).stats
        runs.append((stats["forward_passes"],
                     sum(e.n_forward - b for e, b in zip(encoders, before))))
    assert runs[0] == runs[1] and runs[0][0] == runs[0][1] > 0


def test_extract_then_cached_rerun_runs_zero_forward_passes(image_zip, settings, tmp_path):
    image_set = load_image_set(image_zip)
    cache = FeatureCache(tmp_path / "cache")
    first = extract(image_set, list(COLORS), settings, cache=cache)
    assert first.stats["encoded"] == 12 and first.stats["forward_passes"] > 0
    assert [s.name for s in first.skipped] == ["set/red/broken.png"]
    feats = first.features
    assert feats.vlm_image.shape == (12, 32) and feats.vfm_image.shape == (12, 32)
    assert feats.crops.shape == (12, 4, 32) and feats.text.shape == (3, 32)
    assert feats.attributes.shape[0] == 3 and feats.attribute_mask.any(dim=1).all()
    torch.testing.assert_close(feats.vlm_image.norm(dim=1), torch.ones(12))
    # Labels follow the folders, mapped onto the class list order.
    names = list(COLORS)
    assert [names[i] for i in feats.labels] == [it.label for it in first.items]

    second = extract(image_set, list(COLORS), settings, cache=cache)
    assert second.stats["forward_passes"] == 0 and second.stats["cache_hits"] == 12
    torch.testing.assert_close(second.features.vlm_image, feats.vlm_image)
    torch.testing.assert_close(second.features.crops, feats.crops)
    torch.testing.assert_close(second.features.text, feats.text)


def test_cache_entries_keep_their_keys_and_only_missing_kinds_are_recomputed(
    image_zip, settings, keys, tmp_path
):
    image_set = load_image_set(image_zip)
    cache = FeatureCache(tmp_path / "cache")
    first = extract(image_set, list(COLORS), settings, cache=cache)
    vlm, vfm = get_spec(keys["clip_vit"]), get_spec(keys["dinov2"])
    crops = kind_key("crops", {"n_crops": 3, "scale": [0.6, 0.9]})
    text = text_hashes("text", [json.dumps([c, list(settings.templates)]) for c in COLORS])
    # The documented layout: an existing cache must keep hitting.
    for model, kind, sha in [
        *((vlm, "global", it.sha256) for it in first.items),
        *((vfm, "global", it.sha256) for it in first.items),
        *((vlm, crops, it.sha256) for it in first.items),
        *((vlm, "text", sha) for sha in text),
    ]:
        assert cache.path_for(model_key(model), kind, sha).is_file(), (model.key, kind)

    # One VFM entry gone: only that image is decoded, and only the VFM runs, once.
    cache.path_for(model_key(vfm), "global", first.items[4].sha256).unlink()
    encoders = [load_encoder(keys["clip_vit"]), load_encoder(keys["dinov2"])]
    before = [e.n_forward for e in encoders]
    second = extract(image_set, list(COLORS), settings, cache=cache)
    assert [e.n_forward - b for e, b in zip(encoders, before)] == [0, 1]
    assert (second.stats["cache_hits"], second.stats["encoded"]) == (11, 1)
    assert second.stats["forward_passes"] == 1
    torch.testing.assert_close(second.features.vfm_image, first.features.vfm_image,
                               atol=1e-5, rtol=0)
    assert torch.equal(second.features.vlm_image, first.features.vlm_image)

    # Other crop settings are another key: the crops are recomputed, the VFM is not touched.
    before = [e.n_forward for e in encoders]
    other = extract(image_set, list(COLORS), replace(settings, n_crops=2), cache=cache)
    assert other.features.crops.shape == (12, 3, 32)
    assert encoders[1].n_forward == before[1] and encoders[0].n_forward > before[0]
    assert other.stats["cache_hits"] == 0 and other.stats["encoded"] == 12


def test_text_prototypes_are_the_template_ensemble_of_the_text_tower(image_zip, keys, tmp_path):
    templates = ("a photo of a {}.", "a drawing of a {}.", "{}")
    names = ["dark_red", "blue", "green"]
    settings = ExtractSettings(vlm=keys["clip_vit"], vfm=None, templates=templates)
    cache = FeatureCache(tmp_path / "cache")
    ex = extract(load_image_set(image_zip), names, settings, cache=cache)
    encoder = load_encoder(keys["clip_vit"])
    tokenizer = encoder._text_tokenizer()
    for k, name in enumerate(names):
        prompts = [t.replace("{}", name.replace("_", " ")) for t in templates]
        with torch.no_grad():
            each = l2_normalize(encoder.model.encode_text(tokenizer(prompts)))  # (T, d)
        manual = l2_normalize(each.mean(dim=0))
        torch.testing.assert_close(ex.features.text[k], manual, atol=1e-5, rtol=0)
    # One template: the prototype is that prompt's embedding.
    single = extract(load_image_set(image_zip), names, replace(settings, templates=("{}",)))
    torch.testing.assert_close(single.features.text,
                               encoder.encode_sentences(["dark red", "blue", "green"]),
                               atol=1e-6, rtol=0)
    # Cached by the exact prompts: a rerun hits, another template misses.
    before = encoder.n_forward
    again = extract(load_image_set(image_zip), names, settings, cache=cache)
    assert encoder.n_forward == before and torch.equal(again.features.text, ex.features.text)
    extract(load_image_set(image_zip), names, replace(settings, templates=templates[:2]),
            cache=cache)
    assert encoder.n_forward == before + 1  # one batch of 6 prompts; the images were hits


def test_crop_features_view0_equals_global_features(image_zip, settings):
    ex = extract(load_image_set(image_zip), list(COLORS), settings, cache=None)
    torch.testing.assert_close(ex.features.crops[:, 0], ex.features.vlm_image, atol=1e-5, rtol=1e-4)
    assert ex.crop_boxes.shape == (12, 3, 4)


def test_methods_on_extracted_features_and_sweep(image_zip, settings):
    ex = extract(load_image_set(image_zip), list(COLORS), settings, cache=None)
    results = run_methods(ex.features, ("clip", "otfusion", "gpua", "lazsl"), FAST)
    assert list(results) == ["clip", "otfusion", "gpua", "lazsl"]
    for res in results.values():
        assert res.probs.shape == (12, 3)
        torch.testing.assert_close(res.probs.sum(1), torch.ones(12), atol=1e-4, rtol=0)
        assert res.accuracy is not None and 0.0 <= res.accuracy <= 1.0
    rows = sensitivity_sweep(ex.features, lams=(0.0, 1.0), epss=(0.05,), settings=FAST)
    assert [(r["lam"], r["eps"]) for r in rows] == [(0.0, 0.05), (1.0, 0.05)]


def test_vlm_image_tower_as_vfm_and_no_vfm(image_zip, keys):
    image_set = load_image_set(image_zip)
    same = extract(
        image_set, list(COLORS), ExtractSettings(vlm=keys["clip_vit"], vfm=keys["clip_vit"])
    )
    torch.testing.assert_close(same.features.vfm_image, same.features.vlm_image)
    none = extract(image_set, list(COLORS), ExtractSettings(vlm=keys["clip_vit"], vfm=None))
    assert none.features.vfm_image is None
    assert run_methods(none.features, ("otfusion",), FAST)["otfusion"].probs.shape == (12, 3)


def test_several_vlms_and_vfms_are_each_extracted_once_and_fused(image_zip, keys, tmp_path):
    """Two VLMs (ViT and ResNet CLIP) and two VFMs: each model's features are exactly what a
    one-model extraction gives, a second run is all cache hits, and OTFusion fuses them all."""
    image_set = load_image_set(image_zip)
    cache = FeatureCache(tmp_path / "cache")
    several = ExtractSettings(vlm=keys["clip_vit"], vfm=keys["dinov2"],
                              extra_vlms=(keys["clip_rn"],), extra_vfms=(keys["dinov3"],))
    ex = extract(image_set, list(COLORS), several, cache=cache)
    f = ex.features
    assert len(f.extra_vlm_images) == len(f.extra_texts) == len(f.extra_vfm_images) == 1
    assert f.vlm_names == (get_spec(keys["clip_vit"]).display_name,
                           get_spec(keys["clip_rn"]).display_name)
    assert f.vfm_names[1] == get_spec(keys["dinov3"]).display_name
    alone = extract(image_set, list(COLORS),
                    ExtractSettings(vlm=keys["clip_rn"], vfm=keys["dinov3"]), cache=None)
    torch.testing.assert_close(f.extra_vlm_images[0], alone.features.vlm_image)
    torch.testing.assert_close(f.extra_texts[0], alone.features.text)
    torch.testing.assert_close(f.extra_vfm_images[0], alone.features.vfm_image)
    again = extract(image_set, list(COLORS), several, cache=cache)
    assert again.stats["forward_passes"] == 0
    result = run_methods(f, ("otfusion",), FAST)["otfusion"]
    assert len(result.sources) == 2 + 2 + 2  # two VLM image features, two VFMs, two Y terms
    with pytest.raises(ValueError, match="named twice"):
        extract(image_set, list(COLORS),
                replace(several, extra_vfms=(keys["dinov2"],)))
    with pytest.raises(ValueError, match="without a first VFM"):
        extract(image_set, list(COLORS), replace(several, vfm=None))


def test_segmentation_gives_label_maps_at_image_size(image_zip, settings, tmp_path):
    ex = extract(load_image_set(image_zip), list(COLORS), settings, cache=None)
    seg = segment(ex, [0, 5], cache=FeatureCache(tmp_path / "c"), per_class=16, ths_steps=3)
    assert len(seg.clip_labels) == 2
    for labels, probs, seen, image in zip(seg.gpua_labels, seg.gpua_probs, seg.gpua_seen,
                                          seg.images):
        assert labels.shape == seen.shape == (image.height, image.width)
        assert probs.shape == (3, image.height, image.width)
        # 64 x 48 images, tiny DINO crops 56 of 64: a band on every side is not seen.
        assert 0 < int(seen.sum()) < seen.numel()
        assert bool((labels[~seen] == NOT_SEEN).all())
        assert int(labels[seen].min()) >= 0 and int(labels[seen].max()) < 3


def test_bad_settings_and_classes_raise_clear_errors(image_zip, keys):
    image_set = load_image_set(image_zip)
    with pytest.raises(ValueError, match="at least 2 classes"):
        extract(image_set, ["red"], ExtractSettings(vlm=keys["clip_vit"], vfm=None))
    with pytest.raises(ValueError, match="vision-only"):
        extract(image_set, list(COLORS), ExtractSettings(vlm=keys["dinov2"], vfm=None))
    with pytest.raises(ValueError, match="clip-vit-b16"):  # unknown key lists the valid ones
        extract(image_set, list(COLORS), ExtractSettings(vlm="clip-vit-b17", vfm=None))


def test_resolve_labels_ignores_case_and_underscores_and_warns_on_unknown():
    labels, warnings = resolve_labels(
        ["Golden_Retriever", "cat", None, "zebra"], ["cat", "golden retriever"]
    )
    assert labels.tolist() == [1, 0, -1, -1]
    assert len(warnings) == 1 and "zebra" in warnings[0]


def test_cli_run_writes_predictions(image_zip, keys, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(
        [
            "run",
            "--images",
            str(image_zip),
            "--classes",
            "red, blue, green",
            "--vlm",
            keys["clip_vit"],
            "--vfm",
            keys["dinov2"],
            "--methods",
            "clip,otfusion,gpua",
            "--ths-steps",
            "5",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--lam",
            "0.5",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 12 and {"clip_pred", "otfusion_pred"} <= set(rows[0])
    doc = json.loads((out / "predictions.json").read_text())
    assert (
        set(doc["methods"]) == {"clip", "otfusion", "gpua"}
        and doc["skipped"][0]["file"] == "set/red/broken.png"
    )
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "THS changed" in printed and "W0 alone" in printed
    # the export says what produced it, per method that ran (CLIP's temperature scales them all)
    assert doc["solver_settings"]["otfusion"]["lam"] == 0.5
    assert set(doc["solver_settings"]) == {"clip", "otfusion", "gpua"}
    assert {"procrustes_accuracy", "changed_by_ths"} <= set(doc["methods"]["gpua"])
    for row, img in zip(rows, doc["images"]):  # CSV and JSON describe the same predictions
        assert row["otfusion_pred"] == img["otfusion_pred"] == img["otfusion_topk"][0][0]
        assert float(row["otfusion_confidence"]) == img["otfusion_topk"][0][1]


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    code = cli_main(["run", "--images", str(tmp_path / "missing"), "--classes", "a, b"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
