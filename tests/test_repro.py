"""The table registry (core.eval.tables) and ``python -m core repro`` (core.eval.repro): every
runnable table runs end to end on generated stand-ins (CoOp layouts, ImageNet variants) with the
tiny random models, and its report puts the paper's number beside ours with the settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_domain_datasets import make_domain
from test_evaluate import _png, make_eurosat
from test_imagenet_variants import SHARED, WNIDS, make_imagenet, make_variant
from test_lazsl_datasets import make_cub, make_places

from core.cli import main as cli_main
from core.data import get_preset
from core.data.benchmarks import LAYOUTS
from core.data.imagenet_variants import VARIANTS
from core.eval import tables as registry
from core.eval.repro import NO_PAPER, run_table, table_markdown, write_table_report
from core.eval.repro_cli import tables_listing
from core.eval.tables import REPRO_TABLES, get_table, paper_row
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache

FAST = {"gpua": {"ths_steps": 5}}
# table id -> the stand-in datasets it runs on here (one per kind of layout it reads)
STAND_INS = {"otf-t1a": ("eurosat",), "otf-t1b": ("eurosat",), "otf-t2": ("eurosat",),
             "gpua-t1": ("eurosat",), "gpua-t3": ("oxford_pets",), "gpua-t4": ("eurosat",),
             "gpua-t5": ("eurosat",), "gpua-t6": ("eurosat",),
             "gpua-t7": ("imagenet", "imagenet_a", "imagenet_v2", "imagenet_r",
                         "imagenet_sketch"),
             "lazsl-dg": ("imagenet_v2", "imagenet_a"),
             "lazsl-t1": ("cub", "oxford_pets", "places365"),
             # release folders, RS-TransCLIP's flat files, NCT's codes, skin cancer's CSV
             "otf-cvpr-domains": ("eurosat_rs", "whurs19", "nct_crc", "skincancer")}


def make_coop(root: Path, key: str, *, n_train=2, n_test=1, seed=0) -> Path:
    """Any CoOp split-JSON dataset: <folder>/<image dir>/<class>/<i>.png + its split file."""
    lay, preset = LAYOUTS[key], get_preset(key)
    folder, rng = root / lay.folder, np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for k, raw in enumerate(preset.raw_class_names):
        base = rng.integers(0, 255, 3)
        for name, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                rel = f"c{k}/{name}_{i}.png"
                _png(folder / lay.image_dir / rel, rng, base)
                split[name].append([rel, k, raw])
    (folder / lay.split_file).write_text(json.dumps(split), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models():
    return tiny_test_models()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro-data")
    make_eurosat(root)
    make_coop(root, "oxford_pets")
    make_imagenet(root)
    make_cub(root)
    make_places(root)
    for key in VARIANTS:
        make_variant(root, key)
    for key, layout in (("eurosat_rs", "folders"), ("whurs19", "flat"), ("nct_crc", "folders"),
                        ("skincancer", "csv")):
        make_domain(root, key, layout)
    descriptors = root / "descriptors"
    descriptors.mkdir()
    names = get_preset("imagenet").class_names
    (descriptors / "imagenet.json").write_text(json.dumps(
        {names[WNIDS.index(w)]: ["a round shape", "a striped texture"] for w in SHARED}))
    (descriptors / "oxford_pets.json").write_text(json.dumps(
        {c: ["fur", "a tail"] for c in get_preset("oxford_pets").class_names}))
    (descriptors / "cub.json").write_text(json.dumps(  # DCLIP spells the hyphen
        {"Black-footed Albatross": ["dark wings"], "Laysan Albatross": ["a white head"],
         "Indigo Bunting": ["blue plumage", "a short beak"]}))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return FeatureCache(tmp_path_factory.mktemp("repro-cache"))


def _overrides(models):
    return {"vlm": models["clip_vit"], "vfm": models["dinov2"], "n_crops": 2}


# ----------------------------------------------------------------------------- registry


def test_registry_ids_are_unique_and_every_row_has_its_paper_row():
    assert all(key == t.id for key, t in REPRO_TABLES.items())
    for t in REPRO_TABLES.values():
        for row in t.rows:
            found = paper_row(t, row)
            if not t.paper_numbers:  # the CVPR successor's domains: we hold no number
                assert found is None
                continue
            assert set(t.datasets) <= set(found.values), (t.id, row.label)
    assert set(STAND_INS) == {t.id for t in REPRO_TABLES.values()
                              if t.runnable and t.kind == "classification"}
    # GPUA's segmentation tables are listed, each pointing at its own seg-eval command
    seg = {t.id: t for t in registry.SEGMENTATION}
    assert set(seg) == {"gpua-t2", "gpua-t8"}
    assert all(t.command.startswith("python -m core seg-eval") for t in seg.values())
    assert seg["gpua-t2"].runnable and not seg["gpua-t8"].runnable
    with pytest.raises(ValueError, match="unknown table 'gpua-t9'; known: otf-t1a"):
        get_table("gpua-t9")


def test_paper_numbers_are_as_printed():
    t7 = get_table("gpua-t7")
    gpua = paper_row(t7, t7.rows[1])
    assert (gpua.values["imagenet_a"], gpua.values["imagenet_sketch"], gpua.average) == (
        57.4, 56.9, 67.3)
    t6 = get_table("gpua-t6")
    assert [paper_row(t6, r).values["eurosat"] for r in t6.rows] == [72.4, 75.5, 73.2, 75.3,
                                                                      80.3]
    t2 = get_table("otf-t2")
    assert paper_row(t2, t2.rows[0]).average == 65.24  # "native CLIP"
    t3 = get_table("gpua-t3")
    assert paper_row(t3, t3.rows[0]).values == {"oxford_pets": 89.2, "ucf101": 68.3,
                                                "imagenet": 71.6}


def test_listing_says_what_each_table_needs(capsys):
    text = tables_listing()
    for t in REPRO_TABLES:
        assert t in text
    assert "[not yet runnable]" in text and "CUB-200-2011 and Places365" in text
    assert "needs: ImageNet in the CoOp layout" in text
    assert "none of these domain models is in our model registry" in text  # otf-cvpr-domains
    assert cli_main(["repro", "--tables"]) == 0 and "gpua-t7" in capsys.readouterr().out


def test_a_table_that_cannot_run_says_what_it_needs(tmp_path, capsys):
    assert cli_main(["repro", "gpua-t8", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not run by `repro`" in err and "cityscapes" in err.lower()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("table_id", list(STAND_INS))
def test_every_table_runs_on_stand_ins(table_id, models, root, cache, tmp_path):
    table = get_table(table_id)
    report = run_table(table, root, overrides=_overrides(models), solver=FAST,
                       options={"attributes_dir": str(root / "descriptors")},
                       datasets=STAND_INS[table_id], cache=cache)
    assert len(report.cells) == len(table.rows) * len(STAND_INS[table_id])
    held = table.paper_numbers
    for row in table.rows:
        expected = paper_row(table, row).values if held else {}
        for ds in STAND_INS[table_id]:
            cell = report.cell(row.label, ds)
            assert cell.paper == expected.get(ds), (row.label, ds)
            if ds == "imagenet" and row.method == "gpua":
                # 1,000 ImageNet prototypes cannot be fitted on a 6-image stand-in pool
                assert cell.status == "failed" and "classes" in cell.note
            elif ds == "places365" and row.method == "lazsl":  # no places365.json given
                assert cell.status == "skipped" and "places365.json" in cell.note
            else:
                assert cell.status == "ok", (row.label, ds, cell.note)
                assert 0 <= cell.ours <= 100 and cell.protocol == row.protocol
                if held:
                    assert cell.diff == pytest.approx(cell.ours - cell.paper)
    md = table_markdown(report)
    assert f"{table.paper} {table.table}" in md and "not the paper's protocol" in md
    for row in table.rows:
        assert f"| {row.label} |" in md and f"- {row.label}: vlm={models['clip_vit']}" in md
    ok = next(c for c in report.cells if c.status == "ok")
    if held:
        assert f"{ok.ours:.2f} / {ok.paper:g} ({ok.diff:+.2f})" in md
    else:  # never a number we do not hold
        assert f"{ok.ours:.2f} / no paper number" in md and f"paper: {NO_PAPER}" in md
    paths = write_table_report(report, tmp_path)
    rows = list(csv.DictReader(paths[1].open()))
    assert len(rows) == len(report.cells)
    assert rows[0]["paper_source"].startswith(table.paper if held else NO_PAPER)
    data = json.loads(paths[2].read_text())
    assert data["overrides"]["vlm"] == models["clip_vit"]
    for row in table.rows:  # the exact settings of each row, every solver knob
        settings = data["settings"][row.label]
        assert settings["solver"]["gpua"]["ths_steps"] == 5
        for method, change in row.solver.items():
            for name, value in change.items():
                assert settings["solver"][method][name] == value
        if "vfm" in row.config and row.config["vfm"] is None:
            assert settings["eval"]["vfm"] is None  # the no-VFM ablation stays so


def test_loss_rows_really_change_the_fit(models, root, cache):
    report = run_table(get_table("gpua-t4"), root, overrides=_overrides(models),
                       solver={"gpua": {"ths_steps": 40}}, datasets=("eurosat",), cache=cache)
    assert {c.protocol for c in report.cells} == {
        "16-shot", "16-shot-csls", "16-shot-contrastive", "16-shot-adaptive", "16-shot-triplet"}
    assert all(c.status == "ok" for c in report.cells)


def test_cli_repro_writes_the_report_and_reports_missing_data(models, root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["repro", "gpua-t7", "--root", str(root), "--vlm", models["clip_vit"], "--vfm",
            models["dinov2"], "--ths-steps", "5", "--no-cache", "--out", str(out),
            "--datasets", "imagenet_r,imagenet_v2"]
    assert cli_main(args) == 0
    md = (out / "gpua-t7.md").read_text()
    assert "| CLIP | " in md and "/ 74 (" in md and "/ 77.5 (" in md  # ImageNet-R paper numbers
    assert md in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"gpua-t7.md", "gpua-t7.csv", "gpua-t7.json"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["repro", "gpua-t7", "--root", str(empty), "--vlm", models["clip_vit"],
                     "--out", str(tmp_path / "o2"), "--datasets", "imagenet_a"]) == 2
    captured = capsys.readouterr()
    assert "missing" in captured.out and "imagenet-a" in captured.out
    assert "no cell of the table could be run" in captured.err


def test_eval_puts_the_loss_ablation_paper_row_beside_it(models, root, cache, monkeypatch):
    """``python -m core eval --gpua-loss csls --gpua-shots 16`` is compared with GPUA's loss
    table, not with THS's number (the tiny models stand in for CLIP B/16 and DINOv3 B/16 in
    the paper lookup only)."""
    import core.models
    from core.config import MethodSettings
    from core.eval.harness import EvalConfig, evaluate_dataset

    real = core.models.get_spec
    stand_in = {models["clip_vit"]: "clip-vit-b16", models["dinov2"]: "dinov3-vitb16"}
    monkeypatch.setattr(core.models, "get_spec", lambda key: real(stand_in.get(key, key)))
    for loss, paper in (("csls", 72.4), ("triplet", 75.3), ("ths", 80.3)):
        solver = MethodSettings().replace(gpua={"loss": loss, "ths_steps": 5})
        report = evaluate_dataset("eurosat", root, EvalConfig(
            methods=("gpua",), vlm=models["clip_vit"], vfm=models["dinov2"], gpua_shots=16,
            solver=solver), cache=cache)
        row = report.row("gpua")
        assert (row.status, row.paper, row.paper_exact) == ("ok", paper, True), loss
        assert row.protocol == "16-shot" + ("" if loss == "ths" else f"-{loss}")


def test_cli_repro_runs_the_domain_table_on_what_is_there(models, root, tmp_path, capsys):
    """``repro otf-cvpr-domains``: the four stand-ins run, the nine absent datasets are listed
    as missing with their expected layout, and no paper number appears anywhere."""
    table = get_table("otf-cvpr-domains")
    out = tmp_path / "out"
    assert cli_main(["repro", table.id, "--root", str(root), "--vlm", models["clip_vit"],
                     "--vfm", models["dinov2"], "--out", str(out), "--no-cache"]) == 0
    data = json.loads((out / f"{table.id}.json").read_text())
    status = {(c["row"], c["dataset"]): c["status"] for c in data["cells"]}
    for ds in table.datasets:
        want = "ok" if ds in STAND_INS[table.id] else "missing"
        assert status[("CLIP", ds)] == status[("OTFusion", ds)] == want, ds
    assert all(c["paper"] is None for c in data["cells"])
    assert data["paper_sources"] == {"CLIP": NO_PAPER, "OTFusion": NO_PAPER}
    md = (out / f"{table.id}.md").read_text()
    assert "| " + " | ".join(table.datasets) + " |" in md  # every dataset, absent ones too
    assert "missing / no paper number" in md and "CONCH" in md and "GeoRSCLIP" in md
    assert "aid: not evaluated: aid: no folder AID/images or AID" in md
    assert "NCT-CRC-HE (CRC-VAL-HE-7K) (histopathology): test split = CRC-VAL-HE-7K" in md
    assert "the 106 remote-sensing templates, averaged" in md
    assert "- OTFusion: vlm=" in md and "otfusion_recipes=('paper',)" in md
    assert md in capsys.readouterr().out
