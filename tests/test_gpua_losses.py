"""GPUA's refinement losses (Tables 4 and 6) against naive per-sample loops, and the options of
the THS stage that select them (loss, Table 3's mining), defaults unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from core import fit_gpua
from core.config import GPUA_LOSSES, GPUA_TRIPLET_MARGIN, TEMPERATURE, GPUASettings
from core.methods.gpua.losses import (
    adaptive_loss,
    alignment_loss,
    contrastive_loss,
    csls_loss,
    triplet_loss,
)
from core.methods.gpua.ths import refine_ths


def _problem(n=13, k_classes=6, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)  # unnormalised: the losses normalise
    y = torch.nn.functional.normalize(torch.randn(k_classes, d, generator=g, dtype=torch.float64),
                                      dim=1)
    labels = torch.randint(0, k_classes, (n,), generator=g)
    return f, y, labels


def _cos(f, y, i, c):
    fi = f[i] / f[i].norm()
    return float(fi @ y[c])


def _dist(f, y, i, c):
    return math.sqrt(max(2.0 - 2.0 * _cos(f, y, i, c), 1e-12))


def _r_y(f, y, c, k):
    sims = sorted((_cos(f, y, j, c) for j in range(f.shape[0])), reverse=True)
    return sum(sims[:min(k, len(sims))]) / min(k, len(sims))


def _nearest_other(score_of, label, n_classes, k, *, largest):
    """The k classes other than ``label`` with the largest (or smallest) score."""
    others = [c for c in range(n_classes) if c != label]
    return sorted(others, key=score_of, reverse=largest)[:k]


def naive_csls(f, y, labels, k):
    total = 0.0
    for i, li in enumerate(labels.tolist()):
        sims = sorted((_cos(f, y, i, c) for c in range(y.shape[0])), reverse=True)[:k]
        total += -2 * _cos(f, y, i, li) + sum(sims) / k + _r_y(f, y, li, k)
    return total / f.shape[0]


def naive_contrastive(f, y, labels, tau):
    total = 0.0
    for i, li in enumerate(labels.tolist()):
        logits = [tau * _cos(f, y, i, c) for c in range(y.shape[0])]
        top = max(logits)
        total += -(logits[li] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / f.shape[0]


def naive_triplet(f, y, labels, k, margin):
    terms = []
    for i, li in enumerate(labels.tolist()):
        for c in _nearest_other(lambda c, i=i: _dist(f, y, i, c), li, y.shape[0], k, largest=False):
            terms.append(max(0.0, _dist(f, y, i, li) + margin - _dist(f, y, i, c)))
    return sum(terms) / len(terms)


def naive_adaptive(f, y, labels, k, s):
    r = [_r_y(f, y, c, k) for c in range(y.shape[0])]
    terms = []
    for i, li in enumerate(labels.tolist()):
        def score(c, i=i):
            return 2 * _cos(f, y, i, c) - r[c]
        for c in _nearest_other(score, li, y.shape[0], k, largest=True):
            margin = (1 - float(y[li] @ y[c])) / s
            terms.append(max(0.0, margin + score(c) - score(li)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_each_loss_matches_a_naive_loop(seed, k):
    f, y, labels = _problem(seed=seed)
    assert float(csls_loss(f, y, labels, k=k)) == pytest.approx(naive_csls(f, y, labels, k),
                                                                abs=1e-9)
    assert float(contrastive_loss(f, y, labels)) == pytest.approx(
        naive_contrastive(f, y, labels, TEMPERATURE), abs=1e-8)
    assert float(triplet_loss(f, y, labels, k=k)) == pytest.approx(
        naive_triplet(f, y, labels, k, GPUA_TRIPLET_MARGIN), abs=1e-9)
    assert float(adaptive_loss(f, y, labels, k=k, margin_scale=2.0)) == pytest.approx(
        naive_adaptive(f, y, labels, k, 2.0), abs=1e-9)


def test_losses_differ_and_have_gradients():
    f, y, labels = _problem()
    values = {}
    for name in GPUA_LOSSES:
        x = f.clone().requires_grad_(True)
        loss = alignment_loss(name, x, y, labels, k=3)
        loss.backward()
        assert torch.isfinite(x.grad).all() and float(x.grad.norm()) > 0, name
        values[name] = round(float(loss.detach()), 6)
    assert len(set(values.values())) == len(GPUA_LOSSES), values
    with pytest.raises(ValueError, match="expected one of ths, csls"):
        alignment_loss("hinge", f, y, labels)


@pytest.mark.parametrize("name", [n for n in GPUA_LOSSES if n != "ths"])
def test_refinement_lowers_each_loss(name):
    f, y, labels = _problem(n=60, k_classes=5, d=5, seed=3)
    w0 = torch.eye(5, dtype=torch.float64)
    res = refine_ths(f, y, labels, w0, n_steps=60, lr=1e-2, loss=name, reorthogonalize=False)
    assert res.loss_history[-1] < res.loss_history[0], res.loss_history[::10]


def test_fit_gpua_options_defaults_unchanged():
    assert (GPUASettings().loss, GPUASettings().mining) == ("ths", "joint")
    g = torch.Generator().manual_seed(0)
    z, x, t = (torch.randn(n, d, generator=g) for n, d in ((40, 8), (40, 6), (4, 6)))
    default = fit_gpua(z, x, t, ths_steps=5)
    explicit = fit_gpua(z, x, t, ths_steps=5, loss="ths", mining="joint")
    assert torch.equal(default.W, explicit.W)
    other = fit_gpua(z, x, t, ths_steps=5, loss="csls")
    assert not torch.equal(default.W, other.W) and other.config["loss"] == "csls"
    semantic = fit_gpua(z, x, t, ths_steps=0, mining="semantic", lam=0.3)
    lam_one = fit_gpua(z, x, t, ths_steps=0, lam=1.0)
    assert semantic.config["lam"] == 1.0 and torch.allclose(semantic.probs, lam_one.probs)
    with pytest.raises(ValueError, match="mining: expected one of joint, semantic"):
        fit_gpua(z, x, t, mining="dino")
