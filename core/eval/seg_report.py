"""Reports of ``python -m core seg-eval`` (GPUA Tables 2 and 8): our mIoU beside the paper's.

``SEGMENTATION_TABLES`` describes, as plain data, what the two tables need and which command
reproduces each (for a listing of reproducible tables). ``write_seg_report`` writes
``seg_<dataset>_<vlm>_<vfm>.md / .csv / .json``: per method our mIoU, the paper's number and its
table, the difference, the images scored and every setting; the JSON adds the IoU per class.
The paper's other rows (CLIP, SCLIP, SC-CLIP, with GPUA, Talk2DINO) are listed as not run: the
project implements MaskCLIP only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from core.config import SEG_SHORT_SIDE
from core.data.segmentation_sets import SEGMENTATION_LAYOUTS
from core.eval.paper_numbers import SEGMENTATION, SEGMENTATION_TABLE8

__all__ = ["CAVEATS", "SEGMENTATION_TABLES", "SEG_METHOD_ROWS", "paper_miou", "seg_report_json",
           "seg_report_markdown", "write_seg_report"]

# Our method key -> the paper's row name (paper_numbers.SEGMENTATION*).
SEG_METHOD_ROWS = {"maskclip": "MaskCLIP", "maskclip+gpua": "MaskCLIP + GPUA (DINOv3)"}
# Rows of the paper this project cannot run (no implementation of these frameworks).
_NOT_AVAILABLE = ("CLIP", "SCLIP", "SCLIP + GPUA (DINOv3)", "SC-CLIP", "SC-CLIP + GPUA (DINOv3)",
                  "Talk2DINO")
# Printed under every report: what makes our rows and the paper's differ by construction.
CAVEATS = (
    "The paper's MaskCLIP row cites Dong et al. (CVPR 2023, 'MaskCLIP: masked self-distillation', "
    "a pretraining method); ours is the training-free dense CLIP of Zhou et al. (ECCV 2022) on "
    "OpenAI CLIP ViT-B/16 (core.models.dense_clip), the reading SCLIP and the GPUA text "
    "('exploit the attention mechanisms of CLIP') suggest. Which one produced 11.9 / 54.2 / "
    "22.2 is not stated.",
    "Class names are the plain benchmark names with CLIP's 80 ImageNet templates; SCLIP's "
    "per-dataset synonym lists (e.g. 'person, person in shirt, ...') are not used.",
)
_TABLE2_SETS = ("ade20k", "voc20", "context59")
_TABLE8_SETS = ("ade20k", "voc20", "context59", "cityscapes", "cocostuff164k")


def _command(table_sets) -> str:
    return ("python -m core seg-eval --dataset DATASET --root DATA --methods maskclip,"
            "maskclip+gpua --vlm clip-vit-b16 --vfm dinov3-vitb16  (once per DATASET: "
            + " | ".join(table_sets) + ")")


SEGMENTATION_TABLES = (
    {"id": "gpua-t2", "paper": "GPUA", "table": "Table 2",
     "title": "Open-vocabulary segmentation mIoU: MaskCLIP / SCLIP / SC-CLIP with and without "
              "GPUA (DINOv3)",
     "datasets": _TABLE2_SETS,
     "needs": {k: SEGMENTATION_LAYOUTS[k].expected() for k in _TABLE2_SETS},
     "command": _command(_TABLE2_SETS),
     "reproducible_rows": tuple(SEG_METHOD_ROWS.values()),
     "not_available": tuple(r for r in _NOT_AVAILABLE if r in SEGMENTATION)},
    {"id": "gpua-t8", "paper": "GPUA", "table": "Table 8",
     "title": "Segmentation on five benchmarks incl. Cityscapes and COCO-Stuff-164k: SC-CLIP "
              "with and without GPUA, Talk2DINO",
     "datasets": _TABLE8_SETS,
     "needs": {k: SEGMENTATION_LAYOUTS[k].expected() for k in _TABLE8_SETS},
     "command": _command(_TABLE8_SETS),
     "reproducible_rows": (),
     "not_available": tuple(SEGMENTATION_TABLE8)},
)


def paper_miou(row: str, dataset: str) -> tuple[float | None, str]:
    """(mIoU in percent, "GPUA Table N") of a paper row on a dataset; (None, "") if none."""
    for table, numbers in (("GPUA Table 2", SEGMENTATION), ("GPUA Table 8", SEGMENTATION_TABLE8)):
        if dataset in numbers.get(row, {}):
            return numbers[row][dataset], table
    return None, ""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _rows(run) -> list[dict]:
    """One dict per method run: ours, the paper's, the difference (all percent)."""
    out = []
    for m, score in run.scores.items():
        row_name = SEG_METHOD_ROWS[m]
        paper, source = paper_miou(row_name, run.dataset)
        ours = None if math.isnan(score.miou) else round(100.0 * score.miou, 2)
        out.append({"dataset": run.dataset, "method": m, "paper_row": row_name,
                    "ours_miou": ours, "paper_miou": paper, "paper_source": source,
                    "diff": None if paper is None or ours is None else round(ours - paper, 2),
                    "n_images": run.n_images, "seconds": round(score.seconds, 2)})
    return out


