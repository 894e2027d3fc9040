"""Tests for core.methods.otfusion: a naive reference (loops, scipy, POT), the fused Sinkhorn
against
core.solvers.sinkhorn, invariants, float32 vs float64, variants, synthetic ground truth,
validation."""

import math

import numpy as np
import ot
import pytest
import torch
from scipy.special import softmax
from scipy.stats import multivariate_normal

from core.methods.otfusion import LOG2E, VARIANTS, OTFusionResult, _sinkhorn_into, otfusion
from core.methods.zeroshot import zeroshot_probs
from core.solvers.sinkhorn import sinkhorn
from core.synthetic.features import make_synthetic

ATOL_NAIVE = 1e-8  # float64, ours against the loop / POT reference (per-image probabilities)
# OTFusion's Sinkhorn call against core.solvers.sinkhorn's log loop, float64, N*plan
ATOL_FUSED64 = 1e-12
ATOL_FUSED32 = 1e-4  # same in float32 (measured 5e-6 at 3 iterations, 9e-5 at 50)
ATOL_ROWS32 = 1e-5  # rows of N*Q sum to 1 (float32)
COL_TOL = 1e-2  # L1 column error of probs / N after 3 Sinkhorn iterations (measured <= 8e-3)
# Hard preset, seeds 0-3, N=1000, K=10: zero-shot 46-49%, joint 99.3-100%, semantic-only = zero-
# shot +- 0.2, CLIP-only +3.4 to +4.6 points. Asserted with slack:
MARGIN_JOINT = 0.40  # measured +51 to +53 points over zero-shot
MARGIN_VS_SEMANTIC = 0.40
MARGIN_CLIP_ONLY = 0.01


def _toy(n=24, k=3, d=4, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(k, d, generator=g, dtype=dtype)
    labels = torch.arange(n) % k
    v = centres[labels] + torch.randn(n, d, generator=g, dtype=dtype)
    logits = 2.0 * torch.randn(n, k, generator=g, dtype=dtype)
    logits[torch.arange(n), labels] += 1.0
    return v, torch.softmax(logits, 1), labels


@pytest.fixture(scope="module")
def hard_sets():
    out = []
    for seed in range(3):
        ds = make_synthetic(1000, 10, seed=seed, difficulty="hard")
        out.append((ds, zeroshot_probs(ds.vlm_image, ds.vlm_text)))
    return out


# ----------------------------------------------------------------------------- naive reference


def _naive_m_step(v, w, reg):
    """Eq. 11-12 with loops; w (N, K) weights whose rows sum to 1."""
    n, k = w.shape
    means = np.stack([sum(w[i, c] * v[i] for i in range(n)) / w[:, c].sum() for c in range(k)])
    var = sum(w[i, c] * (v[i] - means[c]) ** 2 for i in range(n) for c in range(k)) / n + reg
    return means, var


def _naive_iteration(vs, ys, etas, lams, eps, plan_fn, reg=1e-6):
    """Algorithm 1, one outer iteration, with scipy log-densities and loops."""
    vs = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vs]
    y_mean = sum(ys) / len(ys)
    n, k = y_mean.shape
    s = sum(lam * y for lam, y in zip(lams, ys))
    params = [_naive_m_step(v, y_mean, reg) for v in vs]
    for eta, v, (means, var) in zip(etas, vs, params):
        logp = np.stack(
            [multivariate_normal(mean=means[c], cov=np.diag(var)).logpdf(v) for c in range(k)], 1
        ) + math.log(1.0 / k)
        s = s + eta * softmax(logp, axis=1)
    q = plan_fn(s)
    entropy = -sum(q[i, c] * math.log(q[i, c]) for i in range(n) for c in range(k) if q[i, c] > 0)
    objective = float((q * s).sum()) + eps * entropy
    new_params = [_naive_m_step(v, n * q, reg) for v in vs]
    return n * q, objective, new_params


def _pot_plan(eps):
    def plan(s):
        n, k = s.shape
        return ot.sinkhorn(np.full(n, 1 / n), np.full(k, 1 / k), -s, reg=eps,
                           method="sinkhorn_log", numItermax=3000, stopThr=1e-14)
    return plan


def _core_plan(eps, iters):
    def plan(s):
        res = sinkhorn(-torch.as_tensor(s), eps=eps, max_iter=iters, tol=0, method="log")
        return res.plan.numpy()
    return plan


