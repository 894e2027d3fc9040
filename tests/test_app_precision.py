"""Precision "auto" as the app's default (issue 12): the per-model, hardware-aware policy, the
"Model precision" options, the notes and export naming what each model ran in, the one-time
ONNX export said in the progress line, and the start-up warm-up that prepares it."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import core.models.load as load
import core.models.onnx_runtime as onnx_runtime
from core import config
from core.data import load_image_set
from core.models import get_spec, load_encoder, register_model, resolve_precision
from core.models.realsize import realsize_models
from core.models.tiny import tiny_test_models
from core.pipeline import ExtractSettings, extract
from core.pipeline.cache import model_key
from demo import precision as app_prec
from demo import run as flow
from demo import warmup
from tests.test_sessions import rendered

TINY = tiny_test_models()
BAR = config.FAST_PATH_MIN_COSINE
ABOVE, BELOW = BAR + 5e-4, BAR - 1e-3


def _twin(role: str, name: str, **worst_cos) -> str:
    """A tiny entry registered with measured worst cosines (``int8_worst_cos=...`` etc.)."""
    spec = get_spec(TINY[role])
    return register_model(replace(spec, key=f"{spec.key}-prec-{name}",
                                  display_name=f"{spec.display_name} {name}", **worst_cos)).key


@pytest.fixture
def machine(monkeypatch):
    """``set(fast_bf16=..., ort=..., bf16_on_cpu=...)``: what this process can run."""
    def set_(*, fast_bf16: bool, ort: bool, bf16_on_cpu: bool = True):
        monkeypatch.setattr(load, "cpu_has_fast_bf16", lambda: fast_bf16)
        monkeypatch.setattr(onnx_runtime, "available", lambda: ort)
        # The device table's bf16 row (owned by the bf16 CPU work): CPU listed once it lands.
        monkeypatch.setitem(load.PRECISIONS, "bf16",
                            ("cpu", "cuda") if bf16_on_cpu else ("cuda",))
    return set_


ALL_PASS = dict(bf16_worst_cos=ABOVE, onnx_int8_worst_cos=ABOVE, int8_worst_cos=ABOVE)


@pytest.mark.parametrize("cosines, fast_bf16, ort, device, expected", [
    (ALL_PASS, True, True, "cpu", "bf16"),
    (ALL_PASS, False, True, "cpu", "onnx-int8"),
    (ALL_PASS, False, False, "cpu", "int8"),
    (ALL_PASS, True, True, "cuda", "fp32"),
    (ALL_PASS, True, True, "mps", "fp32"),
    ({**ALL_PASS, "bf16_worst_cos": BELOW}, True, True, "cpu", "onnx-int8"),
    ({**ALL_PASS, "bf16_worst_cos": None}, True, True, "cpu", "onnx-int8"),
    ({**ALL_PASS, "onnx_int8_worst_cos": BELOW}, False, True, "cpu", "int8"),
    (dict(int8_worst_cos=BELOW, onnx_int8_worst_cos=BELOW, bf16_worst_cos=BELOW), True, True,
     "cpu", "fp32"),
    ({}, True, True, "cpu", "fp32"),  # unmeasured
    (dict(int8_worst_cos=BAR), False, False, "cpu", "int8"),  # the bar itself passes
])
def test_auto_policy_table(machine, cosines, fast_bf16, ort, device, expected):
    machine(fast_bf16=fast_bf16, ort=ort)
    name = "-".join(f"{k[:4]}{v}" for k, v in sorted(cosines.items())) or "none"
    key = _twin("clip_vit", name, **cosines)
    assert resolve_precision(key, "auto", device) == expected
    assert resolve_precision(key, "int8", device) == "int8"  # explicit precisions stay


def test_bf16_needs_the_device_table_too(machine):
    machine(fast_bf16=True, ort=True, bf16_on_cpu=False)  # before the bf16 CPU path exists
    assert resolve_precision(_twin("clip_vit", "all", **ALL_PASS), "auto", "cpu") == "onnx-int8"


def test_real_entries_record_their_measured_cosines_and_resolve_per_machine(machine):
    clip, dino = get_spec("clip-vit-b16"), get_spec("dinov2-base")
    assert (clip.onnx_int8_worst_cos, dino.onnx_int8_worst_cos) == (0.99985, 0.99917)
    real = realsize_models()
    assert get_spec(real["clip"]).onnx_int8_worst_cos == 0.99985  # measured on these twins
    assert get_spec(real["dinov2"]).onnx_int8_worst_cos == 0.99917
    assert (clip.bf16_worst_cos, dino.bf16_worst_cos) == (0.99992, 0.99996)
    assert get_spec(real["dinov2"]).bf16_worst_cos == 0.99996
    machine(fast_bf16=True, ort=True)  # an AMX CPU: bf16, the fastest measured path
    for key in ("clip-vit-b16", "dinov2-base", real["clip"], real["dinov2"]):
        assert resolve_precision(key, "auto", "cpu") == "bf16"
    assert resolve_precision("dinov2-large", "auto", "cpu") == "fp32"  # not measured
    machine(fast_bf16=False, ort=True)  # no native bf16: ONNX Runtime int8
    for key in ("clip-vit-b16", "dinov2-base", real["clip"], real["dinov2"]):
        assert resolve_precision(key, "auto", "cpu") == "onnx-int8"
    machine(fast_bf16=False, ort=False)  # no onnxruntime: torch int8 where it passes
    assert resolve_precision("clip-vit-b16", "auto", "cpu") == "int8"
    assert resolve_precision("dinov2-base", "auto", "cpu") == "fp32"  # int8 0.9973 < 0.999
    # Measurements are not identity: the cache key ignores them.
    twin = _twin("dinov2", "keyed", **ALL_PASS)
    assert model_key(get_spec(twin)).rsplit("-", 1)[1] == \
        model_key(get_spec(TINY["dinov2"])).rsplit("-", 1)[1]


def test_ort_availability_is_checked_for_real(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert onnx_runtime.available() is True
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert onnx_runtime.available() is False
    key = _twin("clip_vit", "ort-only", onnx_int8_worst_cos=ABOVE)
    assert resolve_precision(key, "auto", "cpu") == "fp32"
    assert load.one_time_setup(key, "auto", "cpu") is None


def test_cpu_bf16_probe_is_guarded_and_cached(monkeypatch):
    load.cpu_has_fast_bf16.cache_clear()
    try:
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
        monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
        assert load.cpu_has_fast_bf16() is False  # an older torch without the probes
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
        assert load.cpu_has_fast_bf16() is False  # cached for the process
        load.cpu_has_fast_bf16.cache_clear()
        assert load.cpu_has_fast_bf16() is True
    finally:
        load.cpu_has_fast_bf16.cache_clear()


# ----------------------------------------------------------------------------- the app


def test_app_default_is_auto_on_a_cpu_and_fp32_on_a_gpu(monkeypatch):
    assert config.APP_CPU_PRECISION == "auto" and config.PRECISION == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert app_prec.app_precision() == flow.app_precision() == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert app_prec.app_precision() == "fp32"


def test_radio_offers_what_runs_here_exact_fp32_first(machine):
    machine(fast_bf16=False, ort=False)
    assert [v for _, v in app_prec.precision_choices("cpu")] == ["fp32", "auto", "int8"]
    machine(fast_bf16=False, ort=True)
    choices = dict((v, label) for label, v in app_prec.precision_choices("cpu"))
    assert list(choices) == ["fp32", "auto", "int8", "onnx-int8"]
    assert "exact" in choices["fp32"] and "0.999" in choices["auto"]
    assert f"one-time export ~{config.ONNX_EXPORT_SECONDS} s" in choices["onnx-int8"]
    machine(fast_bf16=True, ort=True)
    assert [v for _, v in app_prec.precision_choices("cpu")][-1] == "bf16"
    machine(fast_bf16=True, ort=True, bf16_on_cpu=False)  # the table does not run it yet
    assert "bf16" not in [v for _, v in app_prec.precision_choices("cpu")]
    # A GPU: exact fp32 first, its autocast; no CPU paths, no "auto" (fp32 there anyway).
    assert [v for _, v in app_prec.precision_choices("cuda")] == ["fp32", "bf16"]


def test_the_built_app_shows_the_choices_and_the_default(monkeypatch):
    from demo.ui import build_app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = build_app()
    radio = next(b for b in app.blocks.values()
                 if getattr(b, "elem_id", None) == "precision-radio")
    assert radio.value == "auto"
    assert [tuple(c) for c in radio.choices] == [tuple(c) for c in app_prec.precision_choices()]
    assert app.default_models == (config.DEFAULT_VLM, config.DEFAULT_VFM)


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    from tests.test_speed import _zip

    return str(_zip(tmp_path_factory.mktemp("up"), n=4))


def _run(upload, tmp_path, vlm, vfm, **more):
    out = flow.run(dict(files=[upload], classes_text="a, b", vlm=vlm, vfm=vfm,
                        methods=["otfusion"], **more), cache_dir=str(tmp_path / "cache"))
    export = json.loads(Path(next(p for p in out.downloads if p.endswith(".json"))).read_text())
    return out, export


def test_notes_and_export_name_each_models_precision(upload, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # The tiny models have no measured fast path: "auto" runs them in fp32, and says so.
    out, doc = _run(upload, tmp_path, TINY["clip_vit"], TINY["dinov2"])
    clip, dino = get_spec(TINY["clip_vit"]), get_spec(TINY["dinov2"])
    line = f"Model precision: {clip.display_name}: fp32 (auto); {dino.display_name}: fp32 (auto)"
    assert out.session.notes[0] == line  # first in the notes panel, shown as written
    assert out.notes["visible"] and line in rendered(out.notes["value"])[0]
    assert doc["precision"] == "auto"
    assert doc["precisions"] == {clip.key: "fp32", dino.key: "fp32"}
    # A VLM whose int8 passes the bar runs int8 under "auto"; the VFM stays exact.
    fast = _twin("clip_vit", "int8-note", int8_worst_cos=ABOVE)
    out, doc = _run(upload, tmp_path, fast, TINY["dinov2"])
    assert out.session.notes[0] == (f"Model precision: {get_spec(fast).display_name}: int8 "
                                    f"(auto); {dino.display_name}: fp32 (auto)")
    assert doc["precisions"] == {fast: "int8", dino.key: "fp32"}
    # An explicit pick is named without "(auto)".
    out, doc = _run(upload, tmp_path, TINY["clip_vit"], TINY["dinov2"], precision="int8")
    assert out.session.notes[0] == (f"Model precision: {clip.display_name}: int8; "
                                    f"{dino.display_name}: int8")
    assert doc["precision"] == "int8"


# ----------------------------------------------------------------------------- one-time export


@pytest.fixture
def ort_cache(tmp_path, monkeypatch):
    """An empty on-disk cache, no onnx-int8 twins in memory, exports counted."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(load, "_LOADED_FAST", {})
    calls = []
    real = onnx_runtime.export_image_tower
    monkeypatch.setattr(onnx_runtime, "export_image_tower",
                        lambda enc, ex, path: calls.append(enc.spec.key) or real(enc, ex, path))
    return calls


