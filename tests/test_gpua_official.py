"""Tests for GPUA's official recipe (the public code, quirks included): UCM plan and Procrustes W0
against an independent float64 reference written from the facts listed in
``core.methods.gpua.fit`` (naive loops), THS against a loop reference with the augmentations off,
the augmentations' statistics, recipe resolution, input checks, and a synthetic case where the
official recipe beats zero-shot CLIP."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from otfusion_reference import plain_swav_sinkhorn

from core.checks import l2_normalize
from core.methods.gpua import fit as gpua_fit
from core.methods.gpua.fit import concat_features, fit_gpua
from core.methods.gpua.recipes import RECIPES
from core.methods.gpua.ths import augment
from core.methods.zeroshot import zeroshot_probs
from core.metrics import accuracy
from core.solvers.sinkhorn_swav import sinkhorn_swav, solve_swav
from core.synthetic.features import make_synthetic

ATOL_PLAN = 1e-4  # the bar for the UCM plan (rows sum to 1)
ATOL_PLAN_F64 = 1e-9  # float64 implementation vs float64 reference: rounding only
ATOL_W_F64 = 1e-8  # THS after a few AdamW steps, float64, same batches
N_POOL, N_CLASSES = 200, 8
FEATURE_SETS = [(0, "default"), (1, "hard")]  # (seed, difficulty) of make_synthetic


def _features(seed, difficulty, dtype=torch.float64):
    """Pool and held-out halves: official Z = [VFM, VLM] (blocks unit norm, not renormalised)."""
    ds = make_synthetic(2 * N_POOL, N_CLASSES, seed=seed, difficulty=difficulty)
    # Normalised in the test dtype, as the public code loads them (and fit_gpua renormalises).
    vfm, x, y = (l2_normalize(t.to(dtype)) for t in (ds.vfm_image, ds.vlm_image, ds.vlm_text))
    z = concat_features(vfm, x, renormalize=False)
    pool, test = slice(0, N_POOL), slice(N_POOL, None)
    return z[pool], x[pool], y, z[test], ds.labels[pool], ds.labels[test], x


# ----------------------------------------------------------------------------- naive reference


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _ref_ucm(z, x, y, *, n_rounds, lam=0.9, eps=0.05, max_iter=50, tol=1e-5):
    """The public code's UCM from the facts: P0 = softmax(100 X Y^T); centres from the 8 most
    confident samples per class (weighted by P0, averaged, normalised); rounds of
    S = 0.1 * (-||z - c|| / 0.1) + 0.9 * (-||x - y|| / 0.1), SwAV Sinkhorn, mass-weighted centres
    with the +1e-6 guards. Float64, loops over samples and classes."""
    z, x, y = (t.double().numpy() for t in (z, x, y))
    n, n_cls = z.shape[0], y.shape[0]
    logits = 100.0 * x @ y.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True)
    centres = np.zeros((n_cls, z.shape[1]))
    for c in range(n_cls):
        top = sorted(range(n), key=lambda i: -p[i, c])[:8]
        centres[c] = sum(p[i, c] * z[i] for i in top) / 8
    centres = _unit(centres)
    semantic = np.array([[-math.dist(x[i], y[c]) / 0.1 for c in range(n_cls)] for i in range(n)])
    rounds = []
    for _ in range(n_rounds):
        visual = np.array(
            [[-math.dist(z[i], centres[c]) / 0.1 for c in range(n_cls)] for i in range(n)]
        )
        p, used = plain_swav_sinkhorn(torch.from_numpy((1 - lam) * visual + lam * semantic),
                                      eps, max_iter, tol)
        p = p.numpy()
        rounds.append(used)
        for c in range(n_cls):
            mean = (p[:, c, None] * z).sum(axis=0) / (p[:, c].sum() + 1e-6)
            centres[c] = mean / (np.linalg.norm(mean) + 1e-6)
    return p, rounds


def _ref_w0(z, y, labels, shrink=0.9):
    """Hard-target Procrustes by numpy's SVD, then W - shrink (W - I_{d_v x d_t})."""
    z, y = z.double().numpy(), y.double().numpy()
    u, _, vt = np.linalg.svd(z.T @ y[labels], full_matrices=False)
    w = u @ vt
    return w - shrink * (w - np.eye(*w.shape))


