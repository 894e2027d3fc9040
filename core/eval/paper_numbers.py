"""The papers' reported numbers, as data, and which one to compare a run with.

Sources (``/work/shared/papers``): OTFusion (arXiv 2506.13723) Tables 1a, 1b and 2; GPUA (arXiv
2606.04385) Tables 1-8; LaZSL (arXiv 2506.23822) main and domain-generalisation tables
(ViT-B/16). All values are
top-1 accuracy in percent (mIoU for segmentation), exactly as printed.

A table row names the backbones it was measured with. A run is compared with a row only when its
VLM is the paper's (ViT-B/16 and RN50 numbers differ by ~6 points); when only the VFM differs the
number is still shown, flagged as not exact. Backbones are recognised by the registry fields that
decide the weights (``ModelSpec.model_id`` and ``pretrained``), never by registry key.

Known inconsistencies, kept as printed: GPUA's Table 1 GPUA* row (DINOv3, avg 76.5) and its Table 5
"DINOv3 + CLIP" 16-shot row (avg 75.6) disagree; the CLIP baselines of OTFusion Table 1a (avg 64.78)
and of GPUA Table 1 / OTFusion Table 2 (avg 65.24) differ although both use CLIP ViT-B/16 with the
CoOp prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Dataset keys as in core.data.classes; CUB and Places365 appear only in LaZSL's table.
DATASETS = ("imagenet", "sun397", "fgvc_aircraft", "eurosat", "stanford_cars", "food101",
            "oxford_pets", "flowers102", "caltech101", "dtd", "ucf101")
_OTF_ORDER = DATASETS  # column order of OTFusion Tables 1 and 2
# ImageNet and its distribution-shift variants (core.data.imagenet_variants), Table 7's order.
IMAGENET_SHIFTS = ("imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch")
_GPUA_ORDER = ("flowers102", "oxford_pets", "caltech101", "fgvc_aircraft", "eurosat", "ucf101",
               "dtd", "food101", "stanford_cars", "sun397", "imagenet")


@dataclass(frozen=True)
class Backbone:
    """A paper's model, as registry ``model_id`` values (several when the paper is vague)."""

    label: str
    model_ids: tuple[str, ...]
    pretrained: str | None = None

    def matches(self, spec) -> bool:
        if spec is None or spec.model_id not in self.model_ids:
            return False
        return self.pretrained is None or spec.pretrained == self.pretrained


CLIP_B16 = Backbone("CLIP ViT-B/16", ("ViT-B-16",), "openai")
CLIP_RN50 = Backbone("CLIP RN50", ("RN50",), "openai")
DINOV2_L = Backbone("DINOv2 ViT-L/14", ("facebook/dinov2-large",))
DINOV2_ANY = Backbone("DINOv2 (size not stated)", tuple(
    f"facebook/dinov2-{s}" for s in ("small", "base", "large", "giant")))
