"""The result type shared by the Sinkhorn solvers (``core.solvers.sinkhorn``,
``core.solvers.sinkhorn_log``,
``core.solvers.sinkhorn_scaling``): its own module so that both solver modules can build it and the
public
API can import them without a cycle."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class SinkhornResult:
    """Result of :func:`core.solvers.sinkhorn.sinkhorn` (and of the solvers behind it).

    Attributes
    ----------
    plan : Tensor, shape (..., n, m)
        The transport plan; rows sum to ``a`` and columns to ``b`` (up to ``marginal_error``).
    log_u, log_v : Tensor, shape (..., n) and (..., m)
        Log scalings, ``plan = exp(-cost/eps + log_u[..., :, None] + log_v[..., None, :])``; the
        dual potentials are ``eps * log_u`` and ``eps * log_v``.
    n_iter : int
        Iterations run.
    marginal_error : float
        Worst L1 column-marginal violation over the batch (rows are exact by construction).
    converged : bool
        ``marginal_error <= tol`` (always False in fixed-iteration mode, ``tol=0``).
    method : str
        What ran: ``"scaling"``, ``"log"``, or ``"scaling+log"`` (scaling form, then the log
        loop after the scalings left the float range).
    n_absorptions : int
        Times the scaling form absorbed u, v into the kernel and re-formed it.
    """

    plan: Tensor
    log_u: Tensor
    log_v: Tensor
    n_iter: int
    marginal_error: float
    converged: bool
    method: str = "log"
    n_absorptions: int = 0