def _settings(run) -> dict:
    return {**run.settings, "fit_images": run.fit_images, "pool_size": run.pool_size,
            "paper_short_side": SEG_SHORT_SIDE.get(run.dataset)}


def seg_report_markdown(run) -> str:
    """The report as Markdown: results table, the paper's rows not run, settings, notes."""
    lines = [f"# GPUA Tables 2 / 8: open-vocabulary segmentation on {run.dataset} "
             f"({run.n_images} images)", "",
             "| method | ours mIoU | paper mIoU | diff | paper source |", "|---|---|---|---|---|"]
    for r in _rows(run):
        diff = "-" if r["diff"] is None else f"{r['diff']:+.1f}"
        lines.append(f"| {r['paper_row']} | {_pct(r['ours_miou'])} | {_pct(r['paper_miou'])} | "
                     f"{diff} | {r['paper_source'] or 'no paper number'} |")
    others = [(n, *paper_miou(n, run.dataset)) for n in _NOT_AVAILABLE]
    others = [o for o in others if o[1] is not None]
    if others:
        lines += ["", "Paper rows not run here (not available: the project implements MaskCLIP, "
                  "not these frameworks):", ""]
        lines += [f"- {n}: {v:.1f} ({src})" for n, v, src in others]
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in _settings(run).items()]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in (*run.notes, *CAVEATS)]
    return "\n".join(lines) + "\n"


def seg_report_json(run, class_names) -> dict:
    per_class = {m: {c: (None if math.isnan(v) else round(100.0 * v, 2))
                     for c, v in zip(class_names, s.per_class.tolist())}
                 for m, s in run.scores.items()}
    return {"dataset": run.dataset, "n_images": run.n_images, "rows": _rows(run),
            "settings": _settings(run), "notes": [*run.notes, *CAVEATS], "per_class_iou": per_class,
            "extract_seconds": round(run.extract_seconds, 2)}


def _csv(rows: list[dict], settings: dict) -> str:
    buf = io.StringIO()
    fields = list(rows[0]) + [f"setting_{k}" for k in settings]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{f"setting_{k}": v for k, v in settings.items()}})
    return buf.getvalue()


def _safe(name) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(name))


def write_seg_report(run, class_names, out: str | Path) -> list[Path]:
    """Write the Markdown, CSV and JSON reports of ``run`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"seg_{run.dataset}_{_safe(run.settings['vlm'])}_{_safe(run.settings['vfm'])}"
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.json"]
    paths[0].write_text(seg_report_markdown(run))
    paths[1].write_text(_csv(_rows(run), _settings(run)))
    paths[2].write_text(json.dumps(seg_report_json(run, class_names), indent=1))
    return paths