def test_progress_says_when_the_onnx_model_is_prepared(ort_cache, upload, tmp_path):
    key = _twin("clip_vit", "ort-progress", onnx_int8_worst_cos=ABOVE)
    note = f"preparing the int8 ONNX model of {get_spec(key).display_name} (one time, ~40 s)"
    assert load.one_time_setup(key, "auto", "cpu") == note
    assert load.one_time_setup(key, "fp32", "cpu") is None
    seen = []
    settings = ExtractSettings(vlm=key, vfm=TINY["dinov2"], precision="auto", device="cpu")
    ex = extract(load_image_set(upload), ["a", "b"], settings, cache=None,
                 progress=lambda done, total, desc: seen.append((done, total, desc)))
    assert ex.precisions == {key: "onnx-int8", TINY["dinov2"]: "fp32"}
    assert ort_cache == [key]
    at = [i for i, (_, _, desc) in enumerate(seen) if desc == note]
    assert len(at) == 1 and at[0] > 0
    assert seen[at[0]][:2] == seen[at[0] - 1][:2]  # said in place: the bar does not move back
    # Prepared now (in memory, then on disk for a new process): nothing more to say.
    assert load.one_time_setup(key, "auto", "cpu") is None
    load._LOADED_FAST.clear()
    assert load.one_time_setup(key, "auto", "cpu") is None


