"""Entropic optimal transport (Sinkhorn), batched over leading dimensions, with masks.

Solves, for every problem in the batch,

    min_Q  <Q, C> - eps * H(Q)   s.t.  Q 1_m = a,  Q^T 1_n = b,   H(Q) = -sum Q (log Q - 1)

whose solution is Q = diag(u) K diag(v) with K = exp(-C / eps) (Cuturi 2013). To *maximise* a
score S (OTFusion, GPUA, LaZSL) pass ``cost = -S``. With eps = 0.01 and scores in [0, 2] the
kernel holds exp(200), which overflows float32, so both solvers are log-domain stable:

- ``method="log"``, the reference (``core.solvers.sinkhorn_log``): iterations on log u, log v with
  ``logsumexp``; the kernel is never formed. Also used for float16/bfloat16 and autograd.
- ``method="auto"`` (default), the log-stabilised scaling form (``core.solvers.sinkhorn_scaling``),
  several times faster on CPU (figures: benchmarks/README.md), same iterates: an offset kernel,
  absorption of large scalings, and a log-domain fallback. ``result.method`` and
  ``result.n_absorptions`` say what happened.

This module validates the inputs, computes the marginals and dispatches to one of the two.

Modes: ``tol=0`` runs exactly ``max_iter`` iterations (OTFusion uses 3, as SwAV does);
``tol>0`` stops when the column marginal error (L1, worst problem in the batch) falls below it.
The error of iterate t-1 comes for free during iteration t, so the solver stops at the first
iteration t whose predecessor met ``tol``; ``n_iter`` counts the (column, row) scaling pairs run,
that last one included; it does not depend on the device.

Each iteration scales columns first and rows last, so on return every row sum equals ``a``
exactly (up to rounding): the plan is a * (K diag(v) normalised per row). ``marginal_error``
reports the remaining column violation. This is the order OTFusion needs: ``n * plan`` is then a
per-sample distribution whose rows sum to 1.

Masks: ``mask`` (..., n, m) bool marks allowed entries (exact zeros in the plan). A row (column)
with no allowed entry gets zero mass and the remaining weights of ``a`` (``b``) are
renormalised, so padded attributes or dropped crops simply vanish from the problem. Zero weights
in ``a`` or ``b`` behave the same way after the first column update (where, as in the log loop,
every allowed row starts from log u = 0).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from core.checks import as_float_tensor, check_finite, check_int, check_positive
from core.solvers.sinkhorn_log import _solve_log
from core.solvers.sinkhorn_result import SinkhornResult
from core.solvers.sinkhorn_scaling import _LIMITS, _col, _prepare_kernel, solve_scaling

METHODS = ("auto", "log")
LOG2E = 1.0 / math.log(2.0)


def _weights(w: Tensor | None, valid: Tensor, name: str, like: Tensor) -> Tensor:
    """The marginal restricted to ``valid`` and renormalised to sum to 1 (0 where excluded)."""
    if w is None:
        w = valid.to(like.dtype)
    else:
        w = as_float_tensor(w, name).to(device=like.device, dtype=like.dtype)
        if w.shape[-1] != valid.shape[-1]:
            raise ValueError(
                f"{name}: expected {valid.shape[-1]} weights (matching the cost), got shape "
                f"{tuple(w.shape)}; pass one weight per {'row' if name == 'a' else 'column'}."
            )
        check_finite(w, name)
        if bool((w < 0).any()):
            raise ValueError(
                f"{name}: expected non-negative weights, got a minimum of {float(w.min())}."
            )
        w = torch.broadcast_to(w, valid.shape) * valid
    total = w.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError(
            f"{name}: every problem needs positive total mass on its allowed "
            f"{'rows' if name == 'a' else 'columns'}, got a problem with none; check the mask "
            "and weights."
        )
    return w / total


def _all_valid(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column validity, (..., n) and (..., m), where no mask excludes anything."""
    row_valid = torch.ones(cost.shape[:-1], dtype=torch.bool, device=cost.device)
    col_valid = torch.ones(cost.shape[:-2] + cost.shape[-1:], dtype=torch.bool, device=cost.device)
    return row_valid, col_valid