DINOV3_B = Backbone("DINOv3 ViT-B/16", ("facebook/dinov3-vitb16-pretrain-lvd1689m",))


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper's table.

    method : our method key ("clip", "otfusion", "gpua", "lazsl").
    protocol : what was run: "zero-shot" (CLIP); an OTFusion setting and variant as named by
        :func:`otfusion_protocol` ("joint", "semantic_only", "concat", "no_joint", "clip_only",
        "dinov2_only"); GPUA "full" or "16-shot" (fitted on the train split) or
        "16-shot-vfm-only"; LaZSL "descriptors".
    vfm : None when the row uses no VFM (or the VLM's own image features).
    values : dataset key -> accuracy in percent. average : the paper's own average.
    """

    paper: str
    table: str
    method: str
    protocol: str
    vlm: Backbone
    vfm: Backbone | None
    values: Mapping[str, float]
    average: float | None
    note: str = ""

    @property
    def source(self) -> str:
        vfm = f" + {self.vfm.label}" if self.vfm else ""
        return f"{self.paper} {self.table} ({self.vlm.label}{vfm})"


def _cols(order, numbers: str) -> dict[str, float]:
    values = [float(x) for x in numbers.split()]
    assert len(values) == len(order) + 1, (order, numbers)  # last column: the paper's average
    return dict(zip(order, values[:-1]))


def _avg(numbers: str) -> float:
    return float(numbers.split()[-1])


def _otf(table, protocol, vlm, vfm, numbers, method="otfusion", note=""):
    return PaperRow("OTFusion", table, method, protocol, vlm, vfm, _cols(_OTF_ORDER, numbers),
                    _avg(numbers), note)


def _gpua(table, protocol, vfm, numbers, method="gpua", vlm=CLIP_B16, note=""):
    return PaperRow("GPUA", table, method, protocol, vlm, vfm, _cols(_GPUA_ORDER, numbers),
                    _avg(numbers), note)


# Earlier rows win when several match a run (the main tables first).
TABLES: tuple[PaperRow, ...] = (
    # OTFusion Table 1 (a) CLIP ViT-B/16, (b) RN50; VFM DINOv2 ViT-L/14, lam 0.8, eps 0.01.
    _otf("Table 1a", "zero-shot", CLIP_B16, None,
         "66.73 65.63 23.22 50.42 66.11 82.86 86.92 66.99 93.55 45.04 65.16 64.78", "clip"),
    _otf("Table 1a", "joint", CLIP_B16, DINOV2_L,
         "76.76 72.06 27.48 81.86 70.96 87.89 94.58 85.18 96.11 53.72 77.80 74.95"),
    _otf("Table 1b", "zero-shot", CLIP_RN50, None,
         "58.17 58.85 17.04 36.20 55.74 77.36 85.72 66.10 85.68 42.79 61.88 58.68", "clip"),
    _otf("Table 1b", "joint", CLIP_RN50, DINOV2_L,
         "73.77 69.37 18.45 74.41 64.64 82.54 93.84 75.07 95.29 51.54 76.05 70.45"),
    # OTFusion Table 2 (ablation, CLIP ViT-B/16 + DINOv2 ViT-L/14).
    _otf("Table 2", "semantic_only", CLIP_B16, None,
         "67.10 63.39 25.32 50.47 66.11 85.95 89.23 70.97 92.98 44.80 68.07 65.85",
         note="'Y-only': OT on the CLIP probabilities alone"),
    _otf("Table 2", "clip_only", CLIP_B16, None,
         "69.90 68.91 26.07 65.78 69.72 87.03 92.56 78.60 94.12 50.83 77.08 70.96",
         note="CLIP's own image features as the only visual source (setting vlm_only)"),
    _otf("Table 2", "dinov2_only", CLIP_B16, DINOV2_L,
         "76.71 69.92 27.45 76.85 71.62 86.00 94.22 86.16 97.04 53.66 76.58 74.20",
         note="DINOv2 as the only visual source (setting vfm_only)"),
    _otf("Table 2", "concat", CLIP_B16, DINOV2_L,
         "77.14 71.57 28.86 82.28 72.14 87.50 94.82 85.79 96.84 55.20 78.80 75.54"),
    _otf("Table 2", "no_joint", CLIP_B16, DINOV2_L,
         "75.06 68.60 22.86 71.31 64.84 86.80 93.51 83.43 95.01 52.07 74.91 71.67"),
    # Table 2's first rows repeat GPUA Table 1's CLIP (1 decimal, padded) and Table 1a's OTFusion.
    _otf("Table 2", "zero-shot", CLIP_B16, None,
         "66.60 62.50 24.70 48.30 65.60 85.90 89.10 70.70 93.20 43.50 67.50 65.24", "clip",
         note="'native CLIP'"),
    _otf("Table 2", "joint", CLIP_B16, DINOV2_L,
         "76.76 72.06 27.48 81.86 70.96 87.89 94.58 85.18 96.11 53.72 77.80 74.95"),
    # GPUA Table 1 (CLIP ViT-B/16 + DINOv3 ViT-B/16, Z = [VFM, VLM]); its CLIP row equals
    # OTFusion Table 2's "native CLIP" row.
    _gpua("Table 1", "full", DINOV3_B,
          "83.8 95.0 95.3 33.8 88.2 80.4 58.5 89.5 77.7 74.2 75.4 77.4"),
    _gpua("Table 1", "16-shot", DINOV3_B,
          "86.6 94.5 98.1 34.7 80.3 78.4 56.7 87.9 77.4 72.6 74.3 76.5",
          note="GPUA*: 16 unlabeled train images per class"),
    _gpua("Table 1", "zero-shot", None,
          "70.7 89.1 93.2 24.7 48.3 67.5 43.5 85.9 65.6 62.5 66.6 65.2", method="clip"),
    # GPUA Table 5 (other VFM / VLM combinations).
    _gpua("Table 5", "full", DINOV2_ANY,
          "84.7 94.7 97.0 30.5 83.2 80.9 58.2 88.5 77.3 74.2 77.1 76.9"),
    _gpua("Table 5", "16-shot", DINOV2_ANY,
          "87.5 93.4 98.0 30.4 78.7 79.4 54.3 86.2 76.4 72.9 76.5 75.8"),
    _gpua("Table 5", "16-shot", DINOV3_B,
          "84.1 94.5 98.0 33.4 75.7 78.4 55.4 88.0 77.4 72.2 74.3 75.6",
          note="disagrees with Table 1's GPUA* row (avg 76.5)"),
    _gpua("Table 5", "full", DINOV3_B,
          "83.8 95.0 95.3 33.8 88.2 80.4 58.5 89.5 77.7 74.2 75.4 77.4",
          note="the same as Table 1's GPUA row"),
    _gpua("Table 5", "16-shot-vfm-only", DINOV2_ANY,
          "86.52 91.61 97.65 28.32 67.49 77.24 53.01 81.51 71.67 68.05 73.23 72.39"),
    _gpua("Table 5", "16-shot-vfm-only", DINOV3_B,
          "86.6 93.1 97.3 33.7 83.9 75.3 55.9 85.5 76.4 67.4 70.6 75.1"),
    # GPUA Table 3 (ablation of what UCM mines with; Pets, UCF101, ImageNet). Its last row equals
    # Table 1's GPUA* and its DINO row Table 5's "Only DINOv3": the 16-shot setting, DINOv3.
    *(PaperRow("GPUA", "Table 3", "gpua", protocol, CLIP_B16, vfm,
               dict(zip(("oxford_pets", "ucf101", "imagenet"), values)), None, note)
      for protocol, vfm, values, note in (
          ("16-shot-semantic-mining", DINOV3_B, (89.2, 68.3, 71.6),
           "Only-S: correspondences from CLIP's semantic scores alone; Z = [DINO, CLIP]"),
          ("16-shot-vlm-only", None, (91.2, 76.1, 69.9), "Z = CLIP's image features alone"),
          ("16-shot-vfm-only", DINOV3_B, (93.1, 75.3, 70.6), "Z = DINO alone"),
          ("16-shot", DINOV3_B, (94.5, 78.4, 74.3), "Z = [DINO, CLIP]"))),
    # GPUA Table 4 (losses on five datasets) repeats Table 6's numbers; both as printed.
    *(PaperRow("GPUA", "Table 4", "gpua", protocol, CLIP_B16, DINOV3_B,
               dict(zip(("eurosat", "dtd", "ucf101", "sun397", "food101"), values)), None,
               "16-shot (its THS row is Table 1's GPUA*)")
      for protocol, values in (
          ("16-shot-csls", (72.4, 49.6, 69.2, 67.3, 79.5)),
          ("16-shot-contrastive", (75.5, 55.9, 76.3, 71.4, 87.4)),
          ("16-shot-adaptive", (73.2, 55.4, 75.3, 72.2, 87.2)),
          ("16-shot-triplet", (75.3, 55.4, 76.2, 72.5, 87.5)),
          ("16-shot", (80.3, 56.7, 78.4, 72.6, 87.9)))),
    # GPUA Table 6 (alignment losses, 11 datasets; 16-shot, DINOv3: its THS row is GPUA*).
    _gpua("Table 6", "16-shot-csls", DINOV3_B,
          "83.1 83.1 92.2 31.5 72.4 69.2 49.6 79.5 69.7 67.3 66.7 69.5"),
    _gpua("Table 6", "16-shot-adaptive", DINOV3_B,
          "85.1 94.0 98.1 34.0 73.2 75.3 55.4 87.2 76.6 72.2 73.9 75.0"),
    _gpua("Table 6", "16-shot-contrastive", DINOV3_B,
          "85.6 94.4 97.9 33.3 75.5 76.3 55.9 87.4 76.2 71.4 72.7 75.1"),
    _gpua("Table 6", "16-shot-triplet", DINOV3_B,
          "85.3 93.7 98.0 33.7 75.3 76.2 55.4 87.5 77.0 72.5 74.1 75.3"),
    _gpua("Table 6", "16-shot", DINOV3_B,
          "86.6 94.5 98.1 34.7 80.3 78.4 56.7 87.9 77.4 72.6 74.3 76.5"),
    # GPUA Table 7 (ImageNet and its shifted variants). The paper names neither the VFM nor the
    # pool; its ImageNet GPUA number equals Table 5's DINOv2 + CLIP 16-shot row.
    PaperRow("GPUA", "Table 7", "clip", "zero-shot", CLIP_B16, None, dict(zip(
        IMAGENET_SHIFTS, (66.7, 47.9, 60.9, 74.0, 46.1))), 59.1),
    PaperRow("GPUA", "Table 7", "gpua", "16-shot", CLIP_B16, DINOV2_ANY, dict(zip(
        IMAGENET_SHIFTS, (76.5, 57.4, 68.2, 77.5, 56.9))), 67.3,
        "VFM and pool not stated; ImageNet's number equals Table 5's DINOv2 + CLIP 16-shot"),
    # LaZSL's domain-generalisation table (LaZSL†, training-free, fitted on nothing); the
    # backbone is not stated where we read it (ViT-B/16 assumed, as its main table).
    PaperRow("LaZSL", "domain generalisation", "lazsl", "descriptors", CLIP_B16, None,
             {"imagenet_v2": 63.3, "imagenet_r": 75.6, "imagenet_sketch": 48.2,
              "imagenet_a": 56.2}, 60.9, "LaZSL†; backbone assumed ViT-B/16"),
    # LaZSL main table, ViT-B/16 (GPT-3 descriptors, 90 crops); CUB / Places365 are not benchmarks
    # of this harness but are kept so the average can be checked.
    PaperRow("LaZSL", "Table 1", "lazsl", "descriptors", CLIP_B16, None,
             {"imagenet": 69.2, "cub": 60.3, "oxford_pets": 87.4, "food101": 89.7,
              "places365": 42.0}, 69.7),
    PaperRow("LaZSL", "Table 1", "clip", "zero-shot", CLIP_B16, None,
             {"imagenet": 66.7, "cub": 56.0, "oxford_pets": 88.1, "food101": 88.4,
              "places365": 39.3}, 67.7),
)

# GPUA Table 2: open-vocabulary segmentation, mIoU (%), DINOv3 patch features aligned to CLIP.
SEGMENTATION: dict[str, dict[str, float]] = {
    "CLIP": {"ade20k": 3.1, "voc20": 49.1, "context59": 11.1},
    "MaskCLIP": {"ade20k": 11.9, "voc20": 54.2, "context59": 22.2},
    "MaskCLIP + GPUA (DINOv3)": {"ade20k": 15.9, "voc20": 65.7, "context59": 27.9},
    "SCLIP": {"ade20k": 16.1, "voc20": 81.5, "context59": 34.2},
    "SCLIP + GPUA (DINOv3)": {"ade20k": 19.1, "voc20": 87.8, "context59": 36.3},
    "SC-CLIP": {"ade20k": 20.1, "voc20": 84.3, "context59": 40.1},
    "SC-CLIP + GPUA (DINOv3)": {"ade20k": 21.3, "voc20": 87.6, "context59": 41.0},
}
# GPUA Table 8 (appendix, "Extension to dense prediction"): SC-CLIP with and without GPUA on two
# more benchmarks; its ADE20K / V20 / C59 columns repeat Table 2's SC-CLIP rows ("GPUA" there is
# SC-CLIP + GPUA). MaskCLIP has no Cityscapes or COCO-Stuff number in the paper.
SEGMENTATION_TABLE8: dict[str, dict[str, float]] = {
    "SC-CLIP": {"ade20k": 20.1, "voc20": 84.3, "context59": 40.1, "cityscapes": 41.0,
                "cocostuff164k": 26.9},
    "SC-CLIP + GPUA (DINOv3)": {"ade20k": 21.3, "voc20": 87.6, "context59": 41.0,
                                "cityscapes": 42.0, "cocostuff164k": 29.0},
    "Talk2DINO": {"ade20k": 21.1, "voc20": 87.1, "context59": 39.8, "cityscapes": 36.6,
                  "cocostuff164k": 28.1},
}


# (OTFusionSettings.setting, .variant) -> the protocol of the paper row that ran it: Table 1's
# full OTFusion is the main setting (the VLM's image features and DINOv2, one GMM each); Table 2's
# ablations are the single-source settings and the other variants of the main setting.
_OTF_PROTOCOLS = {("main", "joint"): "joint", ("main", "concat"): "concat",
                  ("main", "no_joint"): "no_joint", ("vfm_only", "joint"): "dinov2_only",
                  ("vlm_only", "joint"): "clip_only"}


def otfusion_protocol(setting: str, variant: str, *, has_vfm: bool = True) -> str:
    """The protocol name of an OTFusion run, which picks its paper row (``TABLES``).

    main + joint -> "joint" (Table 1a / 1b); vfm_only -> "dinov2_only" and vlm_only ->
    "clip_only" (Table 2); main + concat / no_joint -> "concat" / "no_joint" and semantic_only
    (any setting: no visual source) -> "semantic_only" (Table 2). The main setting without a VFM
    fuses the VLM's image features alone, i.e. vlm_only. Other combinations no paper ran are
    named "<setting>-<variant>" (no paper row).
    """
    if variant == "semantic_only":
        return "semantic_only"
    if setting == "main" and not has_vfm:
        setting = "vlm_only"
    return _OTF_PROTOCOLS.get((setting, variant), f"{setting}-{variant}")


def gpua_ablation(settings, *, has_vfm: bool = True) -> str:
    """The suffix of a GPUA run's protocol naming its ablations (``GPUASettings``), "" for the
    paper's main setting: "-vfm-only" (Z = the VFM alone), "-vlm-only" (no VFM: Z = the VLM's
    image features, Table 3's "CLIP" row), "-semantic-mining" (Table 3's "Only-S"), "-<loss>"
    (Tables 4 and 6: another refinement loss than THS)."""
    suffix = "" if has_vfm and settings.concat_vlm else "-vfm-only" if has_vfm else "-vlm-only"
    if settings.mining != "joint":
        suffix += f"-{settings.mining}-mining"
    return suffix + (f"-{settings.loss}" if settings.loss != "ths" else "")


@dataclass(frozen=True)
class Reported:
    """A paper number chosen for one (method, dataset) result; ``exact`` False: another VFM."""

    value: float
    row: PaperRow
    exact: bool

    @property
    def source(self) -> str:
        return self.row.source


def reported_all(method: str, dataset: str, protocol: str, *, vlm_spec=None,
                 vfm_spec=None) -> list[Reported]:
    """Every matching paper number, best first (exact VFM match, then table order)."""
    out = []
    for row in TABLES:
        if row.method != method or row.protocol != protocol or dataset not in row.values:
            continue
        if not row.vlm.matches(vlm_spec):
            continue
        exact = row.vfm is None or row.vfm.matches(vfm_spec)
        out.append(Reported(row.values[dataset], row, exact))
    return sorted(out, key=lambda r: not r.exact)  # stable: table order within each group


def reported(method: str, dataset: str, protocol: str, *, vlm_spec=None,
             vfm_spec=None) -> Reported | None:
    """The paper number to print beside ours, or None when no paper ran this setting."""
    found = reported_all(method, dataset, protocol, vlm_spec=vlm_spec, vfm_spec=vfm_spec)
    return found[0] if found else None