def test_a_second_loader_waits_for_the_export_and_other_models_load_meanwhile(ort_cache,
                                                                               monkeypatch):
    key = _twin("clip_vit", "ort-lock", onnx_int8_worst_cos=ABOVE)
    load_encoder(key, device="cpu")  # the fp32 model first: only the export is timed below
    started, release = threading.Event(), threading.Event()
    real_build = onnx_runtime.build_int8_tower

    def slow_build(encoder, path):
        started.set()
        assert release.wait(60)
        return real_build(encoder, path)

    monkeypatch.setattr(onnx_runtime, "build_int8_tower", slow_build)
    got = {}

    def loader(name):
        got[name] = load_encoder(key, device="cpu", precision="auto")

    first = threading.Thread(target=loader, args=("warm-up",))
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=loader, args=("run",))
    second.start()
    # Another model loads while the export holds its own lock only.
    assert load_encoder(TINY["dinov2"], device="cpu").precision == "fp32"
    assert second.is_alive()  # the Run waits for the warm-up's export
    release.set()
    first.join(60)
    second.join(60)
    assert got["warm-up"] is got["run"] and got["run"].precision == "onnx-int8"
    assert ort_cache == [key]  # exported once


# ----------------------------------------------------------------------------- warm-up


def test_warm_up_loads_only_cached_models_on_a_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # no weights cached
    loads = []
    monkeypatch.setattr("core.models.load_encoder",
                        lambda key, **kw: loads.append((key, kw.get("precision"))))
    ready = _twin("clip_vit", "ort-warm", onnx_int8_worst_cos=ABOVE)  # random init: no weights
    # clip-vit-b16's weights are not cached: skipped (never a download); the others are loaded
    # in the app's default precision (their one-time setup, e.g. an onnx-int8 export, with them).
    assert warmup.warm_models(["clip-vit-b16", TINY["dinov2"], ready]) == [TINY["dinov2"], ready]
    assert loads == [(TINY["dinov2"], "auto"), (ready, "auto")]
    assert warmup.warm_models([]) == []
    seconds = warmup.warm_up(parts=("models",), models=["clip-vit-b16"])
    assert list(seconds) == ["models"] and len(loads) == 2  # skipped silently
    # On a GPU a Run loads the models onto it: nothing is loaded at start.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert warmup.warm_models([ready]) == []