def sinkhorn(
    cost,
    a=None,
    b=None,
    *,
    eps: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    mask=None,
    method: str = "auto",
) -> SinkhornResult:
    """Entropic OT between ``a`` and ``b`` for ``cost``, log-domain stable.

    Parameters
    ----------
    cost : Tensor, shape (..., n, m)
        Cost matrices; leading dimensions are independent problems solved in one call.
    a : Tensor, shape (..., n) or (n,), optional
        Row marginal; uniform over allowed rows by default. Renormalised to sum to 1.
    b : Tensor, shape (..., m) or (m,), optional
        Column marginal; uniform over allowed columns by default. Renormalised to sum to 1.
    eps : float
        Entropic regularisation (> 0). Smaller is closer to unregularised OT and slower to converge.
    max_iter : int
        Maximum number of (column, row) scaling pairs.
    tol : float
        Stop when the worst L1 column-marginal error is <= tol; ``0`` runs exactly ``max_iter``.
    mask : Tensor of bool, shape broadcastable to (..., n, m), optional
        Allowed entries. Rows or columns without any allowed entry receive zero mass.
    method : {"auto", "log"}
        ``"auto"``: stabilised scaling form with absorption and a log-domain fallback (fast);
        ``"log"``: the logsumexp loop (the reference; several times slower on CPU).

    Returns
    -------
    SinkhornResult
    """
    cost = as_float_tensor(cost, "cost")
    if cost.ndim < 2 or cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ValueError(
            f"cost: expected shape (..., n, m) with n, m >= 1, got {tuple(cost.shape)}."
        )
    if not bool(torch.isfinite(cost.sum())):  # one read pass; the full check allocates 3 masks
        check_finite(cost, "cost")
    eps = check_positive(eps, "eps")
    max_iter = check_int(max_iter, "max_iter", low=1)
    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0 (0 = fixed iterations), got {tol}.")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}.")

    if mask is not None:
        mask = torch.as_tensor(mask, device=cost.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor, got dtype {mask.dtype}.")
        try:
            mask = torch.broadcast_to(mask, cost.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"mask: expected a shape broadcastable to the cost {tuple(cost.shape)}, "
                f"got {tuple(mask.shape)}."
            ) from exc

    differentiable = cost.requires_grad and torch.is_grad_enabled()  # scaling form is in place
    if method == "log" or cost.dtype not in _LIMITS or differentiable:
        row_valid, col_valid = _all_valid(cost) if mask is None else (mask.any(-1), mask.any(-2))
        a, b = _weights(a, row_valid, "a", cost), _weights(b, col_valid, "b", cost)
        return _solve_log(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, mask=mask)
    n, m = cost.shape[-2:]
    batch = cost.shape[:-2]
    cost3 = cost.reshape(-1, n, m)
    mask3 = None if mask is None else mask.reshape(-1, n, m)
    kernel = _prepare_kernel(cost3, -LOG2E / eps, mask3, None)
    if mask is None:
        row_valid, col_valid = _all_valid(cost)
    else:  # allowed entries of the offset kernel are > 0, masked ones exactly 0
        z = kernel[0]
        row_valid = (z.view(-1, m) @ z.new_ones(m)).view(cost.shape[:-1]) > 0
        col_valid = _col(z, z.new_ones(z.shape[:2])).view(batch + (m,)) > 0
    a = _weights(a, row_valid, "a", cost).reshape(-1, n)
    b = _weights(b, col_valid, "b", cost).reshape(-1, m)
    res = solve_scaling(
        cost3, -LOG2E / eps, a, b, mask=mask3, max_iter=max_iter, tol=tol, kernel=kernel
    )
    return dataclasses.replace(
        res,
        plan=res.plan.view(cost.shape),
        log_u=res.log_u.view(*batch, n),
        log_v=res.log_v.view(*batch, m),
    )

