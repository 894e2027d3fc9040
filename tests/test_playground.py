"""The Playground's caching and partial redraws (demo.playground): a slider move regenerates,
re-solves and re-projects only what it changed, and the handler skips the figures it did not
redraw. Counts calls; no timings (speed lives in benchmarks/app_latency.py)."""

from __future__ import annotations

from collections import Counter

import gradio as gr
import plotly.graph_objects as go
import pytest

import core.synthetic as synthetic
from demo import maps, playground

SMALL = dict(n_classes=4, n_samples=80, seed=3)
FIGURES = ("play_accuracy", "play_weights", "play_before", "play_after", "play_gap_plot")


def _sent(out: playground.PlaygroundOutputs) -> set[str]:
    """The outputs the handler sends (not skipped)."""
    return {f for f, v in out._asdict().items() if not _skipped(v)}


def _skipped(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


@pytest.fixture
def calls(monkeypatch):
    """Counts of data generations, method runs and 2-D projections, on empty caches."""
    counts = Counter()
    make, run, project = synthetic.make_synthetic, playground.run_method, maps.project_2d

    def making(*args, **kwargs):
        counts["make"] += 1
        return make(*args, **kwargs)

    def running(method, *args, **kwargs):
        counts[method] += 1
        return run(method, *args, **kwargs)

    def projecting(*args, **kwargs):
        counts["project"] += 1
        return project(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_synthetic", making)
    monkeypatch.setattr(playground, "run_method", running)
    monkeypatch.setattr(maps, "project_2d", projecting)
    playground.clear_cache()
    yield counts
    playground.clear_cache()


def test_a_lambda_move_resolves_otfusion_only_and_skips_the_maps(calls):
    first = playground.playground(**SMALL, lam=0.8)
    assert calls == Counter(make=1, clip=1, otfusion=1, gpua=1, project=2)
    assert _sent(first) >= set(FIGURES) | {"play_shown", "play_note"}
    assert all(isinstance(getattr(first, f), go.Figure) for f in FIGURES)

    moved = playground.playground(**SMALL, lam=1.2, shown=first.play_shown)
    # no new data, GPUA fit or projection: OTFusion re-solved, its two charts redrawn
    assert calls == Counter(make=1, clip=1, otfusion=2, gpua=1, project=2)
    assert _sent(moved) == {"play_shown", "play_accuracy", "play_weights", "play_note"}
    acc = dict(zip(moved.play_accuracy.data[0].y, moved.play_accuracy.data[0].x))
    assert set(acc) == {"CLIP zero-shot", "OTFusion", "GPUA"}

    back = playground.playground(**SMALL, lam=0.8, shown=moved.play_shown)
    assert calls["otfusion"] == 2  # λ 0.8 was solved already
    assert _sent(back) == _sent(moved)
    same = playground.playground(**SMALL, lam=0.8, shown=back.play_shown)
    assert _sent(same) == {"play_shown", "play_note"}  # nothing changed: nothing redrawn


def test_other_moves_redraw_what_depends_on_them(calls):
    shown = playground.playground(**SMALL).play_shown
    proj = playground.playground(**SMALL, projection="tsne", shown=shown)
    assert calls["make"] == 1 and calls["gpua"] == 1 and calls["project"] == 4
    assert _sent(proj) == {"play_shown", "play_before", "play_after", "play_note"}
    assert "TSNE" in proj.play_before.layout.title.subtitle.text

    recipe = playground.playground(**SMALL, projection="tsne", recipe="official",
                                   shown=proj.play_shown)
    # GPUA's settings change: its map and gap redraw; the CLIP map ("before") stays
    assert calls["make"] == 1 and calls["gpua"] == 2 and calls["project"] == 5
    assert _sent(recipe) == {"play_shown", "play_accuracy", "play_weights", "play_after",
                             "play_gap_plot", "play_note"}

    noise = playground.playground(**SMALL, projection="tsne", recipe="official", vfm_noise=1.0,
                                  shown=recipe.play_shown)
    assert calls["make"] == 2 and calls["gpua"] == 3 and calls["project"] == 7
    assert _sent(noise) >= set(FIGURES)


def test_a_new_preset_sets_the_knobs_and_an_api_call_without_state_uses_them_as_sent(calls):
    shown = playground.playground(**SMALL, preset="hard", gap=0.5).play_shown
    assert shown["play_gap_plot"][0].gap == 0.5  # first call: the sliders as sent
    picked = playground.playground(**SMALL, preset="default", gap=0.5, shown=shown)
    preset = synthetic.PRESETS["default"]
    assert picked.play_gap["value"] == float(playground._knob(preset, "gap"))
    assert picked.play_shown["play_gap_plot"][0].gap == float(playground._knob(preset, "gap"))
    assert "preset 'default'" in picked.play_note and calls["make"] == 2
    again = playground.playground(**SMALL, preset="default", gap=0.5,
                                  shown=picked.play_shown)
    assert "play_gap" not in _sent(again)  # same preset: the slider's value is the user's
    assert again.play_shown["play_gap_plot"][0].gap == 0.5


def test_the_app_wires_one_playground_event_that_keeps_the_old_plots_up():
    from demo import ui

    demo = ui.build_app()
    fns = [f for f in demo.fns.values() if f.api_name == "playground"]
    assert len(fns) == 1
    fn = fns[0]
    assert fn.show_progress == "minimal" and fn.trigger_mode == "always_last"
    ids = {b.elem_id: i for i, b in demo.blocks.items() if getattr(b, "elem_id", None)}
    triggers = {(t[0], t[1]) for t in fn.targets}
    assert (ids["play-preset"], "input") in triggers  # the preset: same event, no overlap
    assert (ids["play-lam"], "release") in triggers
    assert isinstance(fn.outputs[0], gr.State) and len(fn.outputs) == len(
        playground.PlaygroundOutputs._fields)
    # no other event draws the playground's plots (a second one could overlap the first)
    plots = {o._id for o in fn.outputs[4:]}
    assert [f for f in demo.fns.values() if f is not fn and plots & {o._id for o in f.outputs}] \
        == []


def test_time_hints_are_measured_not_promised(calls):
    import re

    from demo import embedding

    assert not re.search(r"\d", embedding.PROJECTION_INFO)  # no fixed number of seconds
    note = playground.playground(**SMALL).play_note
    assert re.search(r"The two PCA maps took \d+\.\d s", note)
