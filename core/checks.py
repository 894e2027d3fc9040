"""Validation helpers shared by the public functions of `core`.

Every public solver validates at its boundary and raises ``ValueError`` with a message that says
what was expected, what came, and how to fix it (STYLE.md rule 5). These helpers keep those
messages uniform; internal invariants use ``assert`` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_float_tensor(x, name: str) -> Tensor:
    """Return ``x`` as a floating tensor (float32 unless it already is float64/float16/bfloat16)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # pragma: no cover - message path
            raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}") from exc
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x


def check_matrix(x, name: str, *, ndim: int = 2, min_rows: int = 1) -> Tensor:
    """Validate a float tensor of ``ndim`` dimensions, non-empty and finite; returns it as a
    tensor."""
    x = as_float_tensor(x, name)
    if x.ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}; "
            f"reshape it to {ndim} dimensions."
        )
    if x.numel() == 0 or x.shape[0] < min_rows:
        raise ValueError(
            f"{name}: expected at least {min_rows} row(s), got shape {tuple(x.shape)}."
        )
    check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or Inf, naming how many."""
    # A sum is finite only if every entry is (a NaN or an Inf makes it NaN or Inf), and one
    # reduction is ~100x faster than torch.isfinite over every entry, which the app's solvers
    # pay on every slider move. A non-finite sum (maybe just overflow) gets the full check.
    if bool(torch.isfinite(x.sum())):
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/Inf entries; "
            "check the features upstream (a failed encode or a division by zero)."
        )


def check_positive(value: float, name: str) -> float:
    """Validate a strictly positive finite float (eps, temperature, ...)."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive number, got {value!r}.") from exc
    if not (value > 0.0) or value != value or value == float("inf"):
        raise ValueError(f"{name}: expected a positive finite number, got {value}.")
    return value


def check_range(value: float, name: str, low: float, high: float) -> float:
    """Validate ``low <= value <= high``."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a number in [{low}, {high}], got {value!r}.") from exc
    if not (low <= value <= high):
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value}.")
    return value


def check_int(value, name: str, low: int = 0) -> int:
    """Validate an integer >= ``low``."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}.")
    value = int(value)
    if value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}.")
    return value


def check_same_rows(tensors: dict[str, Tensor]) -> int:
    """All tensors must share their first dimension; returns it."""
    rows = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(rows.values())) != 1:
        listing = ", ".join(f"{n} has {r}" for n, r in rows.items())
        raise ValueError(
            f"expected the same number of samples (rows) in every input, got {listing}; "
            "pass features of the same images in the same order."
        )
    return next(iter(rows.values()))


def check_classes(n_classes: int, n_samples: int | None = None, name: str = "classes") -> None:
    """K must be >= 2 (one class is no classification) and, for transductive methods, <= N."""
    if n_classes < 2:
        raise ValueError(
            f"{name}: expected at least 2 classes, got {n_classes}; add the classes to tell apart."
        )
    if n_samples is not None and n_classes > n_samples:
        raise ValueError(
            f"{name}: a transductive method needs at least as many images as classes, got "
            f"{n_samples} images for {n_classes} classes; add images or remove classes."
        )


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """L2-normalise along ``dim``; zero vectors stay zero instead of becoming NaN."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