def _predict(z, w, y):
    return np.argmax(_unit(z.double().numpy() @ w) @ y.double().numpy().T, axis=1)


# ----------------------------------------------------------------------------- UCM and W0


@pytest.mark.parametrize("seed,difficulty", FEATURE_SETS)
def test_ucm_plan_and_w0_match_the_reference(seed, difficulty):
    z, x, y, z_test, *_ = _features(seed, difficulty)
    ref_p, ref_rounds = _ref_ucm(z, x, y, n_rounds=3)
    align = fit_gpua(z, x, y, recipe="official", ths_steps=0)
    np.testing.assert_allclose(align.probs.numpy(), ref_p, atol=ATOL_PLAN_F64, rtol=0)
    assert list(align.ucm_n_iter) == ref_rounds
    ref_labels = ref_p.argmax(axis=1)
    assert align.pseudo_labels.tolist() == ref_labels.tolist()
    ref_w0 = _ref_w0(z, y, ref_labels)
    # K = 8 < d_t: the polar factor is unique only on the prototypes' span, which is all that
    # the scores normalise(z W) . y_c see.
    yt = y.numpy().T
    np.testing.assert_allclose(align.W0.numpy() @ yt, ref_w0 @ yt, atol=1e-10, rtol=0)
    assert torch.equal(align.W, align.W0)  # no THS step
    for feats in (z, z_test):
        assert align.predict(feats, y).tolist() == _predict(feats, ref_w0, y).tolist()


@pytest.mark.parametrize("seed,difficulty", FEATURE_SETS)
def test_float32_ucm_plan_within_1e4_of_the_float64_reference(seed, difficulty):
    z, x, y, z_test, *_ = _features(seed, difficulty, dtype=torch.float32)
    ref_p, _ = _ref_ucm(z, x, y, n_rounds=3)
    align = fit_gpua(z, x, y, recipe="official", ths_steps=0)
    assert align.probs.dtype == torch.float32
    np.testing.assert_allclose(align.probs.double().numpy(), ref_p, atol=ATOL_PLAN, rtol=0)
    ref_w0 = _ref_w0(z, y, ref_p.argmax(axis=1))
    assert align.predict(z_test, y).tolist() == _predict(z_test, ref_w0, y).tolist()


def test_swav_sinkhorn_at_the_official_settings_stops_like_the_loop():
    """The shared solver (core.solvers.sinkhorn_swav) at GPUA's eps, against the plain loop."""
    g = torch.Generator().manual_seed(3)
    score = -3.0 * torch.rand(37, 5, generator=g, dtype=torch.float64)
    for tol in (1e-3, 1e-5, 1e-9):
        res = sinkhorn_swav(score, eps=0.05, max_iter=200, tol=tol)
        ref, ref_used = plain_swav_sinkhorn(score, 0.05, 200, tol)
        assert res.n_iter == ref_used
        torch.testing.assert_close(37 * res.plan, ref, atol=1e-12, rtol=0)
    assert sinkhorn_swav(score, eps=0.05, max_iter=7, tol=0.0).n_iter == 7
    # invariants: rows sum to 1 exactly after the last step; columns near n/K once converged
    probs = 37 * sinkhorn_swav(score, eps=0.05, max_iter=2000, tol=1e-15).plan
    torch.testing.assert_close(probs.sum(1), torch.ones(37, dtype=torch.float64))
    torch.testing.assert_close(probs.sum(0), torch.full((5,), 37 / 5, dtype=torch.float64))