@pytest.mark.parametrize("multi", [False, True])
def test_one_outer_iteration_matches_naive_reference_with_pot(multi):
    v1, y1, _ = _toy(seed=1)
    vs, ys, etas, lams = [v1], [y1], [1.0], [0.8]
    if multi:  # two VFMs, two VLMs, unequal weights
        v2, y2, _ = _toy(d=6, seed=2)
        vs, ys, etas, lams = [v1, v2], [y1, y2], [0.3, 0.7], [0.5, 1.0]
    eps = 0.1
    res = otfusion(vs, ys, lam=lams, eta=etas, eps=eps, n_iter=1, sinkhorn_iter=3000, tol=0)
    probs, objective, params = _naive_iteration(
        [v.numpy() for v in vs], [y.numpy() for y in ys], etas, lams, eps, _pot_plan(eps)
    )
    np.testing.assert_allclose(res.probs.numpy(), probs, atol=ATOL_NAIVE, rtol=0)
    assert res.history[0].objective == pytest.approx(objective, rel=1e-9)
    for (means, var), ours_mu, ours_var in zip(params, res.means, res.var):
        np.testing.assert_allclose(ours_mu.numpy(), means, atol=ATOL_NAIVE, rtol=0)
        np.testing.assert_allclose(ours_var.numpy(), var, atol=ATOL_NAIVE, rtol=1e-7)


def test_three_sinkhorn_iterations_match_core_sinkhorn_inside_the_loop():
    v, y, _ = _toy(n=40, seed=3)
    res = otfusion([v], [y], eps=0.01, n_iter=1, sinkhorn_iter=3, tol=0)
    probs, objective, _ = _naive_iteration([v.numpy()], [y.numpy()], [1.0], [0.8], 0.01,
                                           _core_plan(0.01, 3))
    np.testing.assert_allclose(res.probs.numpy(), probs, atol=ATOL_NAIVE, rtol=0)
    assert res.history[0].objective == pytest.approx(objective, rel=1e-9)


# ----------------------------------------------------------------------------- fused Sinkhorn


