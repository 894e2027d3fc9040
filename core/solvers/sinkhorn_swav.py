"""Probability-domain Sinkhorn with SwAV's early stop: the OT step of the official recipes of
OTFusion (``core.methods.otfusion_official``) and GPUA (its UCM, ``core.methods.gpua.ucm``).

For scores S (n, m) to *maximise* it approximates the entropic plan

    max_Q  <Q, S> + eps H(Q)   over Q >= 0 with rows 1/n and columns 1/m

by the iteration of SwAV (Caron et al., NeurIPS 2020, ``distributed_sinkhorn``) as the authors of
OTFusion's CVPR 2026 revision (eps 0.01, at most 15 iterations) and of GPUA's public code (eps
0.05, at most 50) run it:

    Q <- exp((S - max_k S_ik) / eps);   Q <- Q / sum(Q)                     (mass 1)
    repeat at most ``max_iter`` times:
        Q <- Q / (m * column sums)          every class gets mass 1/m
        Q <- Q / (n * row sums)             every sample gets mass 1/n
        stop when max_ik |Q_t - Q_{t-1}| < tol

The test is on the mass-1 plan, whose entries are at most 1/n: the same ``tol`` means a tighter
stop for small n than for large n (at n = 50,000 an entry is at most 2e-5 and 1e-5 is half of it).

Which Sinkhorn to choose: :func:`core.solvers.sinkhorn.sinkhorn` for everything except
reproducing code written this way; it is log-domain stable, takes any marginals, batches and
masks, and stops on the marginal error. This one exists because its early stop and its
probability-domain kernel are part of what the official recipes compute.

Numerics. The kernel is formed once, like the code it reproduces: an entry more than ~87 eps
below its row's maximum (float32; ~708 eps in float64) underflows to zero, which for eps = 0.01 is
a score 0.87 below the sample's best class. Each step divides elementwise by the sums (as SwAV
does), so a column whose sum is subnormal is rescaled without overflow. A column whose every entry
underflowed would divide 0 by 0 (a NaN plan in the original code): here it keeps zero mass,
``log_v`` is -inf there and ``marginal_error`` shows the violation (GPUA's UCM refuses such a
plan, since a class with no mass gets no pseudo-label).

Stopping test without a copy of Q: iteration t divides by r_i = n * row sum and c_k = m * column
sum, so Q_{t-1} = Q_t r_i c_k and |Q_t - Q_{t-1}| = Q_t |1 - r_i c_k|. Since Q_t <= 1/n this is at
most max(|1 - r_max c_max|, |1 - r_min c_min|) / n, read off two vectors; only when that bound
does not already settle the test are the entries checked, in blocks of 4 MB, up to the first
one that changed by ``tol`` or more (a whole pass only in the iteration that stops).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.checks import as_float_tensor, check_finite, check_int, check_positive
from core.solvers.sinkhorn_result import SinkhornResult

__all__ = ["sinkhorn_swav", "solve_swav"]

LOG2E = 1.0 / math.log(2.0)
# Entries per block of the exact stopping test (4 MB in float32). Not much smaller: each block
# costs four tensor operations, and thousands of small ones are slow on a busy machine.
_CHUNK = 1 << 20


def _changed_less_than(q: Tensor, r: Tensor, c: Tensor, tol: float) -> bool:
    """Whether max_ik q_ik |1 - r_i c_k| (this iteration's largest change) is below ``tol``.

    Decided by the bound of the module docstring when it can be; otherwise exactly, block by
    block, stopping at the first entry that changed by ``tol`` or more.
    """
    n = q.shape[0]
    products = (float(r.max()) * float(c.max()), float(r.min()) * float(c.min()))
    if max(abs(1.0 - p) for p in products) / n < tol:
        return True
    rows = max(1, _CHUNK // q.shape[1])
    for start in range(0, n, rows):
        block = q[start:start + rows]  # (rows, m)
        change = block.mul(r[start:start + rows, None]).mul_(c).sub_(block)  # Q_{t-1} - Q_t
        low, high = torch.aminmax(change)
        if max(-float(low), float(high)) >= tol:
            return False
    return True


def solve_swav(scores: Tensor, *, eps: float, max_iter: int, tol: float,
               out: Tensor | None = None) -> SinkhornResult:
    """The SwAV iteration on validated inputs (see the module docstring).

    Parameters
    ----------
    scores : Tensor, shape (n, m)
        Finite scores to maximise, float32 or float64. Left intact unless ``out`` is ``scores``.
    eps, max_iter, tol
        As :func:`sinkhorn_swav`.
    out : Tensor, shape (n, m), optional
        Where to build the plan (may be ``scores`` itself: the solvers' callers reuse one buffer).

    Returns
    -------
    SinkhornResult
        ``method="swav"``; ``plan`` is ``out`` when given.
    """
    n, m = scores.shape
    row_max = scores.amax(1, keepdim=True)  # (n, 1)
    q = torch.sub(scores, row_max, out=out) if out is not None else scores - row_max
    q.mul_(LOG2E / eps).exp2_()  # exp((S - max) / eps), entries in [0, 1], a 1 in every row
    total = q.sum()
    q.div_(total)
    log_u = (row_max.squeeze(1) / -eps).sub_(float(torch.log(total)))  # (n,)
    log_v = torch.zeros(m, dtype=q.dtype, device=q.device)
    empty = None
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        c = q.sum(0).mul_(m)  # (m,): m * column sums
        if empty is None:
            empty = c == 0  # an all-underflowed column stays empty: it cannot gain mass
        c = c.masked_fill_(empty, 1.0)
        q.div_(c)
        r = q.sum(1).mul_(n)  # (n,): n * row sums; > 0, every row keeps its maximum
        q.div_(r[:, None])
        log_v.sub_(torch.log(c))
        log_u.sub_(torch.log(r))
        if tol > 0 and _changed_less_than(q, r, c, tol):
            converged = True
            break
    log_v.masked_fill_(empty, float("-inf"))
    marginal_error = float((q.sum(0) - 1.0 / m).abs().sum())
    return SinkhornResult(plan=q, log_u=log_u, log_v=log_v, n_iter=n_iter,
                          marginal_error=marginal_error, converged=converged, method="swav")


def sinkhorn_swav(scores, *, eps: float, max_iter: int = 15, tol: float = 1e-5) -> SinkhornResult:
    """Entropic OT in SwAV's probability-domain form, with its early stop.

    Parameters
    ----------
    scores : Tensor, shape (n, m)
        Scores to maximise (the OTFusion fusion S); any finite values. float16 / bfloat16 are
        computed in float32.
    eps : float
        Entropic regularisation (> 0); the kernel is ``exp((S - row max) / eps)``.
    max_iter : int, default 15
        Maximum number of (column, row) normalisation pairs.
    tol : float, default 1e-5
        Stop after the first iteration whose largest entry change of the mass-1 plan is below
        ``tol``; 0 runs exactly ``max_iter`` iterations.

    Returns
    -------
    SinkhornResult
        ``plan`` (n, m) of mass 1 with rows exactly 1/n (up to rounding) and columns 1/m up to
        ``marginal_error`` (L1); ``log_u``, ``log_v`` with ``plan = exp(S/eps + log_u + log_v)``
        wherever the plan is non-zero (``log_v = -inf`` on a column that underflowed entirely);
        ``converged``: the early stop fired; ``method = "swav"``.
    """
    scores = as_float_tensor(scores, "scores")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(
            f"scores: expected a 2-D (n, m) tensor with n, m >= 1, got shape "
            f"{tuple(scores.shape)}; batch problems with core.solvers.sinkhorn.sinkhorn."
        )
    check_finite(scores, "scores")
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.to(torch.float32)
    eps = check_positive(eps, "eps")
    max_iter = check_int(max_iter, "max_iter", low=1)
    tol = float(tol)
    if not tol >= 0 or math.isinf(tol):
        raise ValueError(f"tol: expected a finite number >= 0 (0 = run max_iter), got {tol}.")
    return solve_swav(scores, eps=eps, max_iter=max_iter, tol=tol)
