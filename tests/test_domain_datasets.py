"""Readers of the remote-sensing and histopathology datasets (core.data.domain_datasets): the
release layouts (folder per class, NCT / LC25000 codes, EuroSAT's CoOp folder), RS-TransCLIP's
flat <class>_<n> files and skin cancer's CSV are accepted; a wrong layout is refused naming the
expected one. Stand-ins are generated into tmp_path, never committed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_evaluate import _png

from core.data.benchmarks import DatasetError, open_benchmark
from core.data.classes import PRESET_DIR
from core.data.domain_datasets import DOMAIN_DATASETS, domain_spec, open_domain_dataset
from core.eval.harness import EvalConfig, evaluate_dataset
from core.models.tiny import tiny_test_models


def _release_name(spec: dict, name: str) -> str:
    """The release's folder name of a class: its alias when it has one (NCT "ADI")."""
    return next((a for a, c in spec["aliases"].items() if c == name), name.replace(" ", "_"))


def make_domain(root, key: str, layout: str = "folders", *, n: int = 1, classes=None,
                seed: int = 0):
    """A stand-in of ``key``: "folders" (release: <dir>/<class folder>/<i>.png), "flat"
    (RS-TransCLIP: <Name>/images/<classnospace>_<i>.png) or "csv" (skin cancer). Returns the
    {relative file name: class index} it wrote."""
    spec, rng = domain_spec(key), np.random.default_rng(seed)
    names = spec["classes"] if classes is None else classes
    dirs = spec["dirs"]
    written = {}
    for name in names:
        k, base = spec["classes"].index(name), rng.integers(0, 255, 3)
        for i in range(n):
            if layout == "flat":
                rel, folder = f"{name.replace(' ', '')}_{i}.png", root / dirs[0]
            elif layout == "csv":
                rel, folder = f"data/tiles/{_release_name(spec, name)}/{i}.png", root / dirs[0]
            else:
                sub = next(d for d in dirs if not d.endswith("images"))
                rel, folder = f"{_release_name(spec, name)}/{i}.png", root / sub
            _png(folder / rel, rng, base)
            written[rel] = k
    if layout == "csv":
        c = spec["csv"]
        with (root / dirs[0] / c["file"]).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([c["path"], c["class"], c["split"]])
            for rel in written:
                w.writerow([rel, rel.split("/")[2], c["test"]])
            w.writerow(["data/tiles/elsewhere.png", rel.split("/")[2], "Train"])  # not test
    return written


LAYOUTS = {k: ("csv" if "csv" in domain_spec(k) else "folders") for k in DOMAIN_DATASETS}


def test_the_data_file_holds_the_authors_class_lists_and_prompts():
    data = json.loads((PRESET_DIR / "domain_datasets.json").read_text())
    assert len(data["templates"]["remote_sensing"]) == 106  # RS-TransCLIP's average prompt
    assert data["templates"]["remote_sensing"][0] == "a satellite photo of a {}."
    assert len(data["templates"]["histopathology"]) == 22
    sizes = {k: len(domain_spec(k)["classes"]) for k in DOMAIN_DATASETS}
    assert sizes == {"aid": 30, "eurosat_rs": 10, "mlrsnet": 46, "optimal31": 31,
                     "patternnet": 38, "resisc45": 45, "rsc11": 11, "rsicb128": 45,
                     "rsicb256": 35, "whurs19": 19, "nct_crc": 9, "lc_lung": 3,
                     "skincancer": 16}


@pytest.mark.parametrize("key", list(DOMAIN_DATASETS))
def test_each_dataset_reads_its_release_layout(key, tmp_path):
    written = make_domain(tmp_path, key, LAYOUTS[key], n=2)
    data = open_benchmark(key.upper(), tmp_path)  # names are case-insensitive
    spec = domain_spec(key)
    assert data.class_names == tuple(spec["classes"]) and data.is_preset
    got = {e.name: e.label for e in data.splits["test"]}
    assert got == written  # every image, with its class (the CSV's Train row left out)
    assert len(data.templates) == (22 if spec["domain"] == "histopathology" else 106)
    assert data.template == data.templates[0] and not data.splits["train"]
    assert any("templates, averaged" in n for n in data.notes)


def test_flat_rs_transclip_layout_and_release_folders_agree(tmp_path):
    flat = make_domain(tmp_path / "a", "whurs19", "flat")
    folders = make_domain(tmp_path / "b", "whurs19", "folders")
    a = open_domain_dataset("whurs19", tmp_path / "a")
    b = open_domain_dataset("whurs19", tmp_path / "b")
    assert sorted(e.label for e in a.splits["test"]) == sorted(flat.values()) == sorted(
        folders.values()) == list(range(19))
    assert a.folder.name == "images" and b.folder.name == "WHURS19"


