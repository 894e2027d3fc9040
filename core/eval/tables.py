"""Every table of the three papers that the harness can reproduce, as plain data.

``python -m core repro --tables`` lists them with what each needs on disk;
``python -m core repro TABLE_ID --root DATA`` runs one (``core.eval.repro``) and writes its report
with the paper's number beside ours and the exact settings.

A :class:`ReproTable` is a grid: its ``rows`` (a method under some settings, as printed in the
paper) times its ``datasets``. Each row is one run of the evaluation harness per dataset
(``core.eval.harness.evaluate_dataset``) with ``EvalConfig`` = the table's ``config`` + the row's
``config`` (``methods`` = the row's method; CLIP zero-shot always runs too) and the solver
settings ``MethodSettings().replace(**row.solver)``; the paper's number
is the one in ``core.eval.paper_numbers.TABLES`` of that paper, table, method and protocol (and
VFM, where a table has several), so every number exists once; a table whose paper numbers we
do not hold (``paper_numbers=False``: the CVPR successor's domains) reports ours with "no paper
number held". Rows the harness cannot run yet are listed with ``runnable=False`` and what they
need, never run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.config import LAZSL_CROPS_PAPER
from core.data.domain_datasets import DOMAIN_DATASETS
from core.eval.paper_numbers import (
    _GPUA_ORDER,
    _OTF_ORDER,
    CLIP_B16,
    CLIP_RN50,
    DINOV2_L,
    DINOV3_B,
    IMAGENET_SHIFTS,
    TABLES,
    Backbone,
    PaperRow,
)
from core.eval.seg_report import SEGMENTATION_TABLES
from core.models import list_models

__all__ = ["CLASSIFICATION_TABLES", "REPRO_TABLES", "ReproRow", "ReproTable",
           "SEGMENTATION", "get_table", "paper_row"]


@dataclass(frozen=True)
class ReproRow:
    """One printed row: ``method`` ("clip", "otfusion", "gpua", "lazsl") run with ``config``
    (``EvalConfig`` fields, e.g. ``{"vfm": None}``) and ``solver`` (``MethodSettings.replace``
    changes, e.g. ``{"gpua": {"loss": "csls"}}``); ``protocol`` names both the harness row to read
    (``MethodRow.protocol``) and the paper row; ``paper_vfm`` picks among a table's rows that
    differ only by VFM (a ``Backbone.label`` prefix)."""

    label: str
    method: str
    protocol: str
    config: Mapping = field(default_factory=dict)
    solver: Mapping = field(default_factory=dict)
    paper_vfm: str | None = None


@dataclass(frozen=True)
class ReproTable:
    """A paper table: rows x datasets, the shared settings and what it needs on disk."""

    id: str
    paper: str
    table: str
    title: str
    datasets: tuple[str, ...]
    rows: tuple[ReproRow, ...]
    needs: tuple[str, ...]
    config: Mapping = field(default_factory=dict)  # EvalConfig fields shared by every row
    kind: str = "classification"
    runnable: bool = True
    note: str = ""
    own_command: str = ""  # a table run by another subcommand (segmentation: ``seg-eval``)
    paper_numbers: bool = True  # False: we hold none of the paper's numbers for it

    @property
    def command(self) -> str:
        if self.own_command:
            return self.own_command
        lazsl = any(r.method == "lazsl" for r in self.rows)
        extra = " --attributes-dir DESCRIPTORS" if lazsl else ""
        return f"python -m core repro {self.id} --root DATA{extra} --out results/{self.id}"


def paper_row(table: ReproTable, row: ReproRow) -> PaperRow | None:
    """The ``paper_numbers.TABLES`` entry of ``row`` (exactly one; ValueError otherwise), or
    None for a table whose paper numbers we do not hold (``paper_numbers=False``)."""
    if not table.paper_numbers:
        return None
    found = [r for r in TABLES if r.paper == table.paper and r.table == table.table
             and r.method == row.method and r.protocol == row.protocol
             and (row.paper_vfm is None
                  or (r.vfm is not None and r.vfm.label.startswith(row.paper_vfm)))]
    if len(found) != 1:
        raise ValueError(f"{table.id} row {row.label!r}: {len(found)} paper rows match "
                         f"{table.paper} {table.table} {row.method} {row.protocol}.")
    return found[0]


# ----------------------------------------------------------------------------- shared pieces



def _key(backbone: Backbone) -> str:
    """The model registry key of a paper's backbone (``paper_numbers`` names it by its weights:
    one copy), e.g. CLIP ViT-B/16 (OpenAI) -> "clip-vit-b16"."""
    return next(s.key for s in list_models() if backbone.matches(s))


_CLIP_B16, _RN50 = _key(CLIP_B16), _key(CLIP_RN50)
# DINOv2 ViT-L/14: OTFusion's VFM; GPUA's Tables 5 and 7 do not state the DINOv2 size.
_DINOV2, _DINOV3 = _key(DINOV2_L), _key(DINOV3_B)
_COOP = "the dataset in the CoOp layout under --root (DATASETS.md; `python -m core eval --help`)"
_VARIANTS = ("ImageNet-A / -R / -V2 / -Sketch in their release layouts under --root "
             "(core.data.imagenet_variants)")
_IMAGENET = "ImageNet in the CoOp layout (imagenet/images/train + val) for the 16-shot pool"
_GPUA_STAR = {"vlm": _CLIP_B16, "vfm": _DINOV3, "gpua_shots": 16}
_LOSSES = (("CSLS", "csls"), ("Contrastive", "contrastive"), ("Adaptive", "adaptive"),
           ("Triplet", "triplet"), ("THS (Ours)", "ths"))


def _loss_rows() -> tuple[ReproRow, ...]:
    return tuple(ReproRow(label, "gpua", "16-shot" + ("" if loss == "ths" else f"-{loss}"),
                          solver={"gpua": {"loss": loss}}) for label, loss in _LOSSES)


def _otf(label: str, protocol: str, method: str = "otfusion", **otfusion) -> ReproRow:
    return ReproRow(label, method, protocol, solver={"otfusion": otfusion} if otfusion else {})


_GPUA_DATASETS = _GPUA_ORDER
_OTF_DATASETS = _OTF_ORDER

CLASSIFICATION_TABLES: tuple[ReproTable, ...] = (
    ReproTable(
        "otf-t1a", "OTFusion", "Table 1a", "Transductive zero-shot, CLIP ViT-B/16 + DINOv2-L",
        _OTF_DATASETS, (_otf("CLIP", "zero-shot", "clip"), _otf("OTFusion", "joint")),
        (_COOP, "weights: CLIP ViT-B/16, DINOv2 ViT-L/14"),
        {"vlm": _CLIP_B16, "vfm": _DINOV2, "otfusion_recipes": ("paper",)}),
    ReproTable(
        "otf-t1b", "OTFusion", "Table 1b", "Transductive zero-shot, CLIP RN50 + DINOv2-L",
        _OTF_DATASETS, (_otf("CLIP", "zero-shot", "clip"), _otf("OTFusion", "joint")),
        (_COOP, "weights: CLIP RN50 (OpenAI), DINOv2 ViT-L/14"),
        {"vlm": _RN50, "vfm": _DINOV2, "otfusion_recipes": ("paper",)}),
    ReproTable(
        "otf-t2", "OTFusion", "Table 2", "Ablations: sources, fusion, joint learning",
        _OTF_DATASETS,
        (_otf("native CLIP", "zero-shot", "clip"), _otf("OTFusion", "joint"),
         _otf("Y-only", "semantic_only", variant="semantic_only"),
         _otf("CLIP-only", "clip_only", setting="vlm_only"),
         _otf("Dinov2-only", "dinov2_only", setting="vfm_only"),
         _otf("Concatenation", "concat", variant="concat"),
         _otf("No joint-learning", "no_joint", variant="no_joint")),
        (_COOP, "weights: CLIP ViT-B/16, DINOv2 ViT-L/14"),
        {"vlm": _CLIP_B16, "vfm": _DINOV2, "otfusion_recipes": ("paper",)}),
    ReproTable(
        "gpua-t1", "GPUA", "Table 1", "Zero-shot classification: GPUA (full train) and GPUA*",
        _GPUA_DATASETS,
        (ReproRow("CLIP", "clip", "zero-shot"),
         ReproRow("GPUA* (Ours)", "gpua", "16-shot"),
         ReproRow("GPUA (Ours)", "gpua", "full", config={"gpua_shots": 0})),
        (_COOP + ", with its train split", "weights: CLIP ViT-B/16, DINOv3 ViT-B/16 (gated)"),
        _GPUA_STAR),
    ReproTable(
        "gpua-t3", "GPUA", "Table 3", "Ablation: what correspondences are mined with",
        ("oxford_pets", "ucf101", "imagenet"),
        (ReproRow("Only-S + CLIP + DINO", "gpua", "16-shot-semantic-mining",
                  solver={"gpua": {"mining": "semantic"}}),
         ReproRow("CLIP", "gpua", "16-shot-vlm-only", config={"vfm": None}),
         ReproRow("DINO", "gpua", "16-shot-vfm-only", solver={"gpua": {"concat_vlm": False}}),
         ReproRow("CLIP + DINO", "gpua", "16-shot")),
        (_COOP + ", with its train split", "weights: CLIP ViT-B/16, DINOv3 ViT-B/16 (gated)"),
        _GPUA_STAR, note="16-shot pool (the paper's full row equals Table 1's GPUA*)."),
    ReproTable(
        "gpua-t4", "GPUA", "Table 4", "Ablation: alignment loss (five datasets)",
        ("eurosat", "dtd", "ucf101", "sun397", "food101"), _loss_rows(),
        (_COOP + ", with its train split", "weights: CLIP ViT-B/16, DINOv3 ViT-B/16 (gated)"),
        _GPUA_STAR, note="16-shot pool (its THS row is Table 1's GPUA*)."),
    ReproTable(
        "gpua-t5", "GPUA", "Table 5", "VFM x VLM combinations, 16-shot and full train",
        _GPUA_DATASETS,
        (ReproRow("Only DINOv2 (16-shot)", "gpua", "16-shot-vfm-only",
                  config={"vfm": _DINOV2}, solver={"gpua": {"concat_vlm": False}},
                  paper_vfm="DINOv2"),
         ReproRow("DINOv2 + CLIP (16-shot)", "gpua", "16-shot", config={"vfm": _DINOV2},
                  paper_vfm="DINOv2"),
         ReproRow("Only DINOv3 (16-shot)", "gpua", "16-shot-vfm-only",
                  solver={"gpua": {"concat_vlm": False}}, paper_vfm="DINOv3"),
         ReproRow("DINOv3 + CLIP (16-shot)", "gpua", "16-shot", paper_vfm="DINOv3"),
         ReproRow("DINOv2 + CLIP (full)", "gpua", "full",
                  config={"vfm": _DINOV2, "gpua_shots": 0}, paper_vfm="DINOv2"),
         ReproRow("DINOv3 + CLIP (full)", "gpua", "full", config={"gpua_shots": 0},
                  paper_vfm="DINOv3")),
        (_COOP + ", with its train split",
         "weights: CLIP ViT-B/16, DINOv2 ViT-L/14, DINOv3 ViT-B/16 (gated)"),
        _GPUA_STAR, note="The paper does not say which DINOv2 size; we run ViT-L/14."),
    ReproTable(
        "gpua-t6", "GPUA", "Table 6", "Ablation: alignment loss (11 datasets)",
        _GPUA_DATASETS, _loss_rows(),
        (_COOP + ", with its train split", "weights: CLIP ViT-B/16, DINOv3 ViT-B/16 (gated)"),
        _GPUA_STAR, note="16-shot pool (its THS row is Table 1's GPUA*)."),
    ReproTable(
        "gpua-t7", "GPUA", "Table 7", "Out-of-domain generalisation on ImageNet variants",
        IMAGENET_SHIFTS,
        (ReproRow("CLIP", "clip", "zero-shot"), ReproRow("GPUA", "gpua", "16-shot")),
        (_IMAGENET, _VARIANTS, "weights: CLIP ViT-B/16, DINOv2 ViT-L/14"),
        {"vlm": _CLIP_B16, "vfm": _DINOV2, "gpua_shots": 16},
        note="GPUA is fitted on 16 unlabeled ImageNet train images per class (of each "
             "variant's classes) and applied to the variant; the paper states neither pool nor "
             "VFM (its ImageNet number equals Table 5's DINOv2 + CLIP 16-shot)."),
    ReproTable(
        "lazsl-dg", "LaZSL", "domain generalisation", "LaZSL on ImageNet variants",
        ("imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a"),
        (ReproRow("LaZSL†", "lazsl", "descriptors"),),
        (_VARIANTS, "ImageNet descriptors (DCLIP format) as imagenet.json in --attributes-dir",
         "weights: CLIP ViT-B/16"),
        {"vlm": _CLIP_B16, "vfm": None, "n_crops": LAZSL_CROPS_PAPER},
        note="90 crops per image (the paper's M); --n-crops lowers it for a quick run."),
    ReproTable(
        "lazsl-t1", "LaZSL", "Table 1", "Interpretable zero-shot classification (ViT-B/16)",
        ("imagenet", "cub", "oxford_pets", "food101", "places365"),
        (ReproRow("CLIP", "clip", "zero-shot"), ReproRow("LaZSL (Ours)", "lazsl", "descriptors")),
        (_COOP, "CUB-200-2011 and Places365 (val) in their release layouts under --root "
         "(core.data.lazsl_datasets)",
         "descriptors (DCLIP format) as <dataset>.json in --attributes-dir (cub.json, "
         "places365.json, ...)", "weights: CLIP ViT-B/16"),
        {"vlm": _CLIP_B16, "vfm": None, "n_crops": LAZSL_CROPS_PAPER},
        note="CLIP's prompt for CUB and Places365 is ours (assets/presets/lazsl_templates.json):"
             " the LaZSL text we hold does not give it."),
)

# The CVPR 2026 successor of OTFusion ("SOTA", same authors) adds remote-sensing and
# histopathology datasets (core.data.domain_datasets); we hold none of its numbers.
_SOTA_MODELS = (
    "The authors fuse domain VLMs with their self-adaptive OT solver: histopathology CLIP "
    "ViT-B/16 + CONCH (+ PLIP, MUSK), remote sensing CLIP ViT-B/32 + GeoRSCLIP, RemoteCLIP and "
    "SkyCLIP-50; none of these domain models is in our model registry and their solver is not "
    "implemented here, so this table runs CLIP zero-shot and OTFusion (paper recipe) with "
    "OTFusion's own backbones (CLIP ViT-B/16 + DINOv2 ViT-L/14), with the authors' datasets, "
    "class names, test splits and prompt ensembles. No paper number held: the paper's tables "
    "are not in /work/shared/papers. Not read: SICAP-MIL, SICAPv2, WSSS4LUAD, PanNuke "
    "(Excel / absolute-path CSV splits).")
_DOMAINS: tuple[ReproTable, ...] = (
    ReproTable(
        "otf-cvpr-domains", "SOTA (OTFusion, CVPR 2026)", "extra domains",
        "Remote sensing and histopathology, transductive zero-shot", tuple(DOMAIN_DATASETS),
        (_otf("CLIP", "zero-shot", "clip"), _otf("OTFusion", "joint")),
        ("each dataset in its release layout or RS-TransCLIP's formatted one under --root "
         "(core.data.domain_datasets; absent ones are listed as missing)",
         "weights: CLIP ViT-B/16, DINOv2 ViT-L/14"),
        {"vlm": _CLIP_B16, "vfm": _DINOV2, "otfusion_recipes": ("paper",)},
        note=_SOTA_MODELS, paper_numbers=False),
)

# ---------------------------------------------------------------- segmentation (GPUA Tables 2, 8)
# Listed here, run by ``python -m core seg-eval`` (core.eval.seg_command): their rows are mIoU of
# dense CLIP with and without GPUA, not the harness's classification rows.
def _segmentation_table(t: Mapping) -> ReproTable:
    """A ``core.eval.seg_report.SEGMENTATION_TABLES`` entry as a registry table."""
    ours, missing = t["reproducible_rows"], ", ".join(t["not_available"])
    note = (f"runs {', '.join(ours)}; not implemented: {missing}" if ours else
            f"none of its printed rows is implemented here ({missing}); `seg-eval` runs our "
            "MaskCLIP and MaskCLIP + GPUA on its datasets, with no paper number beside them")
    return ReproTable(t["id"], t["paper"], t["table"], t["title"], tuple(t["datasets"]), (),
                      tuple(f"{name}: {layout}" for name, layout in t["needs"].items()),
                      kind="segmentation", runnable=bool(ours), note=note,
                      own_command=t["command"])


SEGMENTATION: tuple[ReproTable, ...] = tuple(map(_segmentation_table, SEGMENTATION_TABLES))

# id -> table, in listing order
_ALL = CLASSIFICATION_TABLES + _DOMAINS + SEGMENTATION
REPRO_TABLES: dict[str, ReproTable] = {t.id: t for t in _ALL}
assert len(REPRO_TABLES) == len(_ALL), "two tables share an id"


def get_table(table_id: str) -> ReproTable:
    """The table ``table_id`` (e.g. "gpua-t7"); ValueError listing the ids otherwise."""
    if table_id.lower() in REPRO_TABLES:
        return REPRO_TABLES[table_id.lower()]
    raise ValueError(f"unknown table {table_id!r}; known: {', '.join(REPRO_TABLES)}"
                     " (`python -m core repro --tables` says what each needs).")
