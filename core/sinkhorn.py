"""Log-domain entropic optimal transport (Sinkhorn), batched over leading dimensions, with masks.

Solves, for every problem in the batch,

    min_Q  <Q, C> - eps * H(Q)   s.t.  Q 1_m = a,  Q^T 1_n = b,   H(Q) = -sum Q (log Q - 1)

whose solution is Q = diag(u) K diag(v) with K = exp(-C / eps). With eps = 0.01 and scores in
[0, 2] the kernel holds exp(200), which overflows float32, so the iterations run on log u and
log v with ``logsumexp`` and the kernel is never formed (Cuturi 2013; Peyre & Cuturi 2019, Sec. 4.4).
To *maximise* a score S (OTFusion, GPUA, LaZSL) pass ``cost = -S``.

Which mode to use:
- ``tol=0`` runs exactly ``max_iter`` iterations (OTFusion uses 3, as SwAV does).
- ``tol>0`` stops when the column marginal error (L1, worst problem in the batch) falls below it.

Each iteration scales columns first and rows last, so on return every row sum equals ``a``
exactly (up to rounding); ``marginal_error`` reports the remaining column violation. This is the
order OTFusion needs: ``n * plan`` is then a per-sample distribution whose rows sum to 1.

Masks: ``mask`` (..., n, m) bool marks allowed entries. A row (column) with no allowed entry gets
zero mass and the remaining weights of ``a`` (``b``) are renormalised, so padded attributes or
dropped crops simply vanish from the problem. Zero weights in ``a`` or ``b`` behave the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import as_float_tensor, check_finite, check_int, check_positive


@dataclass(frozen=True)
class SinkhornResult:
    """Result of :func:`sinkhorn`.

    Attributes
    ----------
    plan : Tensor, shape (..., n, m)
        The transport plan; rows sum to ``a`` and columns to ``b`` (up to ``marginal_error``).
    log_u, log_v : Tensor, shape (..., n) and (..., m)
        Log scalings; the dual potentials are ``eps * log_u`` and ``eps * log_v``.
    n_iter : int
        Iterations run.
    marginal_error : float
        Worst L1 column-marginal violation over the batch (rows are exact by construction).
    converged : bool
        ``marginal_error <= tol`` (always False in fixed-iteration mode, ``tol=0``).
    """

    plan: Tensor
    log_u: Tensor
    log_v: Tensor
    n_iter: int
    marginal_error: float
    converged: bool


def _log_weights(w: Tensor | None, valid: Tensor, name: str, like: Tensor) -> Tensor:
    """Log of the marginal restricted to ``valid`` and renormalised; -inf where the weight is 0."""
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
            raise ValueError(f"{name}: expected non-negative weights, got a minimum of {float(w.min())}.")
        w = torch.broadcast_to(w, valid.shape) * valid
    total = w.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError(
            f"{name}: every problem needs positive total mass on its allowed "
            f"{'rows' if name == 'a' else 'columns'}, got a problem with none; check the mask and weights."
        )
    return torch.log(w / total)


def sinkhorn(
    cost,
    a=None,
    b=None,
    *,
    eps: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    mask=None,
) -> SinkhornResult:
    """Entropic OT between ``a`` and ``b`` for ``cost``, in the log domain.

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

    Returns
    -------
    SinkhornResult
    """
    cost = as_float_tensor(cost, "cost")
    if cost.ndim < 2 or cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ValueError(
            f"cost: expected shape (..., n, m) with n, m >= 1, got {tuple(cost.shape)}."
        )
    check_finite(cost, "cost")
    eps = check_positive(eps, "eps")
    max_iter = check_int(max_iter, "max_iter", low=1)
    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0 (0 = fixed iterations), got {tol}.")

    if mask is None:
        row_valid = torch.ones(cost.shape[:-1], dtype=torch.bool, device=cost.device)
        col_valid = torch.ones(cost.shape[:-2] + cost.shape[-1:], dtype=torch.bool, device=cost.device)
        log_k = cost / -eps  # (..., n, m)
    else:
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
        row_valid = mask.any(-1)
        col_valid = mask.any(-2)
        log_k = (cost / -eps).masked_fill(~mask, float("-inf"))

    log_a = _log_weights(a, row_valid, "a", cost)  # (..., n)
    log_b = _log_weights(b, col_valid, "b", cost)  # (..., m)
    neg_inf = torch.tensor(float("-inf"), dtype=cost.dtype, device=cost.device)

    def safe_sub(log_w: Tensor, lse: Tensor) -> Tensor:
        # Rows/columns with zero mass have log_w = -inf and possibly lse = -inf: keep them at -inf
        # instead of producing NaN from (-inf) - (-inf). A row with mass but no reachable partner
        # (an infeasible mask) also stays empty; marginal_error then reports the violation.
        return torch.where(torch.isfinite(log_w) & torch.isfinite(lse), log_w - lse, neg_inf)

    log_u = torch.zeros_like(log_a)
    log_v = torch.zeros_like(log_b)
    err = float("inf")
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        new_log_v = safe_sub(log_b, torch.logsumexp(log_k + log_u.unsqueeze(-1), dim=-2))
        if tol > 0 and n_iter > 1:
            # Column sums before this update were b * exp(v_old - v_new): the error comes for free.
            ratio = torch.where(torch.isfinite(log_b), torch.exp(log_v - new_log_v), 1.0)
            err = float((torch.exp(log_b) * (ratio - 1).abs()).sum(-1).max())
        log_v = new_log_v
        log_u = safe_sub(log_a, torch.logsumexp(log_k + log_v.unsqueeze(-2), dim=-1))
        if tol > 0 and err <= tol:
            break

    # plan = diag(u) K diag(v) written as a * softmax_rows(log K + log v): identical in exact
    # arithmetic, but never adds log u (~ -|C|/eps) back to log K (~ +|C|/eps), which would lose
    # every significant digit in float32 when |C|/eps ~ 1e7. Rows then sum to a to rounding.
    row_mass = torch.exp(log_a).unsqueeze(-1)  # (..., n, 1); 0 on masked rows
    logits = log_k + log_v.unsqueeze(-2)  # (..., n, m)
    plan = torch.softmax(logits, dim=-1).nan_to_num_(0.0) * row_mass  # NaN only on empty rows
    err = float((plan.sum(-2) - torch.exp(log_b)).abs().sum(-1).max())
    return SinkhornResult(
        plan=plan,
        log_u=log_u,
        log_v=log_v,
        n_iter=n_iter,
        marginal_error=err,
        converged=bool(tol > 0 and err <= tol),
    )
