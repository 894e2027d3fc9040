"""Tests for core.metrics against sklearn, scipy and naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import skew
from sklearn.metrics import confusion_matrix as sk_confusion

from core.metrics import (
    accuracy,
    class_mean_cosine,
    confusion_matrix,
    hubness,
    k_occurrence,
    matched_accuracy,
    mean_assigned_cosine,
    mean_iou,
    modality_gap,
    per_class_accuracy,
)

ATOL = 1e-12


def _labels(n=200, k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=gen)
    pred = torch.where(
        torch.rand(n, generator=gen) < 0.6, labels, torch.randint(k, (n,), generator=gen)
    )
    return pred, labels


def test_accuracy_and_confusion_vs_sklearn():
    pred, labels = _labels()
    assert accuracy(pred, labels) == pytest.approx(float(np.mean(pred.numpy() == labels.numpy())))
    conf = confusion_matrix(pred, labels, 8)  # two classes never seen: zero rows and columns
    ref = sk_confusion(labels.numpy(), pred.numpy(), labels=list(range(8)))
    assert conf.dtype == torch.long
    np.testing.assert_array_equal(conf.numpy(), ref)
    assert int(conf.sum()) == 200


def test_per_class_accuracy_vs_loop_and_nan_for_absent():
    pred, labels = _labels(k=5)
    labels[labels == 3] = 4  # class 3 absent from labels
    got = per_class_accuracy(pred, labels, 6)
    for c in range(6):
        sel = labels == c
        if sel.any():
            assert got[c].item() == pytest.approx(float((pred[sel] == c).double().mean()), abs=ATOL)
        else:
            assert math.isnan(got[c].item())
    assert math.isnan(got[3].item()) and math.isnan(got[5].item())


def test_accuracy_known_answers_and_validation():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 0.75
    assert accuracy(np.array([1, 1]), [1, 1]) == 1.0  # arrays and lists accepted
    with pytest.raises(ValueError, match="same shape"):
        accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="labels"):
        per_class_accuracy(torch.tensor([0]), torch.tensor([-1]), 3)
    with pytest.raises(ValueError, match="at least one"):
        accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


def test_modality_gap_and_assigned_cosine():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    t = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    xn, tn = x / x.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    ref = np.linalg.norm(xn.numpy().mean(0) - tn.numpy().mean(0))
    assert modality_gap(3 * x, t) == pytest.approx(ref, abs=ATOL)
    assign = torch.randint(6, (50,), generator=gen)
    ref_cos = np.mean([float(xn[i] @ tn[assign[i]]) for i in range(50)])
    assert mean_assigned_cosine(x, t, assign) == pytest.approx(ref_cos, abs=ATOL)
    # known answers: identical sets have no gap; antipodal single points have gap 2
    assert modality_gap(xn, xn) == pytest.approx(0.0, abs=ATOL)
    e = torch.tensor([[1.0, 0.0]])
    assert modality_gap(e, -e) == pytest.approx(2.0)
    assert mean_assigned_cosine(e, torch.cat([e, -e]), torch.tensor([1])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="dimension"):
        modality_gap(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match="assignment"):
        mean_assigned_cosine(x, t, assign[:10])


def test_class_mean_cosine_vs_loop_and_known_answers():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(4, (40,), generator=gen)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    ref = []
    for i in range(40):
        mean = xn[labels.numpy() == int(labels[i])].mean(0)
        ref.append(float(xn[i] @ mean / np.linalg.norm(mean)))
    assert class_mean_cosine(2 * x, labels) == pytest.approx(np.mean(ref), abs=ATOL)
    # every class a single point: 1; two antipodal members make a zero mean: 0 (not NaN)
    e = torch.eye(3, dtype=torch.float64)
    assert class_mean_cosine(e[[0, 0, 1, 2, 2]], torch.tensor([0, 0, 1, 2, 2])) == pytest.approx(1)
    assert class_mean_cosine(torch.cat([e[:1], -e[:1]]), torch.tensor([0, 0])) == 0.0
    with pytest.raises(ValueError, match="labels"):
        class_mean_cosine(x, labels[:10])


def _naive_k_occurrence(q, p, k):
    q, p = q.numpy(), p.numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    counts = np.zeros(p.shape[0], dtype=np.int64)
    for i in range(q.shape[0]):
        sims = [q[i] @ p[j] for j in range(p.shape[0])]
        for j in sorted(range(p.shape[0]), key=lambda j: -sims[j])[:k]:
            counts[j] += 1
    return counts


@pytest.mark.parametrize("k", [1, 3, 10])
def test_k_occurrence_and_hubness_vs_naive(k):
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(120, 10, generator=gen, dtype=torch.float64)
    p = torch.randn(17, 10, generator=gen, dtype=torch.float64)
    counts = _naive_k_occurrence(q, p, k)
    np.testing.assert_array_equal(k_occurrence(q, p, k=k).numpy(), counts)
    assert int(counts.sum()) == 120 * k
    assert hubness(q, p, k=k) == pytest.approx(float(skew(counts.astype(float))), abs=1e-9)


def test_hubness_known_cases():
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(5, 4, generator=gen)
    q = torch.randn(30, 4, generator=gen)
    # k >= number of prototypes: every prototype is always a neighbour -> no hubness
    assert hubness(q, p, k=50) == 0.0
    assert k_occurrence(q, p, k=50).tolist() == [30] * 5
    # one hub: every query is nearest to prototype 0, the others never
    protos = torch.eye(6)
    queries = protos[0] + 0.01 * torch.randn(40, 6, generator=gen)
    assert hubness(queries, protos, k=1) > 1.5
    with pytest.raises(ValueError, match="k"):
        hubness(q, p, k=0)


def test_matched_accuracy_hungarian():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    permuted = torch.tensor([2, 2, 0, 0, 1, 1, 1])  # perfect clustering, renamed
    assert matched_accuracy(permuted, labels) == 1.0
    noisy = torch.tensor([2, 2, 0, 1, 1, 1, 0])
    # best map 2->0, 1->2, 0->1: correct 2 + 1 + 2 = 5
    assert matched_accuracy(noisy, labels) == pytest.approx(5 / 7)
    # more clusters than classes: the extra cluster cannot be matched
    assert matched_accuracy(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])) == 0.5
    # brute force over permutations agrees
    from itertools import permutations

    pred, lab = _labels(n=60, k=4, seed=5)
    best = max(
        float((torch.tensor(perm)[pred] == lab).double().mean()) for perm in permutations(range(4))
    )
    assert matched_accuracy(pred, lab) == pytest.approx(best)


def _naive_iou(pred, lab, k, ignore):
    ious = []
    for c in range(k):
        valid = lab != ignore
        p, t = (pred == c) & valid, (lab == c) & valid
        union = (p | t).sum()
        ious.append(float((p & t).sum() / union) if union else float("nan"))
    return ious


def test_mean_iou_vs_loop():
    gen = torch.Generator().manual_seed(4)
    lab = torch.randint(4, (3, 9, 11), generator=gen)
    lab[0, :2] = -1  # ignored pixels
    pred = torch.where(
        torch.rand(3, 9, 11, generator=gen) < 0.7,
        lab.clamp_min(0),
        torch.randint(4, (3, 9, 11), generator=gen),
    )
    pred[0, 0] = 3  # predictions on ignored pixels do not count
    miou, per_class = mean_iou(pred, lab, 5, ignore_index=-1)  # class 4 never appears: NaN
    ref = _naive_iou(pred.numpy(), lab.numpy(), 5, -1)
    np.testing.assert_allclose(per_class.numpy(), ref, atol=ATOL)
    assert math.isnan(per_class[4].item())
    assert miou == pytest.approx(np.nanmean(ref), abs=ATOL)
    assert mean_iou(lab.clamp_min(0), lab.clamp_min(0), 4)[0] == 1.0


def test_mean_iou_validation():
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="ignore_index"):
        mean_iou(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255), 2, ignore_index=255
        )
    with pytest.raises(ValueError, match="pred"):
        mean_iou(torch.full((1, 2, 2), 7), torch.zeros(1, 2, 2, dtype=torch.long), 2)
