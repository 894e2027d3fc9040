"""Predictions as CSV and JSON (CLI output and the app's download buttons)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from core.methods import METHOD_TITLES, MethodResult

TOP_K = 3


def prediction_rows(extraction, results: dict[str, MethodResult]) -> list[dict]:
    """One dict per image: file, true label, and per method its prediction, confidence and top-k."""
    names = extraction.class_names
    labels = extraction.features.labels
    tops = {
        m: r.probs.topk(min(TOP_K, len(names)), dim=-1) for m, r in results.items()
    }  # values/indices (n, k)
    rows = []
    for i, item in enumerate(extraction.items):
        true = None
        if labels is not None and int(labels[i]) >= 0:
            true = names[int(labels[i])]
        row = {"file": item.name, "label": item.label, "true_class": true}
        for m, r in results.items():
            pred = int(r.pred[i])
            row[f"{m}_pred"] = names[pred]
            row[f"{m}_confidence"] = round(float(r.probs[i, pred]), 6)
            row[f"{m}_topk"] = [
                [names[int(k)], round(float(v), 6)]
                for v, k in zip(tops[m].values[i], tops[m].indices[i])
            ]
        rows.append(row)
    return rows


def predictions_csv(extraction, results: dict[str, MethodResult]) -> str:
    """CSV text: file, label, then ``<method>_pred`` and ``<method>_confidence`` columns."""
    rows = prediction_rows(extraction, results)
    fields = ["file", "label", "true_class"]
    for m in results:
        fields += [f"{m}_pred", f"{m}_confidence"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def predictions_json(extraction, results: dict[str, MethodResult]) -> str:
    """JSON text with settings, per-method accuracy and timings, and per-image top-k."""
    settings = extraction.settings
    doc = {
        "vlm": settings.vlm,
        "vfm": settings.vfm,
        "templates": list(settings.templates),
        "classes": list(extraction.class_names),
        "methods": {
            m: {"title": METHOD_TITLES.get(m, m), "accuracy": r.accuracy, "seconds": r.seconds}
            for m, r in results.items()
        },
        "skipped": [{"file": s.name, "reason": s.reason} for s in extraction.skipped],
        "images": prediction_rows(extraction, results),
    }
    return json.dumps(doc, indent=1)


def write_predictions(out_dir, extraction, results: dict[str, MethodResult]) -> list[Path]:
    """Write ``predictions.csv`` and ``predictions.json`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    csv_path.write_text(predictions_csv(extraction, results), encoding="utf-8")
    json_path.write_text(predictions_json(extraction, results), encoding="utf-8")
    return [csv_path, json_path]
