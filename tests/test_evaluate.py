"""Tests for the evaluation harness (core.eval.harness, core.eval.report, core.data.coop,
core.data.benchmarks, core.eval.paper_numbers).

Every dataset is generated under tmp_path at test time (tiny PNGs in the CoOp layout with a
split_zhou JSON, or folder-per-class); the encoders are the tiny random-initialised test models,
so accuracies are meaningless: the tests check the plumbing, the tables and the error messages.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main as cli_main
from core.config import GPUASettings, MethodSettings
from core.data import get_preset
from core.data.benchmarks import (
    LAYOUTS,
    DatasetError,
    SplitEntry,
    balanced_subset,
    find_benchmarks,
    iter_chunks,
    open_benchmark,
)
from core.eval.harness import DatasetReport, EvalConfig, MethodRow, evaluate_dataset, extract_split
from core.eval.paper_numbers import DATASETS, TABLES, otfusion_protocol, reported
from core.eval.report import markdown_report, summary_markdown, sweep_markdown, write_report
from core.models import get_spec
from core.models.tiny import tiny_test_models
from core.pipeline.cache import FeatureCache
from core.pipeline.extraction import ExtractSettings

# THS steps are the slow part of GPUA; 5 exercise it
FAST = MethodSettings(gpua=GPUASettings(ths_steps=5))
AVG_TOL = 0.05  # the papers print averages rounded to 0.01 or 0.1


def _png(path: Path, rng, base, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def make_eurosat(root: Path, *, n_train=2, n_val=1, n_test=2, seed=0) -> Path:
    """EuroSAT in the CoOp layout: eurosat/2750/<Class>/<i>.png + split_zhou_EuroSAT.json."""
    preset = get_preset("eurosat")
    folder, rng = root / "eurosat", np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for k, raw in enumerate(preset.raw_class_names):
        base, i = rng.integers(0, 255, 3), 0
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(n):
                rel = f"{raw.replace(' ', '')}/{raw.replace(' ', '')}_{i}.png"
                _png(folder / "2750" / rel, rng, base)
                split[name].append([rel, k, raw])
                i += 1
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split), encoding="utf-8")
    return folder


def make_folder_dataset(folder: Path, classes=("red fox", "blue_jay", "oak"), *, n_train=2,
                        n_test=2, with_train=True) -> Path:
    rng = np.random.default_rng(1)
    for c in classes:
        base = rng.integers(0, 255, 3)
        for i in range(n_test):
            _png(folder / ("test" if with_train else "") / c / f"{i}.png", rng, base)
        for i in range(n_train if with_train else 0):
            _png(folder / "train" / c / f"{i}.png", rng, base)
    return folder


@pytest.fixture(scope="module")
def models():
    return tiny_test_models()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_eurosat(root)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(models, **kw):
    kw.setdefault("solver", FAST)
    return EvalConfig(vlm=models["clip_vit"], vfm=models["dinov2"], n_crops=3, **kw)


def _cli(models, cache_dir, *args):
    return cli_main(["eval", "--vlm", models["clip_vit"], "--vfm", models["dinov2"],
                     "--cache-dir", str(cache_dir), "--ths-steps", "5", "--n-crops", "3", *args])


# ----------------------------------------------------------------------------- end to end


def test_cli_end_to_end_writes_markdown_csv_json(models, data_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _cli(models, cache_dir, "--dataset", "eurosat", "--root", str(data_root),
              "--methods", "clip,otfusion,gpua,lazsl", "--lazsl-class-names", "--out", str(out))
    assert rc == 0
    stem = f"eurosat_{models['clip_vit']}_{models['dinov2']}"
    md = (out / f"{stem}.md").read_text()
    assert "| Method | Recipe | Protocol | Accuracy (%) | Paper (%) | Δ |" in md
    for title in ("CLIP zero-shot | – | zero-shot", "OTFusion | paper | joint",
                  "OTFusion | official | joint", "GPUA | paper | full",
                  "LaZSL (class names) | paper | class-names"):
        assert f"| {title} |" in md
    assert "20 test images, 10 classes" in md
    assert "a centered satellite photo of {}." in md  # the preset's single CoOp prompt
    assert "GPUA fitted on 20 unlabeled train images" in md
    assert md in capsys.readouterr().out
    rows = list(csv.DictReader((out / f"{stem}.csv").open()))
    # OTFusion once per recipe (both by default), on the same features
    assert [(r["method"], r["recipe"]) for r in rows] == [
        ("clip", ""), ("otfusion", "paper"), ("otfusion", "official"), ("gpua", "paper"),
        ("lazsl", "paper")]
    assert all(r["status"] == "ok" and 0 <= float(r["accuracy"]) <= 100 for r in rows)
    vlm, vfm = (get_spec(models[k]).display_name for k in ("clip_vit", "dinov2"))
    assert rows[1]["sources"] == f"{vlm} image; {vfm}; Y: {vlm}"  # the main setting
    report = json.loads((out / f"{stem}.json").read_text())
    assert report["dataset"] == "eurosat" and report["n_test"] == 20
    assert report["n_gpua_pool"] == 20 and report["settings"]["vlm"] == models["clip_vit"]
    assert set(report["extract_seconds"]) == {"test", "train"}
    assert {r["protocol"] for r in report["rows"]} == {"zero-shot", "joint", "full",
                                                        "class-names"}


def test_python_api_gpua_star_and_labels(models, data_root, cache_dir):
    cache = FeatureCache(cache_dir)
    report = evaluate_dataset("eurosat", data_root,
                              _config(models, methods=("clip", "otfusion", "gpua"),
                                      gpua_shots=1, seed=3), cache=cache)
    assert isinstance(report, DatasetReport)
    assert [r.key for r in report.rows] == ["clip", "otfusion:paper", "otfusion:official",
                                            "gpua:paper"]
    gpua = report.row("gpua")
    assert gpua.title == "GPUA* (1-shot)" and gpua.protocol == "1-shot"
    assert report.n_gpua_pool == 10  # one unlabeled image per class
    assert any("labels only pick this balanced pool" in n for n in report.notes)
    assert all(r.paper is None for r in report.rows)  # tiny models: no paper ran them
    # What THS changed is reported against the Procrustes map alone (a note, not a row).
    assert sum("GPUA* (1-shot) with the Procrustes map W0 alone (no THS)" in n
               for n in report.notes) == 1
    # A second run reads every feature from the cache.
    again = evaluate_dataset("eurosat", data_root, _config(models, methods=("clip",)),
                             cache=cache)
    assert again.settings["extraction"]["test"].endswith("(20 cached, 0 encoded)")
    # Labels come from the split file, in entry order, whatever the chunking.
    data = open_benchmark("eurosat", data_root)
    entries = data.splits["test"]
    settings = ExtractSettings(vlm=models["clip_vit"], vfm=models["dinov2"])
    split = extract_split(entries, data.class_names, settings, cache=cache, chunk_size=3)
    assert split.features.labels.tolist() == [e.label for e in entries]
    assert split.features.vfm_image.shape[0] == len(entries)


def test_sweep_table_has_the_grid(models, data_root, cache_dir, tmp_path):
    config = _config(models, methods=("clip", "otfusion"), sweep=True, sweep_lams=(0.0, 0.8),
                     sweep_epss=(0.01, 0.1))
    report = evaluate_dataset("eurosat", data_root, config, cache=FeatureCache(cache_dir))
    assert {(r["lam"], r["eps"]) for r in report.sweep} == {(0.0, 0.01), (0.8, 0.01),
                                                            (0.0, 0.1), (0.8, 0.1)}
    table = sweep_markdown(report)
    assert "| eps \\ lam | 0 | 0.8 |" in table
    assert table.count("\n| 0.01 |") == 1 and table.count("\n| 0.1 |") == 1
    paths = write_report(report, tmp_path)
    assert {p.name.split("_")[0] for p in paths} >= {"sweep"}
    rows = list(csv.DictReader(next(p for p in paths if p.name.startswith("sweep")
                                    and p.suffix == ".csv").open()))
    assert len(rows) == 4


def test_cli_sweep_flag(models, data_root, cache_dir, tmp_path):
    rc = _cli(models, cache_dir, "--dataset", "eurosat", "--root", str(data_root), "--methods",
              "clip,otfusion", "--sweep", "--sweep-lams", "0.5,1", "--sweep-epss", "0.05",
              "--out", str(tmp_path))
    assert rc == 0
    sweep = next(tmp_path.glob("sweep_*.md")).read_text()
    assert "| eps \\ lam | 0.5 | 1 |" in sweep and "| 0.05 |" in sweep


def test_all_finds_datasets_and_writes_summary(models, data_root, cache_dir, tmp_path, capsys):
    root = tmp_path / "root"
    make_eurosat(root)
    make_folder_dataset(root / "toys")
    (root / "dtd" / "images").mkdir(parents=True)  # incomplete: no split file
    assert find_benchmarks(root) == ["dtd", "eurosat", str(root / "toys")]
    out = tmp_path / "out"
    rc = _cli(models, cache_dir, "--all", "--root", str(root), "--methods", "clip,otfusion",
              "--out", str(out))
    assert rc == 0
    summary = next(out.glob("summary_*.md")).read_text()
    assert "| eurosat |" in summary and "| toys |" in summary and "| **Avg** |" in summary
    assert "not evaluated: dtd" in summary and "split_zhou_DescribableTextures.json" in summary
    assert "| CLIP zero-shot | CLIP zero-shot (paper) |" in summary
    rows = json.loads(next(out.glob("summary_*.json")).read_text())["rows"]
    assert [r["dataset"] for r in rows] == ["eurosat", "toys", "Avg"]
    assert rows[-1]["clip"] == pytest.approx((rows[0]["clip"] + rows[1]["clip"]) / 2)
    assert "skipped dtd" in capsys.readouterr().err


def test_folder_per_class_dataset(models, cache_dir, tmp_path):
    folder = make_folder_dataset(tmp_path / "birds")
    report = evaluate_dataset(str(folder), None,
                              _config(models, methods=("clip", "otfusion", "gpua")),
                              cache=FeatureCache(cache_dir))
    assert report.dataset == "birds" and report.n_classes == 3 and report.n_test == 6
    assert report.n_gpua_pool == 6 and report.template == "a photo of a {}."
    assert all(r.status == "ok" for r in report.rows)
    data = open_benchmark(str(folder), None)
    assert data.class_names == ("blue jay", "oak", "red fox")  # folders, underscores as spaces
    # One folder of class folders: test split only, GPUA becomes transductive (with a note).
    single = make_folder_dataset(tmp_path / "flat", with_train=False)
    report = evaluate_dataset("flat", tmp_path, _config(models, methods=("clip", "gpua")),
                              cache=FeatureCache(cache_dir))
    assert report.n_gpua_pool == 0 and report.row("gpua").protocol == "transductive"
    assert any("transductive" in n for n in report.notes)
    assert any("GPUA with the Procrustes map W0 alone" in n for n in report.notes)
    assert open_benchmark(str(single), None).splits["train"] == ()


def test_lazsl_with_attribute_dir_and_without(models, data_root, cache_dir, tmp_path):
    attrs = tmp_path / "attrs"
    attrs.mkdir()
    (attrs / "eurosat.json").write_text(json.dumps(
        {"Forest": ["dense green trees", "dark canopy"], "River": ["a winding blue line"]}))
    report = evaluate_dataset("eurosat", data_root,
                              _config(models, methods=("clip", "lazsl"),
                                      attributes_dir=str(attrs)), cache=FeatureCache(cache_dir))
    lazsl = report.row("lazsl")
    assert lazsl.status == "ok" and lazsl.protocol == "descriptors" and lazsl.title == "LaZSL"
    assert any("no descriptors for 8 of 10 classes" in n for n in report.notes)
    skipped = evaluate_dataset("eurosat", data_root, _config(models, methods=("clip", "lazsl")),
                               cache=FeatureCache(cache_dir)).row("lazsl")
    assert skipped.status == "skipped" and "--attributes-dir" in skipped.note
    assert "| LaZSL | paper | class-names | skipped |" in markdown_report(
        evaluate_dataset("eurosat", data_root, _config(models, methods=("lazsl",)),
                         cache=FeatureCache(cache_dir)))


def test_bad_image_is_skipped_not_fatal(models, cache_dir, tmp_path):
    folder = make_folder_dataset(tmp_path / "withbad", with_train=False)
    (folder / "oak" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = evaluate_dataset(str(folder), None, _config(models, methods=("clip",)),
                              cache=FeatureCache(cache_dir))
    assert report.n_test == 6 and [s.name for s in report.skipped] == ["oak/broken.png"]
    assert "1 file(s) skipped (oak/broken.png" in markdown_report(report)


# ----------------------------------------------------------------------------- clear errors


def _cli_error(models, cache_dir, capsys, *args) -> str:
    assert _cli(models, cache_dir, *args) == 2
    return capsys.readouterr().err


def test_unknown_dataset_lists_the_benchmarks(models, cache_dir, tmp_path, capsys):
    err = _cli_error(models, cache_dir, capsys, "--dataset", "petz", "--root", str(tmp_path))
    assert "unknown dataset 'petz'" in err
    for key in LAYOUTS:
        assert key in err
    assert "<folder>/train/<class>/" in err


def test_missing_data_folder_shows_expected_layout(models, cache_dir, tmp_path, capsys):
    err = _cli_error(models, cache_dir, capsys, "--dataset", "oxford_pets", "--root",
                     str(tmp_path))
    assert f"no folder {tmp_path / 'oxford_pets'}" in err
    assert "images/" in err and "split_zhou_OxfordPets.json" in err
    err = _cli_error(models, cache_dir, capsys, "--dataset", "imagenet", "--root", str(tmp_path))
    assert "images/val/<wnid>/" in err


def test_missing_split_file_shows_expected_layout(models, cache_dir, tmp_path, capsys):
    (tmp_path / "food-101" / "images").mkdir(parents=True)
    err = _cli_error(models, cache_dir, capsys, "--dataset", "food101", "--root", str(tmp_path))
    assert "split_zhou_Food101.json is missing" in err and "--split-file" in err
    assert f"{tmp_path / 'food-101'}/\n  images/" in err


def test_usage_errors(models, cache_dir, tmp_path, capsys):
    err = _cli_error(models, cache_dir, capsys, "--root", str(tmp_path))
    assert "--dataset NAME or --all" in err
    err = _cli_error(models, cache_dir, capsys, "--all", "--root", str(tmp_path))
    assert "no dataset under" in err and "oxford_pets" in err
    err = _cli_error(models, cache_dir, capsys, "--dataset", "eurosat", "--root", str(tmp_path),
                     "--methods", "clip,magic")
    assert "unknown ['magic']" in err


def test_split_file_errors(tmp_path):
    folder = make_eurosat(tmp_path, n_train=1, n_val=0, n_test=1)
    split = folder / "split_zhou_EuroSAT.json"
    split.write_text(json.dumps({"test": [["Forest/Forest_0.png", 99, "nowhere"]]}))
    with pytest.raises(DatasetError, match="label 99 .* outside 0..9"):
        open_benchmark("eurosat", tmp_path)
    split.write_text(json.dumps({"test": [["Forest/x.png"]]}))
    with pytest.raises(DatasetError, match="bad test entry"):
        open_benchmark("eurosat", tmp_path)
    split.write_text(json.dumps({"test": [["Forest/none.png", 1, "Forest"]]}))
    with pytest.raises(DatasetError, match="lists files that do not exist"):
        open_benchmark("eurosat", tmp_path)


# ----------------------------------------------------------------------------- readers


def test_split_file_class_names_win_over_label_indices(tmp_path):
    folder = make_eurosat(tmp_path, n_train=0, n_val=0, n_test=1)
    split = json.loads((folder / "split_zhou_EuroSAT.json").read_text())
    split["test"][0][1] = 5  # "Annual Crop Land" given the wrong index
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    data = open_benchmark("eurosat", tmp_path)
    assert data.splits["test"][0].label == 0
    assert any("disagrees" in n for n in data.notes)


def test_imagenet_and_aircraft_readers(tmp_path):
    rng = np.random.default_rng(0)
    wnids = ["n01440764", "n01443537", "n01484850"]
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text(
        "".join(f"{w} name{i}\n" for i, w in enumerate(wnids)))
    for split in ("train", "val"):
        for w in wnids[1:]:  # a subset of the classes: labels still follow classnames.txt
            _png(tmp_path / "imagenet" / "images" / split / w / "a.JPEG", rng, 100)
    data = open_benchmark("imagenet", tmp_path)
    assert [e.label for e in data.splits["test"]] == [1, 2]
    assert data.splits["test"][0].name == "images/val/n01443537/a.JPEG"
    assert len(data.class_names) == 1000 and len(data.splits["train"]) == 2

    air = tmp_path / "fgvc_aircraft"
    _png(air / "images" / "0001.jpg", rng, 50)
    (air / "images_variant_test.txt").write_text("0001 737-200\n")
    data = open_benchmark("fgvc_aircraft", tmp_path)
    assert data.splits["test"][0].label == get_preset("fgvc_aircraft").raw_class_names.index(
        "737-200")
    (air / "images_variant_test.txt").write_text("0001 Sopwith Camel\n")
    with pytest.raises(DatasetError, match="'Sopwith Camel'"):
        open_benchmark("fgvc_aircraft", tmp_path)


def test_balanced_subset_is_seeded_and_balanced():
    entries = [SplitEntry(Path(f"{k}_{i}"), f"{k}_{i}", k) for k in range(4) for i in range(10)]
    pool = balanced_subset(entries, per_class=3, seed=0)
    assert sorted(e.label for e in pool) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert pool == balanced_subset(entries, per_class=3, seed=0)
    assert pool != balanced_subset(entries, per_class=3, seed=1)
    small = balanced_subset(entries, 6, seed=0)
    assert len(small) == 6 and len({e.label for e in small}) == 4


def test_iter_chunks_reads_lazily_and_reports_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "a.png"
    _png(good, rng, 10)
    entries = [SplitEntry(good, "a.png", 0), SplitEntry(tmp_path / "gone.png", "gone.png", 0),
               SplitEntry(good, "a2.png", 1)]
    chunks = iter_chunks(entries, 2)
    items, bad = next(chunks)
    assert [it.name for it in items] == ["a.png"] and bad[0].name == "gone.png"
    items, bad = next(chunks)
    assert [it.name for it in items] == ["a2.png"] and not bad


# ----------------------------------------------------------------------------- paper numbers


def test_reference_tables_match_their_printed_averages():
    for row in TABLES:
        if set(row.values) <= set(DATASETS) and len(row.values) == len(DATASETS):
            mean = sum(row.values.values()) / len(row.values)
            assert abs(mean - row.average) <= AVG_TOL, row.source
    # GPUA's CLIP row is OTFusion Table 2's "native CLIP" row (avg 65.24).
    gpua_clip = next(r for r in TABLES if r.paper == "GPUA" and r.method == "clip")
    assert gpua_clip.values["imagenet"] == 66.6 and gpua_clip.values["eurosat"] == 48.3


def test_reference_lookup_by_backbone():
    b16, rn50 = get_spec("clip-vit-b16"), get_spec("clip-rn50")
    dino_l, dino_b = get_spec("dinov2-large"), get_spec("dinov2-base")
    hit = reported("otfusion", "oxford_pets", "joint", vlm_spec=b16, vfm_spec=dino_l)
    assert hit.value == 94.58 and hit.exact and "Table 1a" in hit.source
    assert reported("otfusion", "oxford_pets", "joint", vlm_spec=rn50,
                    vfm_spec=dino_l).value == 93.84
    other = reported("otfusion", "oxford_pets", "joint", vlm_spec=b16, vfm_spec=dino_b)
    assert other.value == 94.58 and not other.exact
    assert reported("gpua", "eurosat", "16-shot", vlm_spec=b16,
                    vfm_spec=get_spec("dinov3-vitb16")).value == 80.3
    assert reported("gpua", "eurosat", "16-shot", vlm_spec=b16, vfm_spec=dino_l).value == 78.7
    assert reported("lazsl", "food101", "descriptors", vlm_spec=b16).value == 89.7
    assert reported("lazsl", "eurosat", "descriptors", vlm_spec=b16) is None
    assert reported("clip", "dtd", "zero-shot", vlm_spec=get_spec("siglip-vit-b16")) is None


def test_markdown_shows_paper_number_and_difference():
    b16, dino_b = get_spec("clip-vit-b16"), get_spec("dinov2-base")
    rows = []
    for method, protocol, acc in (("clip", "zero-shot", 86.0), ("otfusion", "joint", 95.0)):
        ref = reported(method, "oxford_pets", protocol, vlm_spec=b16, vfm_spec=dino_b)
        rows.append(MethodRow(method=method, title=method, protocol=protocol, status="ok",
                              accuracy=acc, n_images=3669, seconds=0.5, paper=ref.value,
                              paper_source=ref.source, paper_exact=ref.exact,
                              recipe="" if method == "clip" else "paper"))
    report = DatasetReport(
        dataset="oxford_pets", display_name="Oxford-IIIT Pets", n_classes=37, n_test=3669,
        n_gpua_pool=0, template="a photo of a {}, a type of pet.", rows=tuple(rows),
        extract_seconds={"test": 1.0},
        settings={"vlm": "clip-vit-b16", "vfm": "dinov2-base", "extraction": {"test": "1.0 s"}})
    md = markdown_report(report)
    assert "| clip | – | zero-shot | 86.00 | 86.92 | -0.92 | 3,669 |" in md
    assert "| otfusion | paper | joint | 95.00 | 94.58* | +0.42 |" in md
    assert "the paper used another VFM" in md
    summary = summary_markdown([report])
    assert "| oxford_pets | 3,669 | 86.00 | 86.92 | 95.00 | 94.58 |" in summary
    assert "| otfusion [paper recipe] | otfusion [paper recipe] (paper) |" in summary


# ----------------------------------------------------------------------------- OTFusion settings,
# recipes and the inductive mode


@pytest.mark.parametrize("setting, variant, has_vfm, protocol, table, pets", [
    ("main", "joint", True, "joint", "Table 1a", 94.58),
    ("vfm_only", "joint", True, "dinov2_only", "Table 2", 94.22),
    ("vlm_only", "joint", True, "clip_only", "Table 2", 92.56),
    ("main", "joint", False, "clip_only", "Table 2", 92.56),  # no VFM: the VLM image alone
    ("main", "concat", True, "concat", "Table 2", 94.82),
    ("main", "no_joint", True, "no_joint", "Table 2", 93.51),
    ("vfm_only", "semantic_only", True, "semantic_only", "Table 2", 89.23),
    ("vfm_only", "concat", True, "vfm_only-concat", None, None),  # no paper ran it
])
def test_otfusion_protocol_maps_each_setting_to_its_paper_row(setting, variant, has_vfm,
                                                              protocol, table, pets):
    assert otfusion_protocol(setting, variant, has_vfm=has_vfm) == protocol
    hit = reported("otfusion", "oxford_pets", protocol, vlm_spec=get_spec("clip-vit-b16"),
                   vfm_spec=get_spec("dinov2-large"))
    if table is None:
        assert hit is None
    else:
        assert (hit.value, hit.row.table, hit.exact) == (pets, table, True)


@pytest.fixture()
def paper_backbones(models, monkeypatch):
    """The tiny test models reported as the papers' CLIP ViT-B/16 and DINOv2 ViT-L/14 to the
    paper lookup (only there: extraction keeps the tiny models), so a tiny run gets paper rows."""
    import core.models

    real = core.models.get_spec
    stand_in = {models["clip_vit"]: "clip-vit-b16", models["dinov2"]: "dinov2-large"}
    monkeypatch.setattr(core.models, "get_spec", lambda key: real(stand_in.get(key, key)))


# EuroSAT in OTFusion Tables 1a / 2 (CLIP ViT-B/16 + DINOv2 ViT-L/14)
EUROSAT = {"joint": 81.86, "dinov2_only": 76.85, "clip_only": 65.78, "concat": 82.28,
           "semantic_only": 50.47, "no_joint": 71.31}


@pytest.mark.parametrize("otfusion, protocol", [
    ({}, "joint"),
    ({"setting": "vfm_only"}, "dinov2_only"),
    ({"setting": "vlm_only"}, "clip_only"),
    ({"variant": "concat"}, "concat"),
    ({"variant": "semantic_only"}, "semantic_only"),
])
def test_eval_puts_each_settings_paper_row_beside_it(models, data_root, cache_dir,
                                                     paper_backbones, otfusion, protocol):
    solver = FAST.replace(otfusion=otfusion)
    report = evaluate_dataset("eurosat", data_root,
                              _config(models, methods=("clip", "otfusion"), solver=solver),
                              cache=FeatureCache(cache_dir))
    assert report.row("clip").paper == 50.42  # Table 1a's CLIP row
    for recipe in ("paper", "official"):
        row = report.row(f"otfusion:{recipe}")
        assert (row.status, row.protocol, row.paper, row.paper_exact) == (
            "ok", protocol, EUROSAT[protocol], True)
        assert ("Table 1a" if protocol == "joint" else "Table 2") in row.paper_source
    official = report.row("otfusion:official")
    assert "CVPR 2026" in official.note and "v1" in official.note
    assert "CVPR 2026" not in report.row("otfusion:paper").note
    md = markdown_report(report)
    assert f"| OTFusion | official | {protocol} |" in md and "| OTFusion | paper |" in md


def test_both_recipes_run_on_the_same_features_and_name_their_sources(models, data_root,
                                                                       cache_dir):
    from core.config import recipe
    from core.methods.run import labelled_accuracy, run_method

    cache = FeatureCache(cache_dir)
    report = evaluate_dataset("eurosat", data_root, _config(models, methods=("otfusion",)),
                              cache=cache)
    data = open_benchmark("eurosat", data_root)
    test = extract_split(data.splits["test"], data.class_names,
                         ExtractSettings(vlm=models["clip_vit"], vfm=models["dinov2"],
                                         templates=(data.template,)), cache=cache).features
    for name in ("paper", "official"):  # each row is its recipe's run on the same features
        res = run_method("otfusion", test, FAST.replace(otfusion=recipe("otfusion", name)))
        row = report.row(f"otfusion:{name}")
        assert row.accuracy == pytest.approx(100 * labelled_accuracy(res.pred, test.labels))
        assert row.sources == res.sources and len(row.sources) == 3  # image, VFM, Y
    assert report.settings["otfusion_recipes"] == ["paper", "official"]
    only = evaluate_dataset("eurosat", data_root, _config(
        models, methods=("otfusion",), otfusion_recipes=("official",)), cache=cache)
    assert [r.key for r in only.rows] == ["clip", "otfusion:official"]
    summary = summary_markdown([report])
    assert "| OTFusion [paper recipe] |" in summary and "OTFusion [official recipe]" in summary
    with pytest.raises(ValueError, match="otfusion_recipes"):
        _config(models, otfusion_recipes=("paper", "paper"))


def test_cli_otfusion_recipes_and_several_models(models, data_root, cache_dir, tmp_path,
                                                  paper_backbones, capsys):
    out = tmp_path / "out"
    rc = cli_main(["eval", "--vlm", f"{models['clip_vit']},{models['clip_rn']}", "--vfm",
                   f"{models['dinov2']},{models['dinov3']}", "--cache-dir", str(cache_dir),
                   "--dataset", "eurosat", "--root", str(data_root), "--methods",
                   "clip,otfusion", "--otfusion-recipes", "official", "--out", str(out)])
    assert rc == 0
    stem = f"eurosat_{models['clip_vit']}-{models['clip_rn']}_{models['dinov2']}-{models['dinov3']}"
    report = json.loads((out / f"{stem}.json").read_text())
    assert report["settings"]["vlms"] == [models["clip_vit"], models["clip_rn"]]
    otf = next(r for r in report["rows"] if r["method"] == "otfusion")
    assert otf["recipe"] == "official" and otf["protocol"] == "joint"
    assert len(otf["sources"]) == 2 + 2 + 2  # two VLM images, two VFMs, two Y terms
    # the paper fused CLIP and DINOv2 only: its number is shown, flagged as not exact
    assert otf["paper"] == EUROSAT["joint"] and otf["paper_exact"] is False
    clip = next(r for r in report["rows"] if r["method"] == "clip")
    assert clip["paper_exact"] is True  # the baseline uses the first VLM only
    assert "fewer models than this run" in capsys.readouterr().out
    assert _cli(models, cache_dir, "--dataset", "eurosat", "--root", str(data_root),
                "--otfusion-recipes", "paper,v2") == 2
    assert "--otfusion-recipes: unknown ['v2']; choose from paper, official" in (
        capsys.readouterr().err)


def test_otfusion_inductive_fits_on_a_train_pool_and_predicts_the_test_split(
        models, data_root, cache_dir, paper_backbones, monkeypatch):
    import core.methods.run as run_module
    from core import fit_otfusion
    from core.methods.run import labelled_accuracy
    from core.methods.zeroshot import zeroshot_probs

    fits = []
    real = run_module.fit_otfusion
    monkeypatch.setattr(run_module, "fit_otfusion",
                        lambda *a, **kw: fits.append((a, kw)) or real(*a, **kw))
    cache = FeatureCache(cache_dir)
    report = evaluate_dataset("eurosat", data_root, _config(
        models, methods=("clip", "otfusion"), otfusion_shots=1, seed=4), cache=cache)
    rows = [r for r in report.rows if r.method == "otfusion"]
    assert [(r.title, r.protocol, r.recipe) for r in rows] == [
        ("OTFusion inductive (1-shot)", "inductive", "paper"),
        ("OTFusion inductive (1-shot)", "inductive", "official")]
    assert all(r.status == "ok" and r.paper is None for r in rows)  # no paper row for it
    assert "otfusion pool" in report.settings["extraction"]
    assert any("fitted on 10 unlabeled train images (1 per class, seed 4" in n
               for n in report.notes)
    # what was fitted: the pool's main-setting sources, one unlabeled image per class
    (args, kw), _ = fits
    assert [v.shape[0] for v in args[0]] == [10, 10] and kw["recipe"] == "paper"
    # an independent run of the inductive mode gives the official row's accuracy
    data = open_benchmark("eurosat", data_root)
    settings = ExtractSettings(vlm=models["clip_vit"], vfm=models["dinov2"],
                               templates=(data.template,))
    pool = extract_split(balanced_subset(data.splits["train"], per_class=1, seed=4),
                         data.class_names, settings, cache=cache).features
    test = extract_split(data.splits["test"], data.class_names, settings, cache=cache).features
    model = fit_otfusion([pool.vlm_image, pool.vfm_image],
                         [zeroshot_probs(pool.vlm_image, pool.text)], recipe="official")
    pred = model.predict([test.vlm_image, test.vfm_image],
                         [zeroshot_probs(test.vlm_image, test.text)])
    assert rows[1].accuracy == pytest.approx(100 * labelled_accuracy(pred, test.labels))
    # the CLI option reaches the config
    from core.cli import build_parser, eval_config_from_args

    args = build_parser().parse_args(["eval", "--dataset", "x", "--otfusion-shots", "16"])
    assert eval_config_from_args(args).otfusion_shots == 16
