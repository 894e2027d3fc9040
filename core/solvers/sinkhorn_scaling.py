"""Log-stabilised scaling-form Sinkhorn, the default path of :func:`core.solvers.sinkhorn.sinkhorn`.

The scaling form (Schmitzer 2019; Chizat et al. 2018) is several times faster than the log loop on
CPU (figures, and those of the CPU primitives chosen below: benchmarks/README.md, "Sinkhorn"),
with the same iterates: log K is offset by its column maxima, then its row maxima (batched
problems whose log2-kernel spans <= 20 bits, 100 in float64: one offset each) and exponentiated
once (``exp2`` with log2(e) folded in; torch's CPU ``exp`` is slower), so entries are <= 1 and
every row and column holds a 1. Each iteration is two batched matrix-vector products,
v = b / (K^T u), u = a / (K v). Scalings past 2^30 (float32; 2^150 in float64) are absorbed into
the offsets and K re-formed; a non-finite or past-2^60 (2^300) iterate is discarded and the last
good one absorbed; if even that fails right after a (re)formation, the remaining iterations run in
the log domain from there (``core.solvers.sinkhorn_log``). ``result.method`` and
``result.n_absorptions`` say what happened.

Stopping checks: on CPU they are read every iteration (no sync cost); on other devices every
``_CHECK_EVERY_ACCEL`` iterations, rewinding to the first iteration that should have stopped or
absorbed, so ``n_iter`` and the plan do not depend on the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.solvers.sinkhorn_log import _log_loop, _log_plan
from core.solvers.sinkhorn_result import SinkhornResult

LN2 = math.log(2.0)
# Scalings above 2^soft are absorbed into the kernel; above 2^hard (or non-finite) the iterate is
# discarded. While u, v <= 2^hard, the sums K v >= a 2^-hard and K^T u >= b 2^-hard stay far
# above float underflow (2^-126; 2^-1022), and sums of entries <= 1 times 2^hard cannot overflow.
_LIMITS = {torch.float32: (2.0**30, 2.0**60), torch.float64: (2.0**150, 2.0**300)}
_CHECK_EVERY_ACCEL = 16  # iterations between host syncs off the CPU (a CPU "sync" is free)
# Batched problems whose log2-kernel spans at most this many bits skip the per-row/column offsets.
_SPAN_BITS = {torch.float32: 20.0, torch.float64: 100.0}


def _use_transposed(batch: int, device: torch.device) -> bool:
    # bmm(K, v) with a column vector is slower than a row vector times a matrix for batches of
    # small CPU matrices (MKL); a transposed copy of K makes both products the fast kind.
    return batch > 1 and device.type == "cpu"


def _col(z: Tensor, u: Tensor) -> Tensor:
    return torch.bmm(u.unsqueeze(1), z).squeeze(1)  # K^T u, (B, m)


def _row(z: Tensor, zt: Tensor | None, v: Tensor) -> Tensor:
    if zt is not None:
        return torch.bmm(v.unsqueeze(1), zt).squeeze(1)  # K v, (B, n)
    return torch.bmm(z, v.unsqueeze(2)).squeeze(2)


def _prepare_kernel(cost, scale, mask, out):
    """(Z, Z^T or None, f, g): the offset kernel and, where it pays, a transposed copy."""
    bsz, n, m = cost.shape
    zt = cost.new_empty(bsz, m, n) if _use_transposed(bsz, cost.device) else None
    z, f, g = _stabilised_kernel(cost, scale, mask, out, scratch=zt)
    if zt is not None:
        zt.copy_(z.transpose(1, 2))
    return z, zt, f, g


def _stabilised_kernel(cost, scale, mask, out, scratch=None):
    """Kernel 2^(scale * cost + f_i + g_j), 0 where masked, offsets keeping it in range.

    Returns (Z, f, g), shapes (B, n, m), (B, n), (B, m). Batched problems whose log2-kernel spans
    at most ``_SPAN_BITS`` get one offset per problem (on g): entries lie in [2^-span, 1].
    Otherwise g is minus the column maxima and f minus the row maxima of what remains, over
    allowed entries: every entry <= 1 and a 1 in every non-empty row and column (offset 0 on
    empty ones). ``scratch`` (B * n * m entries) holds the 0/1 mask as floats, if given:
    multiplying by a bool mask would allocate that copy (fresh pages cost as much as the work).
    """
    bsz, n, m = cost.shape
    if bsz > 1:
        flat = cost.reshape(bsz, -1)
        top, bottom = flat.amax(1), flat.amin(1)  # (B,): flat reductions are cheap, aminmax not
        if float((top - bottom).amax()) * abs(scale) <= _SPAN_BITS[cost.dtype]:
            g = (bottom if scale < 0 else top).mul_(-scale)  # (B,)
            z = torch.add(g[:, None, None], cost, alpha=scale, out=out).exp2_()
            if mask is not None:  # a multiply: cheaper than masked_fill_ on CPU
                z.mul_(mask if scratch is None else scratch.view(z.shape).copy_(mask))
            return z, cost.new_zeros(bsz, n), g[:, None].expand(bsz, m).contiguous()
    if mask is None:  # column maxima straight from the cost: one pass fewer
        g = (cost.amin(1) if scale < 0 else cost.amax(1)).mul_(-scale)  # (B, m)
        z = torch.add(g.unsqueeze(1), cost, alpha=scale, out=out)
    else:
        z = torch.mul(cost, scale, out=out).masked_fill_(~mask, float("-inf"))
        g = z.amax(1).neg_()
        g = torch.where(torch.isfinite(g), g, 0.0)  # empty columns
        z.add_(g.unsqueeze(1))
    f = z.amax(2).neg_()  # (B, n)
    if mask is not None:
        f = torch.where(torch.isfinite(f), f, 0.0)
    return z.add_(f.unsqueeze(2)).exp2_(), f, g


def _reformed_kernel(cost, scale, f, g, mask, out):
    """exp2(scale * cost + f_i + g_j) into ``out``, 0 where masked (f, g may hold -inf)."""
    z = torch.add(g.unsqueeze(1), cost, alpha=scale, out=out).add_(f.unsqueeze(2))
    if mask is not None:  # before exp2: masked entries may hold any cost and overflow
        z.masked_fill_(~mask, float("-inf"))
    return z.exp2_()


def _iterate(z, zt, a, b, guards, u, v, first, max_iter, tol, limits, check_every):
    """Scaling iterations from the iterate (first - 1, u, v) until a stop, a limit, or max_iter.

    Returns (status, t, u, v) with (t, u, v) the iterate to continue from: "done" (max_iter),
    "converged", "absorb" (in range but past the soft limit) or "bad" (the next iterate
    was non-finite or past the hard limit; t is the last good one). Stats are read back every
    ``check_every`` iterations and processed in order, so the outcome does not depend on it.
    ``guards`` (1 where a, b are 0, else None) keep 0 / 0 out of rows/columns without mass.
    """
    soft, hard = limits
    guard_a, guard_b = guards
    neg_b, ones = b.neg(), b.new_ones(b.shape[1])
    good = (first - 1, u, v)
    pending = []
    zero = a.new_zeros(())
    for t in range(first, max_iter + 1):
        s = _col(z, u)  # (B, m): column sums of the current plan, divided by v
        v_new = b / (s if guard_b is None else s + guard_b)
        err = zero
        if tol > 0 and t > 1:  # L1 column error of iterate t - 1: sum_j |v_j s_j - b_j|
            err = (torch.addcmul(neg_b, v, s).abs_() @ ones).amax()  # (sums over 8 are slow)
        r = _row(z, zt, v_new)  # (B, n)
        u, v = a / (r if guard_a is None else r.add_(guard_a)), v_new
        pending.append((t, u, v, torch.stack((err, u.amax(), v.amax()))))
        if len(pending) < check_every and t < max_iter:
            continue
        stats = torch.stack([p[3] for p in pending]) if len(pending) > 1 else pending[0][3][None]
        for (tt, uu, vv, _), (e, u_max, v_max) in zip(pending, stats.tolist()):
            if not (u_max <= hard and v_max <= hard):  # also catches NaN
                return "bad", *good
            good = (tt, uu, vv)
            if tol > 0 and tt > 1 and e <= tol:
                return "converged", *good
            if (u_max > soft or v_max > soft) and tt < max_iter:
                return "absorb", *good
        pending.clear()
    return "done", *good


def solve_scaling(
    cost: Tensor,
    scale: float,
    a: Tensor,
    b: Tensor,
    *,
    mask: Tensor | None,
    max_iter: int,
    tol: float,
    out: Tensor | None = None,
    kernel: tuple | None = None,
    check_every: int | None = None,
) -> SinkhornResult:
    """Sinkhorn in the scaling form on the kernel 2^(scale * cost), with absorption and fallback.

    Shared by :func:`sinkhorn` (scale = -log2(e)/eps) and OTFusion (cost = S log2(e)/eps, scale 1).

    Parameters
    ----------
    cost : Tensor, shape (B, n, m)
    a, b : Tensor, shapes (B, n), (B, m)
        Marginals, each summing to 1, zero on excluded rows / columns (rows / columns without
        an allowed entry must have zero weight).
    mask : Tensor of bool, shape (B, n, m), or None
        Allowed entries (the others are exact zeros of the kernel).
    out : Tensor, shape (B, n, m), optional
        Buffer for the kernel and then the plan (saves a page-faulting allocation).
    kernel : (Z, Z^T or None, f, g), optional
        ``_prepare_kernel(cost, scale, mask, out)`` if already computed.
    check_every : int, optional
        Iterations between host syncs (1 on CPU by default).

    Returns
    -------
    SinkhornResult with (B, ...) shapes; ``plan`` is ``out`` when given.
    """
    limits = _LIMITS[cost.dtype]
    if check_every is None:
        check_every = 1 if cost.device.type == "cpu" else _CHECK_EVERY_ACCEL
    z, zt, f, g = _prepare_kernel(cost, scale, mask, out) if kernel is None else kernel
    guards = tuple((w == 0).to(w.dtype) if float(w.amin()) == 0 else None for w in (a, b))
    u = torch.exp2(-f)  # log u = 0 as in the log loop, in the units of the offset kernel
    t, v, reformed_at, n_absorb = 0, None, 0, 0
    while True:
        status, t, u, v = _iterate(z, zt, a, b, guards, u, v, t + 1, max_iter, tol, limits,
                                   check_every)
        if status in ("done", "converged"):
            break
        lost = bool(((u == 0) & (a > 0)).any() or ((v == 0) & (b > 0)).any()) if t > 0 else True
        if (status == "bad" and t == reformed_at) or lost:
            state = (f, g, u, v, t)
            return _fallback(cost, scale, a, b, mask, state, max_iter, tol, z, out, n_absorb)
        # Absorb: K <- diag(u) K diag(v) re-formed from the cost, u = v = 1; rows and columns
        # without mass get offset -inf (a zero kernel row / column; the guards handle them).
        f, g = f + torch.log2(u), g + torch.log2(v)
        z = _reformed_kernel(cost, scale, f, g, mask, z)
        if zt is not None:
            zt.copy_(z.transpose(1, 2))
        u, v = (u > 0).to(z.dtype), (v > 0).to(z.dtype)
        reformed_at, n_absorb = t, n_absorb + 1

    err = float((torch.addcmul(-b, v, _col(z, u)).abs_() @ b.new_ones(b.shape[1])).amax())
    plan = z.mul_(v.unsqueeze(1)).mul_(u.unsqueeze(2))  # u = a / (K v): rows sum to a
    return SinkhornResult(
        plan=plan,
        log_u=f * LN2 + _log(u, guards[0]),
        log_v=g * LN2 + _log(v, guards[1]),
        n_iter=t,
        marginal_error=err,
        converged=bool(tol > 0 and err <= tol),
        method="scaling",
        n_absorptions=n_absorb,
    )


def _log(x: Tensor, guard: Tensor | None) -> Tensor:
    """log x, -inf where x = 0 (only where ``guard`` is 1): CPU log(0) is slower than log(1)."""
    if guard is None:
        return torch.log(x)
    return torch.log(x + guard).masked_fill_(guard > 0, float("-inf"))


def _fallback(cost, scale, a, b, mask, state, max_iter, tol, buf, out, n_absorb):
    """Finish in the log domain from the scaling iterate t (t = 0: from the start)."""
    f, g, u, v, t = state
    log_k = torch.mul(cost, scale * LN2, out=buf)  # the kernel buffer is free now
    if mask is not None:
        log_k.masked_fill_(~mask, float("-inf"))
    log_a, log_b = torch.log(a), torch.log(b)
    if t == 0:
        log_u, log_v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    else:
        log_u, log_v = f * LN2 + torch.log(u), g * LN2 + torch.log(v)
    log_u, log_v, n_iter = _log_loop(log_k, log_a, log_b, log_u, log_v, t + 1, max_iter, tol)
    plan, err = _log_plan(log_k, log_a, log_b, log_v)
    if out is not None:
        plan = out.copy_(plan)
    return SinkhornResult(
        plan, log_u, log_v, n_iter, err, bool(tol > 0 and err <= tol),
        method="scaling+log" if t > 0 else "log", n_absorptions=n_absorb,
    )
