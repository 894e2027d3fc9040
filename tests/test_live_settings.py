"""What each method actually receives, through every entry point: run_methods, the CLI, the eval
harness and the app's handlers.

The solvers are wrapped where ``core.methods.run`` calls them (``otfusion``, ``fit_gpua``,
``lazsl_scores``); the wrappers record the tensors and keywords and call the real solver. Each
test sets non-default values at the entry point and checks that exactly those arrive, with the
right features; and that, when nothing is set, what arrives is ``core.config``'s defaults. (A wrong
method configuration once slipped through because nothing tested this layer.)
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.methods.run as run_module
import core.pipeline.extraction as extraction_module
import core.pipeline.stages as stages_module
from core import config
from core.config import (
    GPUASettings,
    LaZSLSettings,
    MethodSettings,
    OTFusionSettings,
    ZeroShotSettings,
)
from core.methods.gpua.fit import concat_features
from core.methods.run import METHODS, FeatureSet, run_methods
from core.methods.zeroshot import zeroshot_probs
from core.models import load_encoder
from core.models.tiny import tiny_test_models
from core.synthetic import make_synthetic

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")

# Non-default values for every knob an entry point exposes (each differs from core.config's).
CUSTOM = MethodSettings(
    clip=ZeroShotSettings(temperature=50.0),
    otfusion=OTFusionSettings(lam=0.5, eps=0.05, n_iter=4, sinkhorn_iter=2, variant="concat",
                              setting="vfm_only", weights="adaptive"),
    gpua=GPUASettings(lam=0.7, eps=0.02, targets="hard", ths_steps=7, ths_k=2,
                      reorthogonalize=False, seed=3, n_ucm_iter=2),
    lazsl=LaZSLSettings(theta=0.6, eps=0.2, recipe="official"),
)
GPUA_KEYWORDS = {"vfm_features", "vlm_features", "text_features", "recipe", "lam", "eps",
                 "n_ucm_iter", "targets", "ths_steps", "ths_k", "reorthogonalize", "generator",
                 "loss", "mining"}
COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}


class Spy:
    """Wraps the solvers as ``core.methods.run`` sees them; records (args, kwargs) per call."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, list] = {"otfusion": [], "fit_gpua": [], "lazsl_scores": []}
        for name in self.calls:
            real = getattr(run_module, name)
            monkeypatch.setattr(run_module, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def spy(*args, **kwargs):
            self.calls[name].append((args, kwargs))
            return real(*args, **kwargs)

        return spy

    def one(self, name):
        assert len(self.calls[name]) == 1, f"{name} called {len(self.calls[name])} times"
        return self.calls[name][0]


@pytest.fixture()
def spy(monkeypatch):
    return Spy(monkeypatch)


def _feature_set(n=60, k=4, m=5, a=3, *, vfm=True, seed=0) -> FeatureSet:
    d = make_synthetic(n, k, seed=seed, d_vlm=16, d_vfm=24, difficulty="hard")
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize
    crops = unit(d.vlm_image[:, None] + 0.3 * torch.randn(n, m, 16, generator=g), dim=-1)
    attrs = unit(d.vlm_text[:, None] + 0.3 * torch.randn(k, a, 16, generator=g), dim=-1)
    mask = torch.ones(k, a, dtype=torch.bool)
    mask[0, -1] = False
    return FeatureSet(vlm_image=d.vlm_image, text=d.vlm_text,
                      vfm_image=d.vfm_image if vfm else None,
                      crops=torch.cat([d.vlm_image[:, None], crops], dim=1), attributes=attrs,
                      attribute_mask=mask, labels=d.labels)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor, or (where an entry point concatenates chunks) equal values and shape."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


def _check_otfusion(call, feats: FeatureSet, s: MethodSettings, *, labels="same"):
    args, kw = call
    assert args == ()
    o = s.otfusion
    sources = [v for _, v in run_module.otfusion_sources(feats, o.setting)]
    if o.variant != "semantic_only":
        assert len(kw["vfm_features"]) == len(sources)
        assert all(_same(a, b) for a, b in zip(kw["vfm_features"], sources))
    if o.setting == "main" and not feats.extra_vlm_images:  # Table 1: CLIP's image features,
        assert _same(kw["vfm_features"][0], feats.vlm_image)  # then the VFM
        assert [_same(v, feats.vfm_image) for v in kw["vfm_features"]] == (
            [False, True] if feats.vfm_image is not None else [False])
    ys = kw["vlm_probs"]
    assert len(ys) == 1 + len(feats.extra_vlm_images)
    assert _same(ys[0], zeroshot_probs(feats.vlm_image, feats.text,
                                       temperature=s.clip.temperature))
    assert (kw["lam"], kw["eps"], kw["n_iter"], kw["sinkhorn_iter"], kw["variant"],
            kw["recipe"], kw["weights"]) == (o.lam, o.eps, o.n_iter, o.sinkhorn_iter, o.variant,
                                             o.recipe, o.weights)
    if labels == "same":
        assert _same(kw["labels"], feats.labels)
    elif labels is None:
        assert kw["labels"] is None


def _check_gpua(call, pool: FeatureSet, s: GPUASettings, *, text=None):
    args, kw = call
    assert args == () and set(kw) == GPUA_KEYWORDS  # no other knob is passed (temperature: P0
    # uses fit_gpua's own default, config.TEMPERATURE; see core.methods.run.fit_gpua_with)
    z = kw["vfm_features"]
    if s.concat_vlm and pool.vfm_image is not None:  # Z = [VFM, VLM], blockwise renormalised
        assert z.shape == (pool.n_images, pool.vfm_image.shape[1] + pool.vlm_image.shape[1])
        assert _same(z, concat_features(pool.vfm_image, pool.vlm_image,
                                        renormalize=s.recipe == "paper"))
    else:
        assert _same(z, pool.vfm_or_vlm())
    assert _same(kw["vlm_features"], pool.vlm_image)
    assert _same(kw["text_features"], pool.text if text is None else text)
    assert (kw["recipe"], kw["lam"], kw["eps"], kw["n_ucm_iter"], kw["targets"], kw["ths_steps"],
            kw["ths_k"], kw["reorthogonalize"]) == (s.recipe, s.lam, s.eps, s.n_ucm_iter,
                                                    s.targets, s.ths_steps, s.ths_k,
                                                    s.reorthogonalize)
    assert kw["generator"].initial_seed() == s.seed


def _check_lazsl(call, feats: FeatureSet, s: LaZSLSettings, n_crops: int):
    (glob, crops, attrs, mask), kw = call
    assert _same(glob, feats.crops[:, 0]) and _same(crops, feats.crops[:, 1:])
    assert crops.shape == (feats.n_images, n_crops, feats.vlm_image.shape[1])
    assert _same(attrs, feats.attributes) and _same(mask, feats.attribute_mask)
    assert (kw["theta"], kw["eps"], kw["recipe"]) == (s.theta, s.eps, s.recipe)


# ----------------------------------------------------------------------------- run_methods


@pytest.mark.parametrize("settings", [None, CUSTOM], ids=["defaults", "custom"])
def test_run_methods_passes_each_method_its_own_settings_and_features(spy, settings):
    feats = _feature_set()
    results = run_methods(feats, METHODS, settings)
    s = settings or MethodSettings()  # the defaults are core.config's
    _check_otfusion(spy.one("otfusion"), feats, s)
    _check_gpua(spy.one("fit_gpua"), feats, s.gpua)
    _check_lazsl(spy.one("lazsl_scores"), feats, s.lazsl, n_crops=5)
    # every probability comes out of the VLM's temperature
    t = s.clip.temperature
    torch.testing.assert_close(results["clip"].probs,
                               zeroshot_probs(feats.vlm_image, feats.text, temperature=t))
    lazsl = results["lazsl"]
    torch.testing.assert_close(lazsl.probs, torch.softmax(t * lazsl.details.scores, dim=-1))


def test_gpua_inputs_follow_concat_vlm_and_a_missing_vfm(spy):
    feats = _feature_set()
    run_methods(feats, ("gpua",), CUSTOM.replace(gpua={"concat_vlm": False}))
    _check_gpua(spy.calls["fit_gpua"][-1], feats, CUSTOM.replace(gpua={"concat_vlm": False}).gpua)
    assert spy.calls["fit_gpua"][-1][1]["vfm_features"] is feats.vfm_image
    clip_only = _feature_set(vfm=False)
    run_methods(clip_only, ("otfusion", "gpua"), CUSTOM.replace(otfusion={"setting": "main"}))
    assert spy.calls["fit_gpua"][-1][1]["vfm_features"] is clip_only.vlm_image  # not [X, X]
    (only,) = spy.calls["otfusion"][-1][1]["vfm_features"]  # main setting without a VFM
    assert only is clip_only.vlm_image


def test_unlabelled_images_keep_otfusion_history_label_free(spy):
    feats = _feature_set()
    labels = feats.labels.clone()
    labels[0] = -1
    partly = dataclasses.replace(feats, labels=labels)
    run_methods(partly, ("otfusion",), CUSTOM)
    _check_otfusion(spy.one("otfusion"), partly, CUSTOM, labels=False)


def test_sensitivity_sweep_varies_only_lam_and_eps(spy):
    feats = _feature_set()
    run_module.sensitivity_sweep(feats, lams=(0.1, 0.9), epss=(0.03,), settings=CUSTOM)
    calls = spy.calls["otfusion"]
    assert [(kw["lam"], kw["eps"]) for _, kw in calls] == [(0.1, 0.03), (0.9, 0.03)]
    assert all((kw["n_iter"], kw["variant"]) == (4, "concat") for _, kw in calls)


def test_run_methods_rejects_the_old_flat_settings():
    with pytest.raises(ValueError, match="MethodSettings"):
        run_methods(_feature_set(), ("clip",), {"otfusion_lam": 0.5})


# ----------------------------------------------------------------------------- the CLI


def _png(color, seed, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


@pytest.fixture(scope="module")
def image_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("live") / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for c, (name, color) in enumerate(COLORS.items()):
            for i in range(4):
                zf.writestr(f"set/{name}/{i}.png", _png(color, 10 * c + i))
    return path


@pytest.fixture()
def extractions(monkeypatch):
    """Every ``extract`` call's settings and result (entry points import it at call time)."""
    seen = []
    real = extraction_module.extract

    def spy(image_set, class_names, settings=None, **kw):
        out = real(image_set, class_names, settings, **kw)
        seen.append((settings, out))
        return out

    monkeypatch.setattr(extraction_module, "extract", spy)
    monkeypatch.setattr(stages_module, "extract", spy)  # the CLI extracts in stages
    return seen


CLI_CUSTOM = ["--lam", "0.5", "--eps", "0.05", "--n-iter", "4", "--variant", "concat",
              "--otfusion-setting", "vfm_only", "--otfusion-weights", "adaptive",
              "--gpua-lam", "0.7", "--gpua-eps", "0.02", "--gpua-targets", "hard",
              "--gpua-ucm-iter", "2", "--ths-steps", "7", "--theta", "0.6",
              "--lazsl-recipe", "official", "--n-crops", "3"]
# Recipes as the base, explicit flags on top.
CLI_RECIPES = ["--otfusion-recipe", "official", "--otfusion-lam", "0.4", "--gpua-recipe",
               "official", "--ths-steps", "3", "--lazsl-recipe", "official"]
CLI_EXPECTED = {
    "defaults": MethodSettings(),
    "custom": MethodSettings().replace(
        otfusion={"lam": 0.5, "eps": 0.05, "n_iter": 4, "variant": "concat",
                  "setting": "vfm_only", "weights": "adaptive"},
        gpua={"lam": 0.7, "eps": 0.02, "targets": "hard", "n_ucm_iter": 2, "ths_steps": 7},
        lazsl={"theta": 0.6, "recipe": "official"}),
    "recipes": MethodSettings(
        otfusion=dataclasses.replace(config.OTFUSION_RECIPES["official"], lam=0.4),
        gpua=dataclasses.replace(config.GPUA_RECIPES["official"], ths_steps=3),
        lazsl=config.LAZSL_RECIPES["official"]),
}


@pytest.mark.parametrize("case, flags", [("defaults", []), ("custom", CLI_CUSTOM),
                                         ("recipes", CLI_RECIPES)])
def test_cli_run_passes_the_flags_to_the_methods(spy, extractions, keys, image_zip, tmp_path,
                                                 case, flags):
    from core.cli import main

    code = main(["run", "--images", str(image_zip), "--classes", ", ".join(COLORS),
                 "--vlm", keys["clip_vit"], "--vfm", keys["dinov2"], "--no-cache",
                 "--methods", "clip,otfusion,gpua,lazsl", "--out", str(tmp_path / "out"),
                 *flags])
    assert code == 0
    # CLIP first, then the VFM, then LaZSL's crops: the last stage has every setting
    assert [(st.vfm, st.n_crops > 0) for st, _ in extractions] == [
        (None, False), (keys["dinov2"], False), (keys["dinov2"], True)]
    extract_settings, ex = extractions[-1]
    n_crops = 3 if case == "custom" else config.LAZSL_CROPS
    assert extract_settings.n_crops == n_crops
    assert (extract_settings.vlm, extract_settings.vfm) == (keys["clip_vit"], keys["dinov2"])
    expected = CLI_EXPECTED[case]
    # the LaZSL recipe also decides how the attribute sentences are encoded
    assert extract_settings.lazsl_recipe == expected.lazsl.recipe
    feats = ex.features
    _check_otfusion(spy.one("otfusion"), feats, expected)
    _check_gpua(spy.one("fit_gpua"), feats, expected.gpua)
    _check_lazsl(spy.one("lazsl_scores"), feats, expected.lazsl, n_crops=n_crops)


def test_cli_run_fuses_every_model_of_the_comma_lists_and_says_so(spy, extractions, keys,
                                                                  image_zip, tmp_path, capsys):
    import csv
    import json

    from core.cli import main
    from core.models import get_spec

    out = tmp_path / "out"
    code = main(["run", "--images", str(image_zip), "--classes", ", ".join(COLORS), "--vlm",
                 f"{keys['clip_vit']}, {keys['clip_rn']}", "--vfm",
                 f"{keys['dinov2']},{keys['dinov3']}", "--no-cache", "--methods",
                 "clip,otfusion,gpua", "--ths-steps", "2", "--out", str(out)])
    assert code == 0
    assert [len(st.vlms) + len(st.vfms) for st, _ in extractions] == [1, 4]  # CLIP, then all
    settings, ex = extractions[-1]
    assert (settings.vlm, settings.extra_vlms) == (keys["clip_vit"], (keys["clip_rn"],))
    assert (settings.vfm, settings.extra_vfms) == (keys["dinov2"], (keys["dinov3"],))
    feats = ex.features
    _check_otfusion(spy.one("otfusion"), feats, MethodSettings())  # all four visual sources
    assert len(spy.one("otfusion")[1]["vfm_features"]) == 4
    _check_gpua(spy.one("fit_gpua"), feats, GPUASettings(ths_steps=2))  # first VLM and VFM
    names = [get_spec(keys[k]).display_name for k in ("clip_vit", "clip_rn", "dinov2", "dinov3")]
    sources = [f"{names[0]} image", f"{names[1]} image", names[2], names[3], f"Y: {names[0]}",
               f"Y: {names[1]}"]
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["vlms"] == [keys["clip_vit"], keys["clip_rn"]]
    assert doc["vfms"] == [keys["dinov2"], keys["dinov3"]]
    otf = doc["methods"]["otfusion"]
    assert (otf["recipe"], otf["setting"], otf["variant"], otf["sources"]) == (
        "paper", "main", "joint", sources)
    assert doc["methods"]["gpua"]["sources"][0] == f"[{names[2]}, {names[0]} image]"
    line = "paper recipe; main setting (joint); sources: " + ", ".join(sources)
    assert line in capsys.readouterr().out  # the printed summary says it too
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert {r["otfusion_run"] for r in rows} == {line}
    # a model listed twice is a user error, named as such (exit code 2, no traceback)
    assert main(["run", "--images", str(image_zip), "--classes", ", ".join(COLORS), "--vfm",
                 f"{keys['dinov2']},{keys['dinov2']}", "--no-cache", "--out", str(out)]) == 2
    assert "named twice" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the eval harness


def _folder_dataset(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for c, color in COLORS.items():
        for split, n in (("train", 3), ("test", 2)):
            for i in range(n):
                arr = np.clip(np.array(color) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(path)
    return root


def test_eval_harness_passes_the_config_to_the_methods(spy, extractions, keys, tmp_path):
    from core.eval.harness import EvalConfig, evaluate_dataset

    folder = _folder_dataset(tmp_path / "colours")
    cfg = EvalConfig(vlm=keys["clip_vit"], vfm=keys["dinov2"], solver=CUSTOM, seed=5, n_crops=3,
                     lazsl_class_names=True, batch_size=8)
    report = evaluate_dataset(str(folder), None, cfg)
    assert all(r.status == "ok" for r in report.rows), report.rows
    (test_settings, test_ex), (train_settings, train_ex) = extractions
    assert test_settings.n_crops == 3 and train_settings.n_crops == 0  # crops on the test split
    assert test_settings.lazsl_recipe == "official"  # the sentence rule of the LaZSL recipe
    expected = CUSTOM.replace(gpua={"seed": 5})  # the harness's seed drives GPUA's THS too
    test = test_ex.features
    # OTFusion once per recipe (both by default), each with every knob that was set
    paper_call, official_call = spy.calls["otfusion"]
    _check_otfusion(paper_call, test, expected, labels="given")
    official = expected.replace(otfusion=config.with_recipe(expected.otfusion, "official"))
    assert official.otfusion.eps == 0.05 and official.otfusion.lam is None  # the user's eps,
    _check_otfusion(official_call, test, official, labels="given")  # the recipe's lam
    # labels: the harness's come from the split file, so only check they were given
    assert paper_call[1]["labels"].shape == (test.n_images,)
    _check_lazsl(spy.one("lazsl_scores"), test, expected.lazsl, n_crops=3)
    # GPUA is fitted on the train split's features, against the test split's prototypes
    _check_gpua(spy.one("fit_gpua"), train_ex.features, expected.gpua, text=test.text)
    assert report.settings["solver"] == expected.as_dict()  # the report says what ran
    otf = report.row("otfusion:paper")
    assert otf.protocol == "vfm_only-concat"  # no paper ran that combination
    assert len(otf.sources) == 2 and otf.sources[1].startswith("Y: ")  # the VFM, then Y


def test_eval_cli_flags_reach_the_eval_config():
    from core.cli import build_parser, eval_config_from_args

    for case, flags in (("custom", CLI_CUSTOM), ("recipes", CLI_RECIPES)):
        args = build_parser().parse_args(["eval", "--dataset", "x", *flags])
        assert eval_config_from_args(args).solver == CLI_EXPECTED[case], case


def test_eval_harness_defaults_are_configs(spy, extractions, keys, tmp_path):
    from core.eval.harness import EvalConfig, evaluate_dataset

    folder = _folder_dataset(tmp_path / "colours")
    cfg = EvalConfig(vlm=keys["clip_vit"], vfm=keys["dinov2"], methods=("otfusion", "lazsl"),
                     lazsl_class_names=True)
    report = evaluate_dataset(str(folder), None, cfg)
    (test_settings, test_ex), = extractions
    assert test_settings.n_crops == config.LAZSL_CROPS
    assert test_settings.batch_size == config.BATCH_SIZE
    assert test_settings.lazsl_recipe == LaZSLSettings().recipe
    paper_call, official_call = spy.calls["otfusion"]  # config's recipes, in order
    _check_otfusion(paper_call, test_ex.features, MethodSettings(), labels="given")
    _check_otfusion(official_call, test_ex.features,
                    MethodSettings(otfusion=config.OTFUSION_RECIPES["official"]), labels="given")
    assert [r.protocol for r in report.rows if r.method == "otfusion"] == ["joint", "joint"]
    _check_lazsl(spy.one("lazsl_scores"), test_ex.features, LaZSLSettings(),
                 n_crops=config.LAZSL_CROPS)
    assert any(f"{config.LAZSL_CROPS} crops per image (paper: {config.LAZSL_CROPS_PAPER}" in n
               for n in report.notes)


def test_eval_harness_fuses_every_model_and_fits_gpua_on_the_first(spy, extractions, keys,
                                                                    tmp_path):
    from core.eval.harness import EvalConfig, evaluate_dataset

    folder = _folder_dataset(tmp_path / "colours")
    cfg = EvalConfig(vlm=keys["clip_vit"], extra_vlms=(keys["clip_rn"],), vfm=keys["dinov2"],
                     extra_vfms=(keys["dinov3"],), methods=("otfusion", "gpua"),
                     otfusion_recipes=("official",), seed=5, solver=CUSTOM.replace(
                         otfusion={"setting": "main", "variant": "joint"}, gpua={"seed": 5}))
    report = evaluate_dataset(str(folder), None, cfg)
    (test_settings, test_ex), (train_settings, train_ex) = extractions
    assert test_settings.vlms == (keys["clip_vit"], keys["clip_rn"])
    assert test_settings.vfms == (keys["dinov2"], keys["dinov3"])
    assert train_settings.vlms == (keys["clip_vit"],)  # GPUA's pool: the first models only
    assert train_settings.vfms == (keys["dinov2"],)
    test = test_ex.features
    expected = cfg.solver.replace(otfusion=config.with_recipe(cfg.solver.otfusion, "official"))
    _check_otfusion(spy.one("otfusion"), test, expected, labels="given")
    assert len(spy.one("otfusion")[1]["vfm_features"]) == 4
    _check_gpua(spy.one("fit_gpua"), train_ex.features, cfg.solver.gpua, text=test.text)
    assert len(report.row("otfusion").sources) == 6 and report.row("otfusion").protocol == "joint"


# ----------------------------------------------------------------------------- the app


@pytest.fixture()
def cb(monkeypatch, extractions):
    """demo.run, its ``extract`` (imported at module level there) spied as well."""
    from demo import run

    monkeypatch.setattr(run, "extract", extraction_module.extract)
    return run


def test_app_run_and_resolve_pass_the_controls_to_the_methods(spy, extractions, cb, keys,
                                                              image_zip, tmp_path):

    controls = {"lam": 0.5, "eps": 0.05, "n_iter": 4.0, "gpua_lam": 0.7, "gpua_eps": 0.02,
                "gpua_targets": "hard", "gpua_ths_steps": 7.0, "lazsl_theta": 0.6}
    out = cb.run({"files": [str(image_zip)], "vlm": keys["clip_vit"], "vfm": keys["dinov2"],
                  "methods": ["otfusion", "gpua", "lazsl"], "n_crops": 3.0, **controls},
                 cache_dir=str(tmp_path / "cache"))
    expected = MethodSettings().replace(
        otfusion={"lam": 0.5, "eps": 0.05, "n_iter": 4},
        gpua={"lam": 0.7, "eps": 0.02, "targets": "hard", "ths_steps": 7},
        lazsl={"theta": 0.6})
    assert out.session.settings == expected
    assert isinstance(out.session.settings.otfusion.n_iter, int)  # sliders send floats
    extract_settings, ex = extractions[-1]  # the Run's last stage has every setting
    n_extractions = len(extractions)
    assert extract_settings.n_crops == 3
    feats = ex.features
    _check_otfusion(spy.one("otfusion"), feats, expected)
    _check_gpua(spy.one("fit_gpua"), feats, expected.gpua)
    _check_lazsl(spy.one("lazsl_scores"), feats, expected.lazsl, n_crops=3)

    # a slider re-solves its method only, with the session's other settings unchanged
    again = cb.resolve("otfusion", out.session, {"lam": 0.2})
    assert len(spy.calls["otfusion"]) == 2 and len(spy.calls["fit_gpua"]) == 1
    _check_otfusion(spy.calls["otfusion"][-1], feats, expected.replace(otfusion={"lam": 0.2}))
    cb.resolve("gpua", again.session, {"gpua_targets": "soft"})
    _check_gpua(spy.calls["fit_gpua"][-1], feats,
                expected.replace(gpua={"targets": "soft"}).gpua)
    assert len(spy.calls["otfusion"]) == 2 and len(extractions) == n_extractions  # no encoding


def test_app_run_defaults_are_configs(spy, extractions, cb, keys, image_zip, tmp_path):

    out = cb.run({"files": [str(image_zip)], "vlm": keys["clip_vit"], "vfm": keys["dinov2"],
                  "methods": ["otfusion", "lazsl"]}, cache_dir=str(tmp_path / "cache"))
    assert out.session.settings == MethodSettings()
    extract_settings, ex = extractions[-1]  # the Run's last stage has every setting
    assert extract_settings.n_crops == config.LAZSL_CROPS
    assert extract_settings.templates == (config.DEFAULT_TEMPLATE,)
    _check_otfusion(spy.one("otfusion"), ex.features, MethodSettings())
    _check_lazsl(spy.one("lazsl_scores"), ex.features, LaZSLSettings(),
                 n_crops=config.LAZSL_CROPS)


def test_app_rejects_unknown_inputs_and_controls_of_another_method(cb, image_zip):
    import gradio as gr

    with pytest.raises(gr.Error) as excinfo:
        cb.run({"files": [str(image_zip)], "lambda": 0.5})
    assert "Unknown input" in str(excinfo.value.message)
    with pytest.raises(ValueError, match="GPUA targets: expected one of soft, hard"):
        cb.method_settings({"gpua_targets": "medium"})
    session = cb.load_synthetic(30, 3, 0, d_vlm=8, d_vfm=8).session
    with pytest.raises(gr.Error) as excinfo:
        cb.resolve("otfusion", session, {"gpua_lam": 0.5})
    assert "belong to another method" in str(excinfo.value.message)


def _two_of_each(feats: FeatureSet) -> FeatureSet:
    """``feats`` with a second VLM and a second VFM (perturbed copies, own names)."""
    g = torch.Generator().manual_seed(7)
    unit = torch.nn.functional.normalize

    def other(x):
        return unit(x + 0.5 * torch.randn(x.shape, generator=g), dim=-1)

    return dataclasses.replace(
        feats, extra_vlm_images=(other(feats.vlm_image),), extra_texts=(other(feats.text),),
        extra_vfm_images=(other(feats.vfm_image),), vlm_names=("CLIP", "SigLIP"),
        vfm_names=("DINOv2", "DINOv3"))


@pytest.mark.parametrize("setting, expected", [
    ("main", ["CLIP image", "SigLIP image", "DINOv2", "DINOv3"]),
    ("vfm_only", ["DINOv2", "DINOv3"]),
    ("vlm_only", ["CLIP image", "SigLIP image"]),
])
def test_otfusion_settings_fuse_their_sources_and_every_vlm(spy, setting, expected):
    feats = _two_of_each(_feature_set())
    s = MethodSettings(otfusion=config.OTFUSION_RECIPES["official"]).replace(
        otfusion={"setting": setting})
    result = run_methods(feats, ("otfusion",), s)["otfusion"]
    _check_otfusion(spy.one("otfusion"), feats, s)
    images = {"CLIP image": feats.vlm_image, "SigLIP image": feats.extra_vlm_images[0],
              "DINOv2": feats.vfm_image, "DINOv3": feats.extra_vfm_images[0]}
    passed = spy.one("otfusion")[1]["vfm_features"]
    assert all(a is images[name] for a, name in zip(passed, expected, strict=True))
    assert result.sources == (*expected, "Y: CLIP", "Y: SigLIP")
    # two VLMs and several visual sources: the official recipe's adaptive weights have groups
    weights = [step.lam for step in result.details.history]
    assert all(len(w) == 2 and abs(sum(w) - 1) < 1e-6 for w in weights)


def test_vfm_only_without_a_vfm_says_what_to_pick():
    with pytest.raises(ValueError, match="needs a VFM"):
        run_methods(_feature_set(vfm=False), ("otfusion",),
                    MethodSettings(otfusion=OTFusionSettings(setting="vfm_only")))


def test_official_gpua_recipe_reaches_the_solver_with_its_unrenormalised_z(spy):
    feats = _feature_set()
    s = MethodSettings(gpua=dataclasses.replace(config.GPUA_RECIPES["official"], ths_steps=3))
    result = run_methods(feats, ("gpua",), s)["gpua"]
    _check_gpua(spy.one("fit_gpua"), feats, s.gpua)
    z = spy.one("fit_gpua")[1]["vfm_features"]
    torch.testing.assert_close(z.norm(dim=-1), torch.full((feats.n_images,), 2 ** 0.5))
    assert result.sources[0] == "[VFM 1, VLM 1 image]"


def test_app_recipe_setting_and_model_controls_reach_the_solvers(spy, extractions, cb, keys,
                                                                 image_zip, tmp_path):
    """Two VLMs and two VFMs, and every recipe control of the app, from the Run to the solvers;
    then each recipe radio switches its method (the knobs its recipe decides take its values)."""
    import json

    import gradio as gr

    attributes = tmp_path / "attributes.json"  # "antlers": the two sentence rules differ on it
    attributes.write_text(json.dumps({"red": ["antlers", "a warm colour"],
                                      "blue": ["cold water"], "green": ["leaves"]}))
    controls = {"otfusion_recipe": "official", "otfusion_setting": "main",
                "otfusion_variant": "concat", "otfusion_weights": "fixed", "lam_uniform": True,
                "lam": 0.5, "eps": 0.05, "gpua_recipe": "official", "gpua_ths_steps": 7.0,
                "lazsl_recipe": "official", "lazsl_theta": 0.6}
    vlms, vfms = [keys["clip_vit"], keys["clip_rn"]], [keys["dinov2"], keys["dinov3"]]
    out = cb.run({"files": [str(image_zip)], "vlm": vlms, "vfm": vfms, "n_crops": 3.0,
                  "methods": ["otfusion", "gpua", "lazsl"], "attributes_file": str(attributes),
                  **controls}, cache_dir=str(tmp_path / "cache"))
    official = {m: config.recipe(m, "official") for m in ("otfusion", "gpua", "lazsl")}
    expected = MethodSettings(**official).replace(
        otfusion={"variant": "concat", "weights": "fixed", "lam": None, "eps": 0.05},
        gpua={"ths_steps": 7}, lazsl={"theta": 0.6})
    assert out.session.settings == expected
    extract_settings, ex = extractions[-1]  # the Run's last stage has every setting
    n_extractions = len(extractions)
    assert (extract_settings.vlms, extract_settings.vfms) == (tuple(vlms), tuple(vfms))
    assert extract_settings.lazsl_recipe == "official"
    assert "red, which is antlers" in ex.attribute_sentences  # the public code's rule
    feats = ex.features
    assert len(feats.extra_vlm_images) == 1 and len(feats.extra_vfm_images) == 1
    _check_otfusion(spy.one("otfusion"), feats, expected)
    assert len(spy.one("otfusion")[1]["vfm_features"]) == 4  # 2 VLM images + 2 VFMs
    _check_gpua(spy.one("fit_gpua"), feats, expected.gpua)
    _check_lazsl(spy.one("lazsl_scores"), feats, expected.lazsl, n_crops=3)

    # The OTFusion radio back to "paper": λ, weights and Sinkhorn iterations take the paper's
    # values (the controls show them), ε and the variant keep the user's.
    back = cb.switch_recipe("otfusion", out.session,
                            {**{k: v for k, v in controls.items() if cb.CONTROLS[k][0] ==
                                "otfusion"}, "otfusion_recipe": "paper"})
    paper = expected.replace(otfusion=config.with_recipe(expected.otfusion, "paper"))
    assert paper.otfusion.lam == 0.8 and paper.otfusion.eps == 0.05
    assert back.session.settings == paper
    _check_otfusion(spy.calls["otfusion"][-1], feats, paper)
    assert back.lam["value"] == 0.8 and back.lam["interactive"] is True
    assert back.lam_uniform["value"] is False and back.otfusion_weights["value"] == "fixed"
    assert back.gpua_lam == gr.skip() and back.session.results["gpua"] is \
        out.session.results["gpua"]

    # GPUA's radio: eps, targets, THS steps from the paper recipe, λ kept.
    g = cb.switch_recipe("gpua", back.session, {"gpua_recipe": "paper", "gpua_lam": 0.7,
                                                "gpua_eps": 0.05, "gpua_targets": "hard",
                                                "gpua_ths_steps": 7})
    assert g.session.settings.gpua == config.GPUASettings(lam=0.7)
    _check_gpua(spy.calls["fit_gpua"][-1], feats, g.session.settings.gpua)
    assert g.gpua_targets["value"] == "soft" and g.gpua_ths_steps["value"] == 200

    # LaZSL's radio re-encodes the attribute sentences (text only) and re-scores.
    encoders = [load_encoder(k) for k in (*vlms, *vfms)]
    forwards = [e.n_forward for e in encoders]
    z = cb.switch_recipe("lazsl", g.session, {"lazsl_recipe": "paper", "lazsl_theta": 0.6})
    new = z.session.extraction
    assert "red, which has antlers" in new.attribute_sentences
    assert new.settings.lazsl_recipe == "paper" and z.session.settings.lazsl.recipe == "paper"
    assert new.features.vlm_image is feats.vlm_image and new.features.crops is feats.crops
    assert [e.n_forward for e in encoders][1:] == forwards[1:]  # no other model ran
    _check_lazsl(spy.calls["lazsl_scores"][-1], new.features, z.session.settings.lazsl, n_crops=3)
    assert len(extractions) == n_extractions  # no new Run

    # A recipe radio before any Run only updates the controls.
    early = cb.switch_recipe("otfusion", None, {"otfusion_recipe": "official", "lam": 0.3})
    assert early.session == gr.skip() and early.lam_uniform["value"] is True
    assert early.lam["interactive"] is False and early.otfusion_weights["value"] == "adaptive"


def test_app_controls_validate_recipes_and_map_lam_uniform(cb):
    with pytest.raises(ValueError, match="OTFusion recipe: expected one of paper, official"):
        cb.method_settings({"otfusion_recipe": "authors"})
    with pytest.raises(ValueError, match="OTFusion setting: expected one of main"):
        cb.method_settings({"otfusion_setting": "dino"})
    official = cb.method_settings({"otfusion_recipe": "official"})
    assert official.otfusion == config.recipe("otfusion", "official")
    # unticking λ uniform takes the slider's λ, or the paper's when no slider value comes
    assert cb.method_settings({"lam_uniform": False}, base=official).otfusion.lam == 0.8
    assert cb.method_settings({"lam_uniform": False, "lam": 0.3},
                              base=official).otfusion.lam == 0.3
    assert cb.method_settings({"lam_uniform": True, "lam": 0.3}).otfusion.lam is None
