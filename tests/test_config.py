"""core.config is the one source of defaults: its dataclasses behave, and no entry point (CLI
parser, eval config, extraction settings, solver signatures, the app's controls) restates a
value that differs from it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from core import config
from core.config import (
    GPUASettings,
    LaZSLSettings,
    MethodSettings,
    OTFusionSettings,
    ZeroShotSettings,
    recipe,
    ui_range,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the dataclasses


def test_config_imports_only_the_standard_library():
    tree = ast.parse((ROOT / "core" / "config.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "dataclasses"}, imported


def test_settings_are_frozen_hashable_and_nested_per_method():
    from core.methods.run import METHODS

    assert tuple(f.name for f in fields(MethodSettings)) == METHODS  # one field per method
    s = MethodSettings()
    with pytest.raises(FrozenInstanceError):
        s.otfusion.lam = 0.5
    assert hash(s) == hash(MethodSettings())  # usable as a memo key
    record = s.as_dict()
    assert set(record) == {"clip", "otfusion", "gpua", "lazsl"}
    assert record["otfusion"]["lam"] == OTFusionSettings().lam
    assert record["gpua"]["seed"] == config.SEED


def test_replace_changes_only_the_named_fields_and_rejects_unknown_ones():
    s = MethodSettings()
    t = s.replace(otfusion={"lam": 0.3}, gpua=GPUASettings(ths_steps=5))
    assert t.otfusion == OTFusionSettings(lam=0.3) and t.gpua == GPUASettings(ths_steps=5)
    assert t.clip is s.clip and t.lazsl is s.lazsl and s == MethodSettings()
    with pytest.raises(ValueError, match="unknown method"):
        s.replace(sinkhorn={"eps": 1})
    with pytest.raises(ValueError, match="unknown field.*'lambda'"):
        s.replace(otfusion={"lambda": 0.3})
    with pytest.raises(ValueError, match="expected a OTFusionSettings"):
        MethodSettings(otfusion=GPUASettings())


def test_recipes_are_named_sets_of_defaults():
    assert recipe("otfusion") == OTFusionSettings() and recipe("gpua", "paper") == GPUASettings()
    with pytest.raises(ValueError, match="paper"):
        recipe("otfusion", "nope")
    with pytest.raises(ValueError, match="otfusion, gpua, lazsl"):
        recipe("clip")
    for method in ("otfusion", "gpua", "lazsl"):
        for name in config.RECIPE_NAMES:
            assert recipe(method, name).recipe == name  # the settings name the recipe they hold


def test_with_recipe_sets_what_the_recipe_decides_and_keeps_the_rest():
    assert config.recipe_fields("otfusion") == ("lam", "sinkhorn_iter", "recipe", "weights")
    assert config.recipe_fields("lazsl") == ("recipe",)
    mine = OTFusionSettings(lam=0.3, eps=0.05, setting="vfm_only", variant="concat")
    official = config.with_recipe(mine, "official")
    assert (official.lam, official.sinkhorn_iter, official.weights, official.recipe) == (
        None, 15, "adaptive", "official")
    assert (official.eps, official.setting, official.variant) == (0.05, "vfm_only", "concat")
    assert config.with_recipe(official, "paper") == OTFusionSettings(eps=0.05, setting="vfm_only",
                                                                    variant="concat")
    gpua = config.with_recipe(GPUASettings(lam=0.7, seed=3, eps=0.02), "official")
    assert gpua == GPUASettings(**{**config.GPUA_RECIPES["official"].__dict__, "lam": 0.7,
                                   "seed": 3})  # eps is the recipe's: the recipes differ on it
    with pytest.raises(ValueError, match="settings of one of"):
        config.with_recipe(ZeroShotSettings(), "paper")
    with pytest.raises(ValueError, match="recipes paper, official"):
        config.with_recipe(mine, "authors")


def test_official_recipes_agree_with_the_solvers_recipe_tables():
    """What config's official recipes pass to the solvers is what the solvers' own recipe tables
    say the public code does (one fact, two places that must not drift)."""
    from core.methods.gpua.recipes import RECIPES as GPUA_SOLVER_RECIPES
    from core.methods.otfusion_common import RECIPES as OTFUSION_SOLVER_RECIPES

    o, solver = recipe("otfusion", "official"), OTFUSION_SOLVER_RECIPES["official"]
    assert (o.lam, o.sinkhorn_iter, o.weights) == (solver.lam, solver.sinkhorn_iter,
                                                   solver.weights)
    g, solver = recipe("gpua", "official"), GPUA_SOLVER_RECIPES["official"]
    assert (g.eps, g.targets, g.ths_steps, g.reorthogonalize, g.n_ucm_iter) == (
        solver.eps, solver.targets, solver.ths_steps, solver.reorthogonalize, solver.n_ucm_iter)
    assert GPUASettings().n_ucm_iter == GPUA_SOLVER_RECIPES["paper"].n_ucm_iter
    assert OTFusionSettings().setting == "main"  # Table 1's setting by default, not an ablation


def test_ui_ranges_contain_their_defaults():
    for cls in (OTFusionSettings, GPUASettings, LaZSLSettings):
        for f in fields(cls):
            if "ui" in f.metadata:
                low, high, step = ui_range(cls, f.name)
                assert low <= f.default <= high and step > 0, (cls.__name__, f.name)
    with pytest.raises(ValueError, match="slider"):
        ui_range(OTFusionSettings, "variant")
    low, high, _ = config.LAZSL_CROPS_UI
    assert low <= config.LAZSL_CROPS <= high == config.LAZSL_CROPS_PAPER


# ----------------------------------------------------------------------------- nobody restates


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_solver_signatures_agree_with_config():
    from core.methods.gpua.fit import Alignment, fit_gpua
    from core.methods.gpua.recipes import RECIPES as GPUA_SOLVER_RECIPES
    from core.methods.lazsl import crop_boxes, lazsl_scores
    from core.methods.otfusion import otfusion
    from core.methods.otfusion_common import RECIPES as OTFUSION_SOLVER_RECIPES
    from core.methods.run import sensitivity_sweep
    from core.methods.zeroshot import zeroshot_probs

    o, g, z = OTFusionSettings(), GPUASettings(), LaZSLSettings()
    d = _defaults(otfusion)
    assert (d["eps"], d["n_iter"], d["variant"], d["recipe"]) == (
        o.eps, o.n_iter, o.variant, "paper")
    # otfusion's recipe-dependent knobs default to None and take the paper recipe's values
    paper = OTFUSION_SOLVER_RECIPES["paper"]
    assert (paper.lam, paper.sinkhorn_iter) == (o.lam, o.sinkhorn_iter)
    d = _defaults(fit_gpua)
    assert (d["lam"], d["ths_k"], d["temperature"], d["recipe"]) == (
        g.lam, g.ths_k, config.TEMPERATURE, "paper")
    # fit_gpua's recipe-dependent knobs default to None and take the paper recipe's values
    paper = GPUA_SOLVER_RECIPES["paper"]
    assert (paper.eps, paper.targets, paper.ths_steps, paper.reorthogonalize) == (
        g.eps, g.targets, g.ths_steps, g.reorthogonalize)
    assert _defaults(Alignment.predict_proba)["temperature"] == config.TEMPERATURE
    d = _defaults(lazsl_scores)
    assert (d["theta"], d["eps"]) == (z.theta, z.eps)
    d = _defaults(crop_boxes)
    assert (d["n_crops"], d["scale"]) == (config.LAZSL_CROPS_PAPER, config.LAZSL_CROP_SCALE)
    assert _defaults(zeroshot_probs)["temperature"] == ZeroShotSettings().temperature
    d = _defaults(sensitivity_sweep)
    assert (d["lams"], d["epss"]) == (config.SWEEP_LAMS, config.SWEEP_EPSS)


def test_cli_parser_defaults_are_configs():
    from core.cli import build_parser, eval_config_from_args, method_settings
    from core.eval.harness import EvalConfig

    args = build_parser().parse_args(["run", "--images", "x", "--classes", "a, b"])
    assert method_settings(args) == MethodSettings()
    assert (args.vlm, args.vfm, args.n_crops, args.batch_size) == (
        config.DEFAULT_VLM, config.DEFAULT_VFM, config.LAZSL_CROPS, config.BATCH_SIZE)
    # eval: every field of the parsed config is EvalConfig's default, which is config's
    args = build_parser().parse_args(["eval", "--dataset", "x"])
    assert eval_config_from_args(args) == EvalConfig()
    e = EvalConfig()
    assert (e.vlm, e.vfm, e.solver, e.seed, e.n_crops, e.batch_size, e.chunk_size,
            e.sweep_lams, e.sweep_epss) == (
        config.DEFAULT_VLM, config.DEFAULT_VFM, MethodSettings(), config.SEED,
        config.LAZSL_CROPS, config.BATCH_SIZE, config.EVAL_CHUNK_SIZE, config.SWEEP_LAMS,
        config.SWEEP_EPSS)


def test_cli_solver_flags_set_the_field_they_name():
    from core.cli import FLAG_CHOICES, SOLVER_FLAGS, build_parser, method_settings

    for flag, (method, name, _) in SOLVER_FLAGS.items():
        default = getattr(getattr(MethodSettings(), method), name)
        if flag in FLAG_CHOICES:  # a choice other than the default
            value = next(c for c in FLAG_CHOICES[flag] if c != default)
        else:
            value = {float: 0.123, int: 7}[type(default)]
        args = build_parser().parse_args(["run", "--images", "x", "--classes", "a, b", flag,
                                          str(value)])
        assert method_settings(args) == MethodSettings().replace(**{method: {name: value}}), flag


def test_cli_recipe_flags_take_configs_recipe_and_explicit_flags_override_it():
    from core.cli import RECIPE_FLAGS, build_parser, method_settings

    def parse(*flags):
        return method_settings(build_parser().parse_args(["run", "--images", "x", "--classes",
                                                          "a, b", *flags]))

    for flag, method in RECIPE_FLAGS.items():
        assert getattr(parse(flag, "official"), method) == recipe(method, "official"), flag
    both = parse("--otfusion-recipe", "official", "--otfusion-lam", "0.3", "--gpua-recipe",
                 "official", "--ths-steps", "9")
    assert both.otfusion == dataclasses.replace(recipe("otfusion", "official"), lam=0.3)
    assert both.gpua == dataclasses.replace(recipe("gpua", "official"), ths_steps=9)
    assert both.otfusion.lam == 0.3 and recipe("otfusion", "official").lam is None


def test_with_recipe_keeps_the_users_knobs_and_takes_the_recipes_own():
    from core.config import with_recipe

    paper = OTFusionSettings(eps=0.05, setting="vfm_only")
    official = with_recipe(paper, "official")
    assert official == dataclasses.replace(recipe("otfusion", "official"), eps=0.05,
                                           setting="vfm_only")
    assert with_recipe(official, "paper") == paper  # and back
    mine = OTFusionSettings(lam=0.3)
    assert with_recipe(mine, "paper") is mine  # its own recipe: nothing is reset
    assert with_recipe(GPUASettings(), "official") == recipe("gpua", "official")
    with pytest.raises(ValueError, match="with_recipe"):
        with_recipe(ZeroShotSettings(), "paper")


def test_extract_settings_defaults_are_configs():
    from core.pipeline.extraction import ExtractSettings

    s = ExtractSettings()
    assert (s.vlm, s.vfm, s.templates, s.crop_scale, s.batch_size) == (
        config.DEFAULT_VLM, config.DEFAULT_VFM, (config.DEFAULT_TEMPLATE,),
        config.LAZSL_CROP_SCALE, config.BATCH_SIZE)
    assert s.n_crops == 0  # LaZSL features only when an entry point asks for them


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals of a module, docstrings excluded (examples there are documentation)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_no_module_spells_the_default_models_or_template():
    # The registry defines the model keys (realsize.py names the entries it builds twins of, not
    # defaults); everything else names the defaults through config.
    exempt = {ROOT / "core" / "config.py", ROOT / "core" / "models" / "registry.py",
              ROOT / "core" / "models" / "realsize.py"}
    watched = {config.DEFAULT_VLM, config.DEFAULT_VFM, config.DEFAULT_TEMPLATE}
    offenders = []
    for path in sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "demo").glob("*.py")]):
        if path in exempt:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                      for line, value in _string_constants(path) if value in watched]
    assert not offenders, "\n".join(offenders)


def _components(demo) -> dict:
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def test_app_controls_read_their_defaults_and_ranges_from_config():
    from demo import playground as ex
    from demo import run as cb
    from demo import ui

    demo = ui.build_app()
    found = _components(demo)
    settings = MethodSettings()
    choices = {"gpua_targets": config.GPUA_TARGETS, "otfusion_setting": config.OTFUSION_SETTINGS,
               "otfusion_variant": config.OTFUSION_VARIANTS, "otfusion_weights": ("fixed",
                                                                                 "adaptive"),
               **{k: config.RECIPE_NAMES for k in cb.RECIPE_CONTROLS.values()}}
    for key, (method, name) in cb.CONTROLS.items():
        cls = type(getattr(settings, method))
        default = getattr(getattr(settings, method), name)
        if key in choices:
            radio = found["gpua-targets-radio" if key == "gpua_targets" else
                          f"{key.replace('_', '-')}-choice"]
            assert radio.value == (default or "fixed"), key  # weights None: the paper's "fixed"
            assert [v for _, v in radio.choices] == list(choices[key]), key
            continue
        if key == "lam_uniform":
            assert found["lam-uniform-checkbox"].value is (default is None) is False
            continue
        slider = found[f"{key.replace('_', '-')}-slider"]
        assert (slider.minimum, slider.maximum, slider.step) == ui_range(cls, name), key
        assert slider.value == default, key
    crops = found["n-crops-slider"]
    assert (crops.minimum, crops.maximum, crops.step) == config.LAZSL_CROPS_UI
    assert crops.value == config.LAZSL_CROPS and str(config.LAZSL_CROPS_PAPER) in crops.label
    # models, template and methods of a Run, as the app opens and as the handler defaults them
    values = {b.label: getattr(b, "value", None) for b in demo.blocks.values()
              if getattr(b, "label", None)}
    assert values["Vision-language models (VLM)"] == [config.DEFAULT_VLM] == cb.RUN_DEFAULTS["vlm"]
    assert values["Vision foundation models (VFM)"] == [config.DEFAULT_VFM] == \
        cb.RUN_DEFAULTS["vfm"]
    assert values["Prompt template(s), one per line"] == config.DEFAULT_TEMPLATE
    assert values["Methods"] == list(cb.APP_METHODS) == list(cb.RUN_DEFAULTS["methods"])
    assert cb.RUN_DEFAULTS["n_crops"] == config.LAZSL_CROPS
    assert values["OTFusion λ"] == ex.PLAYGROUND_DEFAULTS["lam"] == OTFusionSettings().lam


def test_the_official_otfusion_sources_are_registry_models():
    from core.models import get_spec

    assert [get_spec(k).kind for k in (config.DEFAULT_VLM, *config.OTFUSION_OFFICIAL_VFMS)] == [
        "vlm", "vfm", "vfm"]


def test_precisions_are_the_loaders():
    from core.models.load import PRECISIONS

    assert config.PRECISIONS == tuple(PRECISIONS) and config.APP_CPU_PRECISION in PRECISIONS