def test_eurosat_rs_reads_the_release_folders_with_rs_names(tmp_path):
    make_domain(tmp_path, "eurosat_rs")  # EuroSAT/2750/AnnualCrop/... (the release's names)
    data = open_benchmark("eurosat_rs", tmp_path)
    assert data.class_names[0] == "annual crop land" and data.folder.name == "2750"
    by_name = {e.name.split("/")[0]: e.label for e in data.splits["test"]}
    assert by_name["SeaLake"] == data.class_names.index("sea or lake")
    assert by_name["Highway"] == data.class_names.index("highway or road")
    (tmp_path / "EuroSAT" / "2750").rename(tmp_path / "EuroSAT" / "images")  # or RS-TransCLIP's
    assert open_benchmark("eurosat_rs", tmp_path).folder.name == "images"


def test_category_folders_above_the_class_folders_are_looked_through(tmp_path):
    """RSI-CB256's release: <category>/<class>/ (transportation/airport_runway/...)."""
    make_domain(tmp_path / "t", "rsicb256", classes=["airport runway", "avenue"])
    make_domain(tmp_path / "w", "rsicb256", classes=["river", "dam"])
    (tmp_path / "RSICB256").mkdir()
    for cat in ("t", "w"):  # the category folders
        (tmp_path / cat / "RSICB256").rename(tmp_path / "RSICB256" / cat)
    data = open_domain_dataset("rsicb256", tmp_path)
    got = {e.name: e.label for e in data.splits["test"]}
    names = data.class_names
    assert got == {"t/airport_runway/0.png": names.index("airport runway"),
                   "t/avenue/0.png": names.index("avenue"), "w/river/0.png": names.index("river"),
                   "w/dam/0.png": names.index("dam")}


def test_missing_classes_stay_candidates_with_a_note(tmp_path):
    make_domain(tmp_path, "nct_crc", classes=["Adipose", "Debris"])
    data = open_domain_dataset("nct_crc", tmp_path)
    assert len(data.class_names) == 9 and {e.label for e in data.splits["test"]} == {0, 2}
    assert any("no image of 7 of its 9 classes" in n for n in data.notes)


def test_wrong_layouts_are_refused_naming_the_expected_one(tmp_path):
    with pytest.raises(DatasetError, match=r"no folder NCT-CRC-HE-100K/CRC-VAL-HE-7K or "
                                           r"CRC-VAL-HE-7K under .*Expected:\n.*one folder per"):
        open_domain_dataset("nct_crc", tmp_path)
    _png(tmp_path / "CRC-VAL-HE-7K" / "KIDNEY" / "0.png", np.random.default_rng(0),
         np.array([9, 9, 9]))
    with pytest.raises(DatasetError, match=r"class folder 'KIDNEY' is not one of its 9 "
                                           r"classes.*\n.*classes: Adipose, Background"):
        open_domain_dataset("nct_crc", tmp_path)
    _png(tmp_path / "AID" / "images" / "airport.png", np.random.default_rng(0),
         np.array([9, 9, 9]))
    with pytest.raises(DatasetError, match="airport.png is not named <class>_<n>"):
        open_domain_dataset("aid", tmp_path)
    tif = tmp_path / "LC25000" / "lung" / "lung_n" / "0.tif"
    tif.parent.mkdir(parents=True)
    tif.write_bytes(b"II*\x00")
    with pytest.raises(DatasetError, match="TIFF files .*convert them to PNG"):
        open_domain_dataset("lc_lung", tmp_path)
    (tmp_path / "skincancer" / "data").mkdir(parents=True)
    (tmp_path / "skincancer" / "data" / "tiles-v2.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(DatasetError, match=r"no column\(s\) \['class', 'file', 'set'\]"):
        open_domain_dataset("skincancer", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'kather'"):
        open_domain_dataset("kather", tmp_path)


def test_the_harness_ensembles_the_dataset_prompts_unless_overridden(tmp_path):
    make_domain(tmp_path, "lc_lung")
    models = tiny_test_models()
    config = EvalConfig(methods=("clip",), vlm=models["clip_vit"], vfm=None)
    report = evaluate_dataset("lc_lung", tmp_path, config)
    assert len(report.settings["templates"]) == 22 and report.row("clip").status == "ok"
    assert report.n_test == 3 and report.row("clip").paper is None
    override = evaluate_dataset("lc_lung", tmp_path, EvalConfig(
        methods=("clip",), vlm=models["clip_vit"], vfm=None, template="a photo of {}."))
    assert override.settings["templates"] == ["a photo of {}."]
    assert any("not the paper protocol" in n for n in override.notes)
