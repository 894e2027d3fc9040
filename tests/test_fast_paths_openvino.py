"""OpenVINO candidates of benchmarks/fast_paths.py (measurement only, optional dependencies):
skipped with one line when openvino or nncf is missing, features of the same tower otherwise.
Tiny random models; the real-size numbers are in benchmarks/README.md."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks.fast_paths import OPENVINO_NAMES, candidates
from core.models.tiny import tiny_test_models

TINY = tiny_test_models()


def _pixels(n: int = 4) -> torch.Tensor:
    # (n, 3, 64, 64): the tiny CLIP ViT's input size; batch >= 2 so the traced batch stays dynamic.
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_missing_openvino_skips_with_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    found = candidates(TINY["clip_vit"], _pixels(), names={"openvino"})
    assert list(found) == ["fp32 eager"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "OpenVINO" in line]
    assert len(lines) == 1 and "skipped" in lines[0] and "pip install openvino" in lines[0]


def test_openvino_fp32_and_bf16_match_torch_without_nncf(monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "nncf", None)  # the int8 ones need nncf: skipped
    pixels = _pixels(6)
    found = candidates(TINY["clip_vit"], pixels[:2], names={"openvino"}, threads=1)
    assert set(found) == {"fp32 eager", "openvino fp32", "openvino bf16"}
    assert set(OPENVINO_NAMES) - set(found) == {"openvino int8 weights", "openvino int8"}
    assert "int8 candidates skipped" in capsys.readouterr().out
    reference = found["fp32 eager"](pixels)  # (6, 32), unit rows
    for name, bar in (("openvino fp32", 0.9999), ("openvino bf16", 0.99)):
        features = found[name](pixels)  # a batch of 6 through a model traced at batch 2
        assert features.shape == reference.shape
        assert torch.allclose(features.norm(dim=-1), torch.ones(6), atol=1e-5)
        assert (features * reference).sum(-1).min() > bar, name
