"""Log-domain Sinkhorn: the reference path of :func:`core.solvers.sinkhorn.sinkhorn`
(``method="log"``).

Iterations on log u, log v with ``logsumexp``; the kernel is never formed (Peyre & Cuturi 2019,
Sec. 4.4). Also used for float16/bfloat16 and autograd, and by the scaling form's fallback
(``core.solvers.sinkhorn_scaling``), which finishes here from its last good iterate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.solvers.sinkhorn_result import SinkhornResult


def _log_loop(log_k, log_a, log_b, log_u, log_v, first: int, max_iter: int, tol: float):
    """Iterations ``first``..``max_iter`` from (log_u, log_v); returns them and the last index."""
    neg_inf = torch.tensor(float("-inf"), dtype=log_k.dtype, device=log_k.device)

    def safe_sub(log_w: Tensor, lse: Tensor) -> Tensor:
        # Rows/columns with zero mass have log_w = -inf and possibly lse = -inf: keep them at -inf
        # instead of producing NaN from (-inf) - (-inf). A row with mass but no reachable partner
        # (an infeasible mask) also stays empty; marginal_error then reports the violation.
        return torch.where(torch.isfinite(log_w) & torch.isfinite(lse), log_w - lse, neg_inf)

    err = float("inf")
    n_iter = first - 1
    for n_iter in range(first, max_iter + 1):
        new_log_v = safe_sub(log_b, torch.logsumexp(log_k + log_u.unsqueeze(-1), dim=-2))
        if tol > 0 and n_iter > 1:
            # Column sums before this update were b * exp(v_old - v_new): the error comes for free.
            ratio = torch.where(torch.isfinite(log_b), torch.exp(log_v - new_log_v), 1.0)
            err = float((torch.exp(log_b) * (ratio - 1).abs()).sum(-1).max().detach())
        log_v = new_log_v
        log_u = safe_sub(log_a, torch.logsumexp(log_k + log_v.unsqueeze(-2), dim=-1))
        if tol > 0 and err <= tol:
            break
    return log_u, log_v, n_iter


def _solve_log(cost, a, b, *, eps, max_iter, tol, mask):
    """The reference: logsumexp iterations on log u, log v; the kernel is never formed.

    ``cost`` (..., n, m); ``a`` (..., n) and ``b`` (..., m) are the validated marginals, each
    summing to 1 and zero on rows / columns without an allowed entry; ``mask`` (..., n, m) or None.
    """
    log_k = cost / -eps  # (..., n, m)
    if mask is not None:
        log_k = log_k.masked_fill(~mask, float("-inf"))
    log_a = torch.log(a)  # (..., n)
    log_b = torch.log(b)  # (..., m)
    log_u, log_v, n_iter = _log_loop(
        log_k, log_a, log_b, torch.zeros_like(log_a), torch.zeros_like(log_b), 1, max_iter, tol
    )
    plan, err = _log_plan(log_k, log_a, log_b, log_v)
    return SinkhornResult(plan, log_u, log_v, n_iter, err, bool(tol > 0 and err <= tol))


def _log_plan(log_k, log_a, log_b, log_v):
    """Plan a * softmax_rows(log K + log v) and its worst L1 column error."""
    # Identical to diag(u) K diag(v) in exact arithmetic, but never adds log u (~ -|C|/eps) back
    # to log K (~ +|C|/eps), which would lose every significant digit in float32 when
    # |C|/eps ~ 1e7. Rows then sum to a to rounding.
    row_mass = torch.exp(log_a).unsqueeze(-1)  # (..., n, 1); 0 on masked rows
    logits = log_k + log_v.unsqueeze(-2)  # (..., n, m)
    plan = torch.softmax(logits, dim=-1).nan_to_num(0.0) * row_mass  # NaN only on empty rows
    err = float((plan.detach().sum(-2) - torch.exp(log_b)).abs().sum(-1).max())
    return plan, err
