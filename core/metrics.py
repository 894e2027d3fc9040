"""Evaluation metrics: accuracy, confusion, modality gap, hubness, clustering and segmentation.

- Accuracy, per-class accuracy and the confusion matrix (rows true class, columns prediction).
- Modality gap (Liang et al. 2022): distance between the centroids of the L2-normalised image and
  text embeddings; and the mean cosine of each image to its assigned prototype.
- Cluster tightness: the mean cosine of each sample to the normalised mean of its class.
- Hubness (Radovanovic et al. 2010): skewness of the k-occurrence distribution of the prototypes;
  large positive skew means a few prototypes ("hubs") are the nearest neighbours of many queries,
  which GPUA's THS refinement penalises.
- Matched accuracy of a clustering (Hungarian assignment of clusters to classes) and mean IoU.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import skew
from torch import Tensor

from core.checks import check_int, check_matrix, l2_normalize

__all__ = [
    "accuracy",
    "class_mean_cosine",
    "confusion_matrix",
    "hubness",
    "k_occurrence",
    "matched_accuracy",
    "mean_assigned_cosine",
    "iou_from_confusion",
    "mean_iou",
    "modality_gap",
    "per_class_accuracy",
]


def _as_labels(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        if x.is_floating_point() and bool(torch.all(x == x.round())):
            return x.long()
        raise ValueError(f"{name}: expected integer class indices, got dtype {x.dtype}.")
    return x.long()


def _check_pair(pred, labels, *, ndim: int | None = 1) -> tuple[Tensor, Tensor]:
    pred = _as_labels(pred, "pred")
    labels = _as_labels(labels, "labels")
    if ndim is not None and labels.ndim != ndim:
        raise ValueError(f"labels: expected a {ndim}-D tensor, got shape {tuple(labels.shape)}.")
    if pred.shape != labels.shape:
        raise ValueError(
            f"pred and labels must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(labels.shape)}; pass one prediction per labelled sample."
        )
    if labels.numel() == 0:
        raise ValueError("labels: expected at least one sample, got none.")
    return pred, labels


def _check_range(x: Tensor, name: str, n_classes: int) -> None:
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {n_classes - 1}], got values in "
            f"[{int(x.min())}, {int(x.max())}]; check n_classes."
        )


def accuracy(pred, labels) -> float:
    """Fraction of correct predictions.

    Parameters
    ----------
    pred, labels : Tensor, shape (n,), integer

    Returns
    -------
    float in [0, 1]
    """
    pred, labels = _check_pair(pred, labels)
    return float((pred == labels).double().mean())


def confusion_matrix(pred, labels, n_classes: int) -> Tensor:
    """Counts ``C[t, p]`` of samples of true class t predicted as p.

    Parameters
    ----------
    pred, labels : Tensor, shape (n,), integer in [0, n_classes)
    n_classes : int

    Returns
    -------
    Tensor, shape (n_classes, n_classes), long; rows true class, columns predicted class.
    """
    pred, labels = _check_pair(pred, labels)
    n_classes = check_int(n_classes, "n_classes", 1)
    _check_range(pred, "pred", n_classes)
    _check_range(labels, "labels", n_classes)
    flat = torch.bincount(labels * n_classes + pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def per_class_accuracy(pred, labels, n_classes: int) -> Tensor:
    """Recall of each class: correct / number of samples of that class.

    Parameters
    ----------
    pred, labels : Tensor, shape (n,), integer in [0, n_classes)
    n_classes : int

    Returns
    -------
    Tensor, shape (n_classes,), float64
        NaN for classes absent from ``labels`` (no samples: accuracy undefined); use
        ``torch.nanmean`` for the mean per-class accuracy.
    """
    conf = confusion_matrix(pred, labels, n_classes).double()
    support = conf.sum(dim=1)
    out = torch.full((n_classes,), float("nan"), dtype=torch.float64)
    present = support > 0
    out[present] = conf.diagonal()[present] / support[present]
    return out


def _check_features(image_features, text_features) -> tuple[Tensor, Tensor]:
    x = check_matrix(image_features, "image_features")
    t = check_matrix(text_features, "text_features")
    if x.shape[1] != t.shape[1]:
        raise ValueError(
            f"image_features and text_features must share their dimension, got {x.shape[1]} and "
            f"{t.shape[1]}; compare embeddings of the same space."
        )
    dtype = torch.promote_types(x.dtype, t.dtype)
    return l2_normalize(x.to(dtype)), l2_normalize(t.to(dtype))


def modality_gap(image_features, text_features) -> float:
    """Euclidean distance between the centroids of the normalised image and text embeddings.

    Parameters
    ----------
    image_features : Tensor, shape (n, d)
    text_features : Tensor, shape (k, d)

    Returns
    -------
    float in [0, 2]
    """
    x, t = _check_features(image_features, text_features)
    return float((x.mean(dim=0) - t.mean(dim=0)).norm())


def mean_assigned_cosine(image_features, text_features, assignment) -> float:
    """Mean cosine of each image to the prototype it is assigned to.

    Parameters
    ----------
    image_features : Tensor, shape (n, d)
    text_features : Tensor, shape (k, d)
    assignment : Tensor, shape (n,), integer in [0, k)
        Predicted or true class of each image.

    Returns
    -------
    float in [-1, 1]
    """
    x, t = _check_features(image_features, text_features)
    assignment = _as_labels(assignment, "assignment")
    if assignment.shape != (x.shape[0],):
        raise ValueError(
            f"assignment: expected shape ({x.shape[0]},), one class per image, got "
            f"{tuple(assignment.shape)}."
        )
    _check_range(assignment, "assignment", t.shape[0])
    return float((x * t[assignment]).sum(dim=1).mean())


def class_mean_cosine(features, labels) -> float:
    """Mean cosine of each sample to the L2-normalised mean of its class's samples.

    Real CLIP / DINOv2 features of one class give about 0.6-0.8; 1 means every class is a point.

    Parameters
    ----------
    features : Tensor, shape (n, d)
        L2-normalised here.
    labels : Tensor, shape (n,), integer classes >= 0

    Returns
    -------
    float in [-1, 1]
    """
    x = l2_normalize(check_matrix(features, "features").double())
    labels = _as_labels(labels, "labels")
    if labels.shape != (x.shape[0],) or int(labels.min()) < 0:
        raise ValueError(f"labels: expected {x.shape[0]} non-negative class ids, one per row of "
                         f"features, got shape {tuple(labels.shape)}.")
    sums = torch.zeros(int(labels.max()) + 1, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    return float((x * l2_normalize(sums)[labels]).sum(dim=1).mean())  # (k, d) class means


def k_occurrence(query, prototypes, *, k: int = 10) -> Tensor:
    """How often each prototype is among the k nearest prototypes (by cosine) of a query.

    Parameters
    ----------
    query : Tensor, shape (n, d)
    prototypes : Tensor, shape (m, d)
    k : int, default 10
        Clipped to m.

    Returns
    -------
    Tensor, shape (m,), long; sums to ``n * min(k, m)``.
    """
    q, p = _check_features(query, prototypes)
    k = min(check_int(k, "k", 1), p.shape[0])
    nearest = (q @ p.T).topk(k, dim=1).indices  # (n, k)
    return torch.bincount(nearest.flatten(), minlength=p.shape[0])


def hubness(query, prototypes, *, k: int = 10) -> float:
    """Skewness of the k-occurrence distribution of the prototypes (Radovanovic et al. 2010).

    Uses ``scipy.stats.skew`` conventions (biased estimator); 0 when every prototype occurs
    equally often (including k >= m, where every prototype is always a neighbour).

    Parameters
    ----------
    query : Tensor, shape (n, d)
    prototypes : Tensor, shape (m, d)
    k : int, default 10, clipped to m

    Returns
    -------
    float
    """
    counts = k_occurrence(query, prototypes, k=k).double()
    if bool((counts == counts[0]).all()):
        return 0.0
    return float(skew(counts.numpy()))


def matched_accuracy(pred_clusters, labels) -> float:
    """Accuracy of a clustering after the best one-to-one map of clusters to classes (Hungarian).

    Parameters
    ----------
    pred_clusters : Tensor, shape (n,), integer cluster ids >= 0
    labels : Tensor, shape (n,), integer classes >= 0
        The numbers of clusters and classes may differ; unmatched clusters count as errors.

    Returns
    -------
    float in [0, 1]
    """
    pred, labels = _check_pair(pred_clusters, labels)
    if int(pred.min()) < 0 or int(labels.min()) < 0:
        raise ValueError("pred_clusters and labels: expected non-negative integer ids.")
    size = max(int(pred.max()), int(labels.max())) + 1
    counts = torch.bincount(pred * size + labels, minlength=size * size).reshape(size, size)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return float(counts.numpy()[rows, cols].sum() / labels.numel())


def mean_iou(
    pred_maps, label_maps, n_classes: int, *, ignore_index: int = -1
) -> tuple[float, Tensor]:
    """Mean intersection over union for segmentation, accumulated over all images.

    Parameters
    ----------
    pred_maps, label_maps : Tensor, shape (n, h, w) (any equal shapes), integer
        Pixels where ``label_maps == ignore_index`` are skipped; other labels and all predictions
        on counted pixels must lie in [0, n_classes).
    n_classes : int
    ignore_index : int, default -1

    Returns
    -------
    miou : float
        Mean over classes with a non-empty union (present in labels or predictions).
    per_class : Tensor, shape (n_classes,), float64
        IoU of each class; NaN where the union is empty.
    """
    pred, labels = _check_pair(pred_maps, label_maps, ndim=None)
    n_classes = check_int(n_classes, "n_classes", 1)
    keep = labels != ignore_index
    pred, labels = pred[keep], labels[keep]
    if labels.numel() == 0:
        raise ValueError("label_maps: every pixel equals ignore_index; nothing to score.")
    return iou_from_confusion(confusion_matrix(pred, labels, n_classes))


def iou_from_confusion(confusion) -> tuple[float, Tensor]:
    """Mean IoU from a confusion matrix (e.g. summed over a data set, one image at a time).

    Parameters
    ----------
    confusion : Tensor, shape (K, K)
        ``C[t, p]`` pixel counts, rows true class (as :func:`confusion_matrix`).

    Returns
    -------
    miou : float
        Mean over classes with a non-empty union (present in labels or predictions); NaN when
        every union is empty.
    per_class : Tensor, shape (K,), float64
        ``C[k, k] / (row_k + col_k - C[k, k])``; NaN where the union is empty.
    """
    conf = torch.as_tensor(confusion).double()
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion: expected a square (K, K) matrix, got {tuple(conf.shape)}.")
    inter = conf.diagonal()
    union = conf.sum(dim=0) + conf.sum(dim=1) - inter
    per_class = torch.full((conf.shape[0],), float("nan"), dtype=torch.float64)
    valid = union > 0
    per_class[valid] = inter[valid] / union[valid]
    miou = float(per_class[valid].mean()) if bool(valid.any()) else float("nan")
    return miou, per_class
