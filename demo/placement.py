"""Greedy placement of text labels that must not overlap: the class names beside the text stars
of the embedding maps (``demo.maps``) and the attribute labels on LaZSL crop boxes
(``demo.overlays.crop_view``). Pure numpy, no drawing."""

from __future__ import annotations

import numpy as np


def _hits(box: np.ndarray, others: np.ndarray, gap: float) -> bool:
    """Whether ``box`` (4,) comes within ``gap`` of any of ``others`` (P, 4) (x0, y0, x1, y1)."""
    if others.shape[0] == 0:
        return False
    return bool(((box[0] < others[:, 2] + gap) & (others[:, 0] < box[2] + gap)
                 & (box[1] < others[:, 3] + gap) & (others[:, 1] < box[3] + gap)).any())


def place_labels(candidates, *, obstacles=None, bounds=None, gap: float = 2.0) -> list[int | None]:
    """For each label in turn, the first of its candidate boxes that is clear of the labels placed
    before it and of every obstacle, and lies inside ``bounds``.

    Parameters
    ----------
    candidates : array, shape (M, C, 4)
        Per label, C boxes ``(x0, y0, x1, y1)`` in order of preference (same units throughout:
        pixels, in any orientation of y).
    obstacles : array, shape (P, 4), optional
        Boxes no label may cover (markers, already placed labels).
    bounds : (x0, y0, x1, y1), optional
        Every chosen box must lie inside.
    gap : float
        Minimal clearance between a label and anything else.

    Returns
    -------
    list of length M: the index of the chosen candidate, or None where all of them collide
    (the caller then shortens the label or leaves it to the hover).
    """
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.ndim != 3 or cand.shape[2] != 4:
        raise ValueError(f"candidates: expected shape (M, C, 4) boxes, got {cand.shape}.")
    placed = np.asarray(obstacles if obstacles is not None else np.zeros((0, 4)),
                        dtype=np.float64).reshape(-1, 4)
    if bounds is not None:
        x0, y0, x1, y1 = (float(v) for v in bounds)
        inside = ((cand[..., 0] >= x0) & (cand[..., 1] >= y0) & (cand[..., 2] <= x1)
                  & (cand[..., 3] <= y1))  # (M, C)
    else:
        inside = np.ones(cand.shape[:2], dtype=bool)
    chosen: list[int | None] = []
    for m in range(cand.shape[0]):  # sequential by nature: each label sees those placed before
        pick = next((c for c in range(cand.shape[1])
                     if inside[m, c] and not _hits(cand[m, c], placed, gap)), None)
        chosen.append(pick)
        if pick is not None:
            placed = np.vstack([placed, cand[m, pick][None]])
    return chosen
