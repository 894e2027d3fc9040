"""Compare runs (issue 11): the session's last records (``demo.history``), the pure comparison
(``demo.compare``), the store keeping them, and the Compare tab's handler driven through the
store like the app drives it, with the tiny test models."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_sessions import _client_run, app, upload  # noqa: F401 (fixtures: the launched app)

from core.config import MethodSettings, with_recipe
from core.models.tiny import tiny_test_models
from demo import compare, compare_view
from demo import run as cb
from demo.history import RunRecord, record_of, remember
from demo.store import SessionStore, StoreLimits, stored

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)")]
CLASSES = ("cat", "dog", "owl")


def rec(entry_id: int, preds: dict, *, truth=None, shas=None, classes=CLASSES, acc=None,
        settings=None, run="w") -> RunRecord:
    """A hand-made record: ``preds`` method -> class indices, ``shas`` image identities."""
    n = len(next(iter(preds.values())))
    shas = shas or [f"{i:064x}" for i in range(n)]
    return RunRecord(
        id=entry_id, run=run, created=0.0, methods=tuple(preds), settings=settings or
        MethodSettings(), preds={m: torch.tensor(p) for m, p in preds.items()},
        accuracy=acc or {m: None for m in preds}, names=tuple(f"img{s[-2:]}.png" for s in shas),
        shas=tuple(shas), truth=torch.tensor(truth if truth is not None else [-1] * n),
        class_names=tuple(classes), models="VLM x; VFM y", short_models="x + y")


# ----------------------------------------------------------------------------- pure comparison


def test_align_pairs_the_same_bytes_whatever_the_order():
    a = rec(1, {"clip": [0, 1, 2]}, shas=["a" * 64, "b" * 64, "c" * 64])
    b = rec(2, {"clip": [0, 1, 2]}, shas=["c" * 64, "a" * 64, "b" * 64])
    assert compare.align(a, b) == [1, 2, 0]
    dup = rec(3, {"clip": [0, 0]}, shas=["a" * 64, "a" * 64])
    assert compare.align(dup, dup) == [0, 1]  # duplicates pair in order
    other = rec(4, {"clip": [0, 1, 2]}, shas=["a" * 64, "b" * 64, "d" * 64])
    assert compare.align(a, other) is None
    assert compare.align(a, rec(5, {"clip": [0, 1]}, shas=["a" * 64, "b" * 64])) is None


def test_rows_count_differences_on_paired_images_by_class_name():
    # B lists the images in another order and the classes in another order: same answers.
    a = rec(1, {"clip": [0, 1, 2, 0], "otfusion": [0, 1, 1, 0]}, truth=[0, 1, 2, 2],
            shas=["a" * 64, "b" * 64, "c" * 64, "d" * 64],
            acc={"clip": 0.75, "otfusion": 0.5})
    b = rec(2, {"clip": [0, 1, 2, 0], "gpua": [0, 0, 0, 0]},
            shas=["b" * 64, "a" * 64, "d" * 64, "c" * 64], classes=("dog", "cat", "owl"),
            acc={"clip": 0.5, "gpua": 0.25})
    order = compare.align(a, b)
    rows = {r.method: r for r in compare.method_rows(a, b, order)}
    assert list(rows) == ["clip", "otfusion", "gpua"]
    # A: cat dog owl cat; B in A's order: cat dog dog(for c) owl(for d) -> 2 differ.
    assert rows["clip"].n_differ == 2
    assert rows["clip"].delta == pytest.approx(-0.25)
    assert rows["otfusion"].n_differ is None and rows["otfusion"].acc_b is None
    assert rows["otfusion"].delta is None
    table = compare.accuracy_markdown(list(rows.values()))
    assert "| CLIP zero-shot | 75.0% | 50.0% | -25.0 pt | 2 |" in table
    items = compare.disagreements(a, b, "clip", order)
    assert [(d.index, d.pred_a, d.pred_b, d.truth) for d in items] == [
        (2, "owl", "dog", "owl"), (3, "cat", "owl", "owl")]
    assert [d.index for d in compare.disagreements(a, b, "clip", order, "a_right")] == [2]
    assert [d.index for d in compare.disagreements(a, b, "clip", order, "b_right")] == [3]
    assert compare.disagreements(a, b, "otfusion", order) == []  # B did not run it
    assert compare.method_rows(a, b, None)[0].n_differ is None  # different sets: no count
    with pytest.raises(ValueError, match="expected one of differ"):
        compare.disagreements(a, b, "clip", order, "nope")


def test_truth_falls_back_to_the_other_run_and_captions_mark_it():
    a = rec(1, {"clip": [0, 1]})  # no labels
    b = rec(2, {"clip": [1, 1]}, truth=[1, -1])
    order = compare.align(a, b)
    assert compare.truths(a, b, order) == ["dog", None]
    (d,) = compare.disagreements(a, b, "clip", order)
    assert compare.caption(d).splitlines()[:2] == ["A: cat ✗", "B: dog ✓"]
    assert "true: dog" in compare.caption(d)
    assert compare.caption(compare.Disagreement(0, "f.png", None, "cat", "dog")).splitlines() == [
        "A: cat", "B: dog", "f.png"]


def test_settings_table_marks_what_differs_and_csv_holds_every_image(tmp_path):
    official = MethodSettings().replace(otfusion=with_recipe(MethodSettings().otfusion,
                                                             "official"))
    a = rec(1, {"clip": [0, 1, 2], "otfusion": [0, 1, 2]}, truth=[0, 1, 1],
            acc={"clip": 2 / 3, "otfusion": 2 / 3})
    b = rec(2, {"clip": [0, 1, 2], "otfusion": [0, 2, 1]}, truth=[0, 1, 1],
            acc={"clip": 2 / 3, "otfusion": 1 / 3}, settings=official)
    text = compare.settings_markdown(a, b)
    assert "| **OTFusion** ≠ | paper recipe" in text and "official recipe" in text
    assert "| **CLIP zero-shot** |" in text and "| **models** |" in text  # the same: no mark
    order = compare.align(a, b)
    paths = compare.write_csv(tmp_path, a, b, compare.method_rows(a, b, order), order)
    summary, images = (list(csv.reader(open(p, encoding="utf-8"))) for p in paths)
    assert summary[0][:5] == ["method", "accuracy_A", "accuracy_B", "delta_B_minus_A",
                              "n_differ"]
    assert summary[2][0] == "otfusion" and summary[2][4] == "2"
    assert float(summary[2][3]) == pytest.approx(-1 / 3)
    assert images[0] == ["file", "true", "clip_A", "clip_B", "clip_differ", "otfusion_A",
                         "otfusion_B", "otfusion_differ"]
    assert [r[-1] for r in images[1:]] == ["0", "1", "1"] and images[2][1] == "dog"
    # Different image sets: the summary only.
    c = rec(3, {"clip": [0, 1]}, shas=["e" * 64, "f" * 64])
    assert len(compare.write_csv(tmp_path, a, c, compare.method_rows(a, c, None), None)) == 1


# ----------------------------------------------------------------------------- the history


def fake_session(workdir: str, settings: MethodSettings | None = None, preds=(0, 1)):
    """What ``record_of`` reads of a ``demo.state.Session``."""
    n = len(preds)
    features = SimpleNamespace(labels=None, vlms=lambda: [("CLIP", None, None)],
                               vfms=lambda: [("DINO", None)])
    items = tuple(SimpleNamespace(name=f"{i}.png", sha256=f"{i:064x}") for i in range(n))
    extraction = SimpleNamespace(features=features, items=items, class_names=CLASSES,
                                 settings=SimpleNamespace(templates=("a {}",), precision="fp32"),
                                 precisions={})
    result = SimpleNamespace(pred=torch.tensor(preds), accuracy=None)
    return SimpleNamespace(extraction=extraction, methods=("clip", "otfusion"),
                           results={"clip": result, "otfusion": result},
                           settings=settings or MethodSettings(), workdir=workdir, thumbs=())


def test_one_entry_per_run_and_recipes_newest_last_capped():
    s = MethodSettings()
    moved = s.replace(otfusion={"lam": 0.3})
    official = s.replace(otfusion=with_recipe(s.otfusion, "official"))
    h = remember((), fake_session("run1", s), now=1.0)
    h = remember(h, fake_session("run1", moved), now=2.0)  # a slider: the same entry
    assert [r.id for r in h] == [1] and h[0].settings == moved and h[0].created == 2.0
    assert "OTFusion paper λ 0.3" in h[0].label and "2 images" in h[0].label
    h = remember(h, fake_session("run1", official), now=3.0)  # a recipe switch: its own
    assert [(r.id, r.recipes[0]) for r in h] == [(1, "paper"), (2, "official")]
    assert "OTFusion official λ 1/J" in h[1].label
    h = remember(h, fake_session("run1", moved), now=4.0)  # back to paper: updates #1
    assert [r.id for r in h] == [2, 1]
    for i in range(2, 7):  # new Runs
        h = remember(h, fake_session(f"run{i}"), now=4.0 + i, keep=3)
    assert [r.id for r in h] == [5, 6, 7] and [r.run for r in h] == ["run4", "run5", "run6"]
    with pytest.raises(ValueError, match="at least 1"):
        remember(h, fake_session("x"), keep=0)


def test_pick_defaults_to_previous_and_current_and_keeps_user_picks():
    h = tuple(record_of(fake_session(f"r{i}"), i, 0.0) for i in (1, 2, 3))
    assert compare_view.pick(h, None, None, None) == ("2", "3")
    assert compare_view.pick(h, "1", "2", "3") == ("1", "2")  # nothing new: the user's picks
    assert compare_view.pick(h, "1", "2", "2") == ("2", "3")  # a new record arrived
    assert compare_view.pick(h, "9", "2", "3") == ("2", "3")  # a pick that fell out
    assert compare_view.pick(h[:1], None, None, None) == ("1", "1")


def test_the_store_keeps_records_beside_the_session_and_drops_them_with_it(tmp_path):
    from test_sessions import session as real_session

    st = SessionStore(StoreLimits(run_history=2), sweep_every_s=0)
    first = real_session(tmp_path, "a")
    st.put("k", first)
    st.put("k", first)  # the same record again (views memoised more): no new entry
    assert [r.id for r in st.history("k")] == [1]
    for name in ("b", "c"):
        st.put("k", real_session(tmp_path, name))
    assert [r.id for r in st.history("k")] == [2, 3] and st.history("other") == ()
    st.discard("k")
    assert st.history("k") == ()
    with pytest.raises(ValueError, match="run_history"):
        StoreLimits(run_history=0)


# ----------------------------------------------------------------------------- through the app


@pytest.fixture(scope="module")
def keys():
    return tiny_test_models()


def test_compare_tab_through_the_store(keys, tmp_path):
    from test_callbacks import COLORS, PER_CLASS, _png

    colours = tmp_path / "colours.zip"
    with zipfile.ZipFile(colours, "w") as zf:
        for name, color in COLORS.items():
            for i in range(PER_CLASS):
                zf.writestr(f"{name}/{name}_{i}.png", _png(color, i))
    st = SessionStore(StoreLimits(), sweep_every_s=0)
    user = SimpleNamespace(session_hash="user")

    def run(**inputs):
        yield from cb.run_in_app(inputs, cache_dir=str(tmp_path / "features"))

    def resolve(session, **controls):
        return cb.resolve("otfusion", session, controls)

    def switch(session, **controls):
        return cb.switch_recipe("otfusion", session, controls)

    def do_run(**inputs):
        base = dict(files=[str(colours)], vlm=[keys["clip_vit"]], vfm=[keys["dinov2"]],
                    methods=["otfusion"])
        *_, last = stored(run, st, takes_session=False)(user, **{**base, **inputs})
        assert "Features ready" in last.status, last.status
        return st.get("user")

    # The app's three handlers: a refresh (tab opened, after a Run or a re-solve) reads the
    # kept picks; the dropdowns send the user's own picks.
    refresh = stored(compare_view.refresh, st)
    pick_runs = stored(compare_view.pick_runs, st)
    pick_method = stored(compare_view.pick_method, st)
    assert refresh(user, None).cmp_note == compare_view.EMPTY
    first = do_run()
    out = refresh(user, None)
    assert "Only one run so far (#1)" in out.cmp_note and out.cmp_table == ""
    stored(resolve, st)(user, None, lam=0.2)  # a slider: updates #1, no new entry
    assert [r.id for r in st.history("user")] == [1]
    assert "λ 0.2" in st.history("user")[0].label
    second = do_run(vfm=[keys["dinov3"]], lam=0.9)
    out = refresh(user, None, out.cmp_picks, "differ")
    assert out.cmp_picks["a"] == "1" and out.cmp_picks["b"] == "2"
    assert out.cmp_picks == {"a": "1", "b": "2", "method": None, "seen": "2",
                             "shown": "otfusion"}
    # The dropdowns get their choices here and their values in a second step.
    assert "value" not in out.cmp_a and "value" not in out.cmp_method
    assert [u["value"] for u in compare_view.show_picks(out.cmp_picks)] == ["1", "2",
                                                                          "otfusion"]
    labels = [label for label, _ in out.cmp_a["choices"]]
    assert labels[0].startswith("#2") and labels[0].endswith("(current)")
    assert labels[1].startswith("#1") and "λ 0.2" in labels[1]
    # The counts are those of the two Runs' predictions, image by image.
    old = st.history("user")[0]
    n_differ = {m: int((old.preds[m] != second.results[m].pred).sum())
                for m in ("clip", "otfusion")}
    for m, title in (("clip", "CLIP zero-shot"), ("otfusion", "OTFusion")):
        line = next(x for x in out.cmp_table.splitlines() if x.startswith(f"| {title} |"))
        assert line.endswith(f"| {n_differ[m]} |"), (line, n_differ)
    assert out.cmp_picks["shown"] == "otfusion"
    n = len(COLORS) * PER_CLASS
    assert f"**{n_differ['otfusion']}** of {n} images where OTFusion" in out.cmp_info
    assert "DINOv3" in out.cmp_settings or "dinov3" in out.cmp_settings.lower()
    # The first Run's folder is gone: thumbnails come from the current Run (same images).
    assert not Path(first.workdir).exists()
    assert len(out.cmp_gallery) == n_differ["otfusion"]
    assert all(Path(p).is_file() and cap.startswith("A: ") for p, cap in out.cmp_gallery)
    summary = next(p for p in out.cmp_downloads if p.endswith("_summary.csv"))
    assert "otfusion" in Path(summary).read_text()
    # A recipe switch is a new entry; the tab follows it (previous vs current).
    stored(switch, st)(user, None, otfusion_recipe="official")
    out = refresh(user, None, out.cmp_picks, "differ")
    assert (out.cmp_picks["a"], out.cmp_picks["b"]) == ("2", "3")
    assert "paper recipe" in out.cmp_settings and "official recipe" in out.cmp_settings
    # The user's picks stay while nothing new arrives, through a slider move too.
    out = pick_runs(user, None, "1", "3", out.cmp_picks, "differ")
    out = pick_method(user, None, "clip", out.cmp_picks, "differ")
    assert (out.cmp_picks["a"], out.cmp_picks["b"], out.cmp_picks["shown"]) == (
        "1", "3", "clip")
    stored(resolve, st)(user, None, lam=0.5)  # updates #3 in place
    out = refresh(user, None, out.cmp_picks, "a_right")
    assert (out.cmp_picks["a"], out.cmp_picks["b"], out.cmp_picks["shown"]) == (
        "1", "3", "clip")
    assert "and only A is right" in out.cmp_info
    assert [r.id for r in st.history("user")] == [1, 2, 3]
    # A Run on other images: summary numbers only, and said so.
    other = tmp_path / "two.zip"
    with zipfile.ZipFile(other, "w") as zf:
        for name in ("red", "blue"):
            zf.writestr(f"{name}/x.png", _png(COLORS[name], 1))
    do_run(files=[str(other)])
    out = refresh(user, None, out.cmp_picks, "differ")
    assert (out.cmp_picks["a"], out.cmp_picks["b"]) == ("3", "4")
    assert "cannot be compared image by image" in out.cmp_note
    assert out.cmp_gallery == [] and "No image-by-image comparison" in out.cmp_info
    assert "| - |" in out.cmp_table  # no count of differing images
    assert len(out.cmp_downloads) == 1


def test_compare_endpoint_after_two_runs(app, upload):  # noqa: F811
    """``/compare`` on the launched app: the store's records reach the handler (``stored``
    fills ``history``), two Runs of the same images compare image by image."""
    url, demo, gc = app
    client = _client_run(gc, url, upload)
    client.predict(files=[gc.handle_file(str(upload))], classes_text="", attributes_file=None,
                   labels_csv=None, methods=["otfusion", "gpua"], api_name="/run")
    records = demo.session_store.history(client.session_hash)
    assert [r.methods for r in records] == [("clip", "otfusion"), ("clip", "otfusion", "gpua")]
    out = client.predict(show="differ", api_name="/compare")
    note, table, settings, info = out[3:7]
    assert note.startswith(f"**A**: {records[0].label}") and records[1].label in note
    assert "| GPUA | - | " in table and "| **GPUA** ≠ | not run |" in settings
    assert "of 4 images where OTFusion disagrees between A and B" in info