def test_ucm_runs_the_shared_solver_once_per_round(monkeypatch):
    """One SwAV Sinkhorn in the code base: the official UCM calls core.solvers' solve_swav."""
    import core.methods.gpua.ucm as ucm

    assert not hasattr(ucm, "_swav_sinkhorn")
    calls = []

    def counting(scores, **kw):
        res = solve_swav(scores, **kw)
        calls.append(res.n_iter)
        return res

    monkeypatch.setattr(ucm, "solve_swav", counting)
    z, x, y, *_ = _features(0, "default")
    align = fit_gpua(z, x, y, recipe="official", n_ucm_iter=4, ths_steps=0)
    assert calls == list(align.ucm_n_iter) and len(calls) == 4


def test_ucm_without_rounds_is_the_zero_shot_softmax_and_identity_shrink_can_be_switched_off():
    z, x, y, *_ = _features(0, "default")
    align = fit_gpua(z, x, y, recipe="official", n_ucm_iter=0, identity_shrink=0.0, ths_steps=0)
    torch.testing.assert_close(align.probs, zeroshot_probs(x, y))
    assert align.orthogonality_error < 1e-10  # the plain polar factor
    shrunk = fit_gpua(z, x, y, recipe="official", n_ucm_iter=0, ths_steps=0)
    torch.testing.assert_close(shrunk.W0, 0.1 * align.W0 + 0.9 * torch.eye(*align.W0.shape,
                                                                           dtype=torch.float64))


# ----------------------------------------------------------------------------- THS


def _ref_official_loss(feats, y, labels, k=3, scale=2.0, hub_weight=2.0):
    """The public code's alignment_loss with loops: top-k over all prototypes (the positive
    included), hubness counted on those sets, hinge with margin + hub_weight * h_c."""
    f = feats / feats.norm(dim=1, keepdim=True)
    n, n_cls = f.shape[0], y.shape[0]
    dists = [torch.stack([torch.linalg.norm(f[i] - y[c]) for c in range(n_cls)]) for i in range(n)]
    sets = [sorted(range(n_cls), key=lambda c: float(d[c].detach()))[:k] for d in dists]
    hub = [sum(c in s for s in sets) / n for c in range(n_cls)]
    terms = []
    for i in range(n):
        li = int(labels[i])
        for c in sets[i]:
            margin = (1.0 - float(y[li] @ y[c])) / scale
            terms.append(torch.relu(dists[i][li] + margin + hub_weight * hub[c] - dists[i][c]))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("seed,difficulty", FEATURE_SETS)