def _scores(n, k, *, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(8 * torch.randn(n, k, generator=g, dtype=dtype), 1)
    y = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=dtype), 1)
    s = p + 0.8 * y
    s[: n // 10] = 0.05  # flat rows: without a row offset their kernel rows would underflow
    return s


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps", [0.05, 0.01, 1e-3])
@pytest.mark.parametrize("iters", [3, 50])
def test_otfusion_sinkhorn_call_equals_the_log_domain_reference(dtype, eps, iters):
    # OTFusion hands the shared scaling-form solver S log2(e)/eps and its own (N, K) buffer; the
    # plan lands in that buffer and matches core.solvers.sinkhorn's logsumexp loop on cost = -S.
    s = _scores(200, 13, seed=0, dtype=dtype)
    m2 = s * (LOG2E / eps)
    m2_before = m2.clone()
    out = torch.empty_like(s)
    log_u, log_v, fell_back = _sinkhorn_into(m2, out, n_iter=iters)
    ref = sinkhorn(-s, eps=eps, max_iter=iters, tol=0, method="log")
    assert not fell_back
    assert torch.equal(m2, m2_before)  # the input is left intact (OTFusion reuses it)
    atol = ATOL_FUSED64 if dtype == torch.float64 else ATOL_FUSED32
    torch.testing.assert_close(200 * out, 200 * ref.plan, atol=atol, rtol=0)
    torch.testing.assert_close(200 * out.sum(1), torch.ones(200, dtype=dtype), atol=atol, rtol=0)
    # The returned potentials are core.solvers.sinkhorn's: Q = exp(S/eps + log_u + log_v).
    torch.testing.assert_close(torch.exp(s / eps + log_u[:, None] + log_v[None, :]), out,
                               atol=atol / 200, rtol=1e-3)


def test_otfusion_sinkhorn_stays_finite_when_scalings_leave_the_float_range():
    # Many iterations at a tiny eps drive the scalings u, v past float32 (unreachable in 3): the
    # shared solver absorbs them into the kernel (or finishes in the log domain) and tracks the
    # float64 log-domain reference -- closer than core.solvers.sinkhorn's own float32 log loop does.
    s = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    eps = 1e-4
    out = torch.empty_like(s)
    log_u, log_v, _ = _sinkhorn_into(s * (LOG2E / eps), out, n_iter=500)
    ref = sinkhorn(-s.double(), eps=eps, max_iter=500, tol=0, method="log")
    assert torch.isfinite(out).all() and torch.isfinite(log_u).all() and torch.isfinite(log_v).all()
    torch.testing.assert_close(out.double(), ref.plan, atol=1e-6, rtol=0)  # measured 2e-8
    torch.testing.assert_close(5 * out.sum(1), torch.ones(5), atol=ATOL_ROWS32, rtol=0)


# ----------------------------------------------------------------------------- invariants


def test_probs_are_distributions_with_near_uniform_class_marginals(hard_sets):
    ds, y = hard_sets[0]
    res = otfusion([ds.vfm_image], [y])
    n, k = y.shape
    assert isinstance(res, OTFusionResult) and res.probs.shape == (n, k)
    assert bool((res.probs >= 0).all())
    torch.testing.assert_close(res.probs.sum(1), torch.ones(n), atol=ATOL_ROWS32, rtol=0)
    col_err = float((res.probs.sum(0) / n - 1 / k).abs().sum())
    assert col_err == pytest.approx(res.marginal_error, abs=1e-5)
    assert col_err < COL_TOL
    assert torch.equal(res.pred, res.probs.argmax(1))


def test_float32_agrees_with_float64(hard_sets):
    ds, y = hard_sets[1]
    r32 = otfusion([ds.vfm_image], [y])
    r64 = otfusion([ds.vfm_image.double()], [y.double()])
    assert r32.probs.dtype == torch.float32 and r64.probs.dtype == torch.float64
    torch.testing.assert_close(r32.probs.double(), r64.probs, atol=1e-4, rtol=0)  # measured 2e-7
    assert torch.equal(r32.pred, r64.pred)
    assert r32.n_iter == r64.n_iter


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_returns_valid_probs_and_history(variant, hard_sets):
    ds, y = hard_sets[0]
    res = otfusion([ds.vfm_image, ds.vlm_image], [y, y], lam=[0.4, 0.4], variant=variant,
                   labels=ds.labels, n_iter=4, tol=0)
    n = y.shape[0]
    torch.testing.assert_close(res.probs.sum(1), torch.ones(n), atol=ATOL_ROWS32, rtol=0)
    assert torch.isfinite(res.probs).all()
    assert res.variant == variant
    expected_iters = 4 if variant in ("joint", "concat") else 1
    assert res.n_iter == len(res.history) == expected_iters
    expected_gmms = {"joint": 2, "concat": 1, "no_joint": 2, "semantic_only": 0}[variant]
    assert len(res.means) == len(res.var) == expected_gmms
    for step in res.history:
        assert math.isfinite(step.objective) and step.accuracy is not None
    assert res.history[-1].accuracy == pytest.approx(float((res.pred == ds.labels).float().mean()))


def test_semantic_only_accepts_no_vfm_and_history_has_no_accuracy_without_labels(hard_sets):
    _, y = hard_sets[0]
    res = otfusion([], [y], variant="semantic_only")
    assert len(res.history) == 1 and res.history[0].accuracy is None
    assert res.means == () and res.converged


def test_tolerance_stops_early_and_tol_zero_runs_every_iteration(hard_sets):
    ds, y = hard_sets[0]
    full = otfusion([ds.vfm_image], [y], n_iter=12, tol=0)
    assert full.n_iter == 12 and not full.converged
    early = otfusion([ds.vfm_image], [y], n_iter=12, tol=1e-6)
    assert early.converged and early.n_iter < 12
    objs = [h.objective for h in early.history]
    assert abs(objs[-1] - objs[-2]) <= 1e-6 * abs(objs[-2])
    assert all(h.accuracy is None for h in early.history)


def test_concat_of_one_vfm_is_joint(hard_sets):
    ds, y = hard_sets[2]
    joint = otfusion([ds.vfm_image], [y])
    concat = otfusion([ds.vfm_image], [y], variant="concat")
    torch.testing.assert_close(concat.probs, joint.probs)


# ----------------------------------------------------------------------------- ground truth


def test_fusion_beats_zero_shot_by_a_wide_margin_on_the_hard_preset(hard_sets):
    for ds, y in hard_sets:
        zeroshot = float((y.argmax(1) == ds.labels).float().mean())
        acc = {
            v: otfusion([ds.vfm_image], [y], variant=v, labels=ds.labels).history[-1].accuracy
            for v in ("joint", "concat", "semantic_only")
        }
        assert acc["joint"] >= zeroshot + MARGIN_JOINT, (zeroshot, acc)
        assert acc["joint"] >= acc["semantic_only"] + MARGIN_VS_SEMANTIC, acc
        assert acc["concat"] >= acc["semantic_only"] + MARGIN_VS_SEMANTIC, acc


def test_clip_only_row_uses_the_vlm_image_features_as_a_vfm(hard_sets):
    for ds, y in hard_sets:
        zeroshot = float((y.argmax(1) == ds.labels).float().mean())
        res = otfusion([ds.vlm_image], [y], labels=ds.labels)
        assert res.history[-1].accuracy >= zeroshot + MARGIN_CLIP_ONLY


# ----------------------------------------------------------------------------- extremes, devices


def test_extreme_eps_and_scores_give_finite_probabilities(hard_sets):
    ds, y = hard_sets[0]
    for kwargs in (dict(eps=1e-4), dict(eps=1e-4, lam=1e3), dict(eps=10.0)):
        res = otfusion([ds.vfm_image], [y], **kwargs)
        assert torch.isfinite(res.probs).all(), kwargs
        torch.testing.assert_close(res.probs.sum(1), torch.ones(1000), atol=ATOL_ROWS32, rtol=0)
        assert all(math.isfinite(h.objective) for h in res.history)
    # Degenerate features: identical rows (zero variance without reg_covar) and zero vectors.
    same = torch.ones(1000, 8)
    same[:10] = 0.0
    res = otfusion([same], [y], reg_covar=0.0)
    assert torch.isfinite(res.probs).all()


def test_numpy_inputs_a_bare_matrix_and_mixed_dtypes_are_accepted(hard_sets):
    ds, y = hard_sets[0]
    res = otfusion(ds.vfm_image.numpy(), [y.numpy()], n_iter=2)
    ref = otfusion([ds.vfm_image], [y], n_iter=2)
    torch.testing.assert_close(res.probs, ref.probs)
    mixed = otfusion([ds.vfm_image], [y.double()], n_iter=2)  # promoted to float64
    assert mixed.probs.dtype == torch.float64 and mixed.means[0].dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(hard_sets):
    ds, y = hard_sets[0]
    cpu = otfusion([ds.vfm_image.double()], [y.double()])
    gpu = otfusion([ds.vfm_image.double().cuda()], [y.double().cuda()])
    assert gpu.probs.is_cuda
    torch.testing.assert_close(gpu.probs.cpu(), cpu.probs, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- validation

_V, _Y, _ = _toy(n=12, k=3, seed=5)


def _bad_rows():
    y = _Y.clone()
    y[0] *= 2
    return y


def _negative():
    y = _Y.clone()
    y[0, 0], y[0, 1] = -0.1, y[0, 1] + 0.1 + y[0, 0]
    return y


def _nan(x):
    x = x.clone()
    x[1, 1] = float("nan")
    return x


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([], [_Y]), {}, "needs at least one VFM"),
        (([_V], []), {}, "at least one"),
        (([_V[:10]], [_Y]), {}, "same number of samples"),
        (([_V], [_Y, _Y[:, :2] / _Y[:, :2].sum(1, keepdim=True)]), {}, "expected 3 classes"),
        (([_V], [_bad_rows()]), {}, "rows summing to 1"),
        (([_V], [_negative()]), {}, "probabilities >= 0"),
        (([_nan(_V)], [_Y]), {}, "NaN/Inf"),
        (([_V], [_nan(_Y)]), {}, "NaN/Inf"),
        (([_V[:2]], [torch.full((2, 3), 1 / 3)]), {}, "at least as many images as classes"),
        (([_V], [torch.ones(12, 1)]), {}, "at least 2 classes"),
        (([_V], [_Y]), dict(eps=0.0), "eps"),
        (([_V], [_Y]), dict(eps=-1.0), "eps"),
        (([_V.float()], [_Y.float()]), dict(eps=1e-40), "too small for torch.float32"),
        (([_V], [_Y]), dict(lam=-0.5), "non-negative"),
        (([_V], [_Y]), dict(lam=[0.5, 0.5]), r"one weight per model \(1\)"),
        (([_V, _V], [_Y]), dict(eta=[1.0]), r"one weight per model \(2\)"),
        (([_V, _V], [_Y]), dict(eta=[1.5, -0.5]), "non-negative"),
        (([_V, _V], [_Y]), dict(eta=[0.5, 0.6]), "summing to 1"),
        (([_V], [_Y]), dict(variant="fused"), r"one of \['joint', 'semantic_only'"),
        (([_V], [_Y]), dict(n_iter=0), "n_iter"),
        (([_V], [_Y]), dict(sinkhorn_iter=0), "sinkhorn_iter"),
        (([_V], [_Y]), dict(tol=-1.0), "tol"),
        (([_V], [_Y]), dict(reg_covar=-1.0), "reg_covar"),
        (([_V], [_Y]), dict(labels=torch.zeros(5, dtype=torch.long)), "labels"),
        (([_V], [_Y]), dict(labels=torch.full((12,), 3)), r"class indices in \[0, 3\)"),
        (("not a list", [_Y]), {}, "list of"),
    ],
)
def test_validation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        otfusion(*args, **kwargs)
