"""core.methods.run on synthetic FeatureSets: GPUA's diagnostics of what THS changed."""

from dataclasses import replace

import torch

from core.config import GPUASettings, MethodSettings
from core.methods.run import FeatureSet, run_method
from core.synthetic.features import make_synthetic


def _features(n=300, k=10, seed=0) -> FeatureSet:
    ds = make_synthetic(n, k, seed=seed, difficulty="hard")
    return FeatureSet(vlm_image=ds.vlm_image, text=ds.vlm_text, vfm_image=ds.vfm_image,
                      labels=ds.labels)


def test_gpua_reports_the_procrustes_map_it_started_from():
    feats = _features()
    settings = MethodSettings(gpua=GPUASettings(ths_steps=60))
    refined = run_method("gpua", feats, settings)
    plain = run_method("gpua", feats, settings.replace(gpua={"ths_steps": 0}))
    d = refined.diagnostics
    # W0 alone is exactly what a run without THS predicts
    assert torch.equal(d["procrustes_pred"], plain.pred)
    assert d["procrustes_accuracy"] == plain.accuracy
    assert d["changed_by_ths"] == int((plain.pred != refined.pred).sum()) > 0
    assert plain.diagnostics == {}  # nothing to compare without THS


def test_gpua_diagnostics_without_labels_leave_accuracy_out():
    feats = replace(_features(), labels=None)
    d = run_method("gpua", feats, MethodSettings(gpua=GPUASettings(ths_steps=20))).diagnostics
    assert d["procrustes_accuracy"] is None and d["procrustes_pred"].shape == (300,)
    assert run_method("otfusion", feats).diagnostics == {}