def test_ths_with_augmentations_off_matches_a_loop_reference(seed, difficulty):
    n, steps = 60, 12
    z, x, y, z_test, *_ = _features(seed, difficulty)
    z, x = z[:n], x[:n]
    align = fit_gpua(z, x, y, recipe="official", ths_steps=steps, ths_noise_std=0.0,
                     ths_dropout=0.0)
    labels = align.pseudo_labels
    w = torch.nn.Parameter(align.W0.clone())
    opt = torch.optim.AdamW([w], lr=5e-4, eps=1e-8, betas=(0.9, 0.999), weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-7)
    g = torch.Generator().manual_seed(0)  # fit_gpua's default generator draws the subsets
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: int(0.75 * n)]
        loss = _ref_official_loss(z[idx] @ w, y, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(align.W.numpy(), w.detach().numpy(), atol=ATOL_W_F64, rtol=0)
    assert not torch.equal(align.W, align.W0)
    assert align.orthogonality_error > 1e-6  # no re-projection
    ref_pred = _predict(z_test, w.detach().numpy(), y)
    assert align.predict(z_test, y).tolist() == ref_pred.tolist()


def test_augment_statistics():
    z = torch.ones(400, 50, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    noised = dropped = 0
    for _ in range(200):
        out = augment(z, noise_std=0.035, dropout=0.05, generator=g)
        zeros = out == 0
        if bool(zeros.any()):
            dropped += 1
            assert float(zeros.double().mean()) == pytest.approx(0.05, abs=0.01)
        kept = out[~zeros]
        if float((kept - kept.mean()).abs().max()) > 1e-12:  # noise makes entries differ
            noised += 1
            scale = 1 / 0.95 if bool(zeros.any()) else 1.0
            assert float(kept.std()) == pytest.approx(0.035 * scale, rel=0.05)
        elif bool(zeros.any()):
            assert float(kept.mean()) == pytest.approx(1 / 0.95, abs=1e-12)  # F.dropout's scale
    assert 70 <= noised <= 130 and 70 <= dropped <= 130  # each with probability 1/2
    assert augment(z, noise_std=0.0, dropout=0.0, generator=g) is z


def test_augmentations_are_seeded_and_change_the_fit():
    z, x, y, *_ = _features(0, "default")
    fit = lambda **kw: fit_gpua(z, x, y, recipe="official", ths_steps=10, **kw)
    a, b = fit(generator=torch.Generator().manual_seed(5)), fit(
        generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.W, b.W)
    assert not torch.equal(a.W, fit(ths_noise_std=0.0, ths_dropout=0.0).W)


# ----------------------------------------------------------------------------- recipe, inputs


def test_recipe_defaults_and_overrides_are_recorded():
    z, x, y, *_ = _features(0, "default")
    align = fit_gpua(z, x, y, recipe="official", ths_steps=0)
    cfg = align.config
    assert cfg["recipe"] == "official"
    official = RECIPES["official"]
    for name in ("eps", "n_ucm_iter", "targets", "identity_shrink", "ths_weight_decay",
                 "ths_batch_size", "ths_hub_weight", "ths_noise_std", "ths_dropout",
                 "sinkhorn_max_iter", "sinkhorn_tol"):
        assert cfg[name] == getattr(official, name), name
    assert cfg["ths_include_positive"] is True and cfg["reorthogonalize"] is False
    soft = fit_gpua(z, x, y, recipe="official", targets="soft", eps=0.1, ths_steps=0)
    assert soft.config["targets"] == "soft" and soft.config["eps"] == 0.1
    assert fit_gpua(z, x, y, ths_steps=0).config["recipe"] == "paper"
    with pytest.raises(ValueError, match="recipe"):
        fit_gpua(z, x, y, recipe="authors")


def test_official_recipe_refuses_features_that_are_not_unit_blocks():
    z, x, y, *_ = _features(0, "default")
    with pytest.raises(ValueError, match="renormalize=False"):
        fit_gpua(30.0 * z, x, y, recipe="official", ths_steps=0)
    unit = fit_gpua(z / math.sqrt(2), x, y, recipe="official", ths_steps=0)  # one unit "block"
    assert unit.probs.shape == (N_POOL, N_CLASSES)


def _antipodal_second_class():
    """20 images on prototype 0; prototype 1 antipodal (cosine -1, distance 2)."""
    d = 4
    y = torch.eye(2, d)
    y[1] = -y[0]
    x = torch.zeros(20, d)
    x[:, 0] = 1.0
    x[:, 1] = 0.01 * torch.arange(20)
    return x / x.norm(dim=1, keepdim=True), y


def test_underflow_of_the_probability_domain_sinkhorn_is_a_clear_error():
    # temperature 1 keeps P0 of class 1 at about e^-2, but the Sinkhorn kernel of class 1 is
    # exp(-0.9 * 2 / 0.1 / 0.05) = exp(-360) in every row: 0 in float32 (below ~e^-104), where
    # the public code's loop gives NaN.
    x, y = _antipodal_second_class()
    with pytest.raises(ValueError, match=r"Sinkhorn kernel.*underflowed.*torch.float32.*\[1\]"):
        fit_gpua(x, x, y, recipe="official", temperature=1.0, ths_steps=0)
    fine = fit_gpua(x.double(), x.double(), y.double(), recipe="official", temperature=1.0,
                    ths_steps=0)
    assert bool(torch.isfinite(fine.probs).all())  # 360 < 745 in float64
    assert fine.probs[:, 1].sum() == pytest.approx(10.0, abs=0.1)  # about its n/K share


def test_underflow_of_the_zero_shot_start_is_a_clear_error():
    # At temperature 100, P0 of class 1 is e^-200 = 0 in float32: no start centre (0 / 0).
    x, y = _antipodal_second_class()
    with pytest.raises(ValueError, match=r"P0 underflowed.*torch.float32.*\[1\]"):
        fit_gpua(x, x, y, recipe="official", ths_steps=0)
    fine = fit_gpua(x.double(), x.double(), y.double(), recipe="official", ths_steps=0)
    assert bool(torch.isfinite(fine.probs).all())


def test_batch_size_fraction_one_is_full_batch():
    z, x, y, *_ = _features(0, "default")
    full = fit_gpua(z, x, y, ths_steps=5, ths_batch_size=1.0)
    same = fit_gpua(z, x, y, ths_steps=5, ths_batch_size=10 * N_POOL)
    assert torch.equal(full.W, same.W)
    with pytest.raises(ValueError, match="ths_batch_size"):
        fit_gpua(z, x, y, ths_steps=5, ths_batch_size=0.0)


# ----------------------------------------------------------------------------- known answer


def test_official_recipe_beats_zero_shot_on_the_hard_preset():
    z, x, y, z_test, labels, labels_test, _ = _features(1, "hard", dtype=torch.float32)
    align = fit_gpua(z, x, y, recipe="official", ths_steps=100)
    ds = make_synthetic(2 * N_POOL, N_CLASSES, seed=1, difficulty="hard")
    zero_shot = accuracy(zeroshot_probs(ds.vlm_image[N_POOL:], y).argmax(1), labels_test)
    assert accuracy(align.predict(z_test, y), labels_test) > zero_shot + 0.1
    assert accuracy(align.pseudo_labels, labels) > zero_shot


# ----------------------------------------------------------------------------- documentation


def test_docs_say_the_official_recipe_reproduces_the_public_code_and_list_its_values():
    """The public code is reproduced by recipe='official', not by tuning the paper recipe's
    knobs; the module doc lists the official values, which must be the recipe's."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *sorted((root / "core").rglob("*.py")),
             *sorted((root / "demo").rglob("*.py"))]
    assert not [str(f) for f in files if re.search("emulat", f.read_text(), re.IGNORECASE)]
    readme = " ".join((root / "README.md").read_text().split())
    assert 'fit_gpua(..., recipe="paper")` (the default)' in readme
    assert '`recipe="official"` reproduces the public code' in readme
    doc = " ".join(gpua_fit.__doc__.split())
    assert '``recipe="paper"`` (default)' in doc
    assert '``recipe="official"`` reproduces the public code' in doc
    r = RECIPES["official"]

    def num(v):  # as the doc writes numbers: 0.05, 5e-4, 1e-7
        return f"{v:.0e}".replace("e-0", "e-") if 0 < abs(v) < 1e-3 else f"{v:g}"

    for fact in (f"eps {num(r.eps)}", f"at most {r.sinkhorn_max_iter} iterations",
                 f"below {num(r.sinkhorn_tol)}", f"{r.n_ucm_iter} UCM rounds",
                 f"W0 - {num(r.identity_shrink)} (W0 - I)", f"{r.ths_steps} steps",
                 f"weight decay {num(r.ths_weight_decay)}", f"decay to {num(r.ths_lr_min)}",
                 f"random {r.ths_batch_size:.0%} subset", f"hub weight {num(r.ths_hub_weight)}",
                 f"sigma {num(r.ths_noise_std)}", f"dropout ({num(r.ths_dropout)})",
                 f"{r.targets} Procrustes targets", "top-3", "no re-projection"):
        assert fact in doc, fact
