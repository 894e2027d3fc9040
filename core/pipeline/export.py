"""Predictions as CSV and JSON (CLI output and the app's download buttons).

The app rewrites both files on every slider move, so the per-image rows are built once per write,
from Python lists made by one ``tolist()`` per tensor (not one ``float()`` per entry).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from core.config import MethodSettings
from core.methods.run import METHOD_TITLES, MethodResult

TOP_K = 3


def prediction_rows(extraction, results: dict[str, MethodResult]) -> list[dict]:
    """One dict per image: file, true label, and per method its prediction, confidence and top-k.

    Keys: ``file``, ``label`` (as given), ``true_class`` (None when unlabelled), then per method
    ``<m>_pred`` (class name), ``<m>_confidence`` (its probability, 6 decimals) and ``<m>_topk``
    (``[[class, probability], ...]``, best first).
    """
    names = list(extraction.class_names)
    labels = extraction.features.labels
    labels = labels.tolist() if labels is not None else [-1] * len(extraction.items)
    per_method = {}
    for m, r in results.items():
        top = r.probs.topk(min(TOP_K, len(names)), dim=-1)  # values/indices (n, k)
        conf = r.probs.gather(-1, r.pred[:, None].long())[:, 0]  # (n,)
        per_method[m] = (r.pred.tolist(), conf.tolist(), top.values.tolist(), top.indices.tolist())
    rows = []
    for i, item in enumerate(extraction.items):
        row = {"file": item.name, "label": item.label,
               "true_class": names[labels[i]] if labels[i] >= 0 else None}
        for m, (pred, conf, top_v, top_i) in per_method.items():
            row[f"{m}_pred"] = names[pred[i]]
            row[f"{m}_confidence"] = round(conf[i], 6)
            row[f"{m}_topk"] = [[names[k], round(v, 6)] for v, k in zip(top_v[i], top_i[i])]
        rows.append(row)
    return rows


def provenance(method: str, result: MethodResult, solver: MethodSettings | None = None) -> dict:
    """What produced a method's numbers: ``{"recipe", "setting", "variant", "sources"}``.

    ``recipe`` for the methods that have one (OTFusion, GPUA, LaZSL; needs ``solver``), OTFusion's
    ``setting`` (``core.config.OTFUSION_SETTINGS``) and ``variant``, and always ``sources``: the
    features behind the numbers (``MethodResult.sources``). Keys that do not apply are absent.
    """
    per = getattr(solver, method, None) if solver is not None else None
    record = {}
    if hasattr(per, "recipe"):
        record["recipe"] = per.recipe
    if method == "otfusion" and per is not None:
        record.update(setting=per.setting, variant=per.variant)
    record["sources"] = list(result.sources)
    return record


def provenance_text(record: dict) -> str:
    """One line for a :func:`provenance` record, e.g. "official recipe; main setting (joint);
    sources: CLIP ViT-B/16 image, DINOv2 ViT-L/14, Y: CLIP ViT-B/16"."""
    parts = []
    if "recipe" in record:
        parts.append(f"{record['recipe']} recipe")
    if "setting" in record:
        parts.append(f"{record['setting']} setting ({record['variant']})")
    if record.get("sources"):
        parts.append("sources: " + ", ".join(record["sources"]))
    return "; ".join(parts)


def _csv_text(rows: list[dict], results: dict[str, MethodResult],
              solver: MethodSettings | None) -> str:
    """Per method: prediction, confidence and ``<m>_run`` (what produced them, the same text on
    every row, so that a CSV on its own still says which recipe and features it comes from)."""
    fields = ["file", "label", "true_class"]
    runs = {}
    for m, r in results.items():
        fields += [f"{m}_pred", f"{m}_confidence", f"{m}_run"]
        runs[f"{m}_run"] = provenance_text(provenance(m, r, solver))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(dict(row, **runs) for row in rows)
    return buf.getvalue()


def _scalar_diagnostics(result: MethodResult) -> dict:
    """The numbers among a method's diagnostics (e.g. GPUA's accuracy with W0 alone)."""
    return {k: v for k, v in result.diagnostics.items()
            if v is None or isinstance(v, (int, float))}


def _solver_record(solver: MethodSettings | None, methods) -> dict | None:
    """The settings of the methods that ran, nested per method: ``{"otfusion": {"lam": ...}}``
    (CLIP's always: its temperature also scales every other method's probabilities)."""
    if solver is None:
        return None
    record = solver.as_dict()
    return {m: record[m] for m in record if m == "clip" or m in methods}


def _json_text(extraction, results, rows, solver: MethodSettings | None) -> str:
    settings = extraction.settings
    doc = {
        "vlm": settings.vlm,
        "vfm": settings.vfm,
        "vlms": list(settings.vlms),  # every model, the primary one first
        "vfms": list(settings.vfms),
        "lazsl_recipe": settings.lazsl_recipe,  # the rule that wrote LaZSL's sentences
        "precision": settings.precision,  # as asked ("auto": resolved per model, below)
        "precisions": dict(extraction.precisions),  # registry key -> precision its features had
        "templates": list(settings.templates),
        "classes": list(extraction.class_names),
        "solver_settings": _solver_record(solver, results),
        "methods": {
            m: {"title": METHOD_TITLES.get(m, m), "accuracy": r.accuracy, "seconds": r.seconds,
                **provenance(m, r, solver), **_scalar_diagnostics(r)}
            for m, r in results.items()
        },
        "skipped": [{"file": s.name, "reason": s.reason} for s in extraction.skipped],
        "images": rows,
    }
    # No indent: json's C encoder only runs without one (benchmarks/README.md, App), and the app
    # rewrites this file on every slider move.
    return json.dumps(doc)


def predictions_csv(extraction, results: dict[str, MethodResult],
                    solver: MethodSettings | None = None) -> str:
    """CSV text: file, label, true_class, then ``<method>_pred``, ``<method>_confidence`` and
    ``<method>_run`` (recipe, setting and sources, see :func:`provenance`)."""
    return _csv_text(prediction_rows(extraction, results), results, solver)


def predictions_json(extraction, results: dict[str, MethodResult],
                     solver: MethodSettings | None = None) -> str:
    """JSON text: models (every VLM and VFM), the precision asked and the one each model ran in,
    templates, classes, the solver settings that
    produced the results (when given; recipes included), per-method accuracy, timings and the
    features behind it (``sources``), skipped files, and per-image top-k."""
    return _json_text(extraction, results, prediction_rows(extraction, results), solver)


def write_predictions(out_dir, extraction, results: dict[str, MethodResult],
                      solver: MethodSettings | None = None) -> list[Path]:
    """Write ``predictions.csv`` and ``predictions.json`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prediction_rows(extraction, results)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    csv_path.write_text(_csv_text(rows, results, solver), encoding="utf-8")
    json_path.write_text(_json_text(extraction, results, rows, solver), encoding="utf-8")
    return [csv_path, json_path]
