"""The Dynamics tab: OTFusion's convergence and the lambda x epsilon sensitivity sweep, both with
the settings of the session record."""

from __future__ import annotations

from typing import Any, NamedTuple

from demo import plots
from demo.state import Session, need_session, user_errors


def convergence_view(session: Session):
    """(OTFusion convergence figure or None, note)."""
    res = session.results.get("otfusion")
    if res is None:
        return None, "Tick **OTFusion** and Run to see its convergence."
    history = list(res.details.history)
    s = session.settings.otfusion
    note = (f"OTFusion ran {res.details.n_iter} outer iteration(s) "
            f"({'converged' if res.details.converged else 'stopped at the limit'}) with "
            f"λ = {s.lam:g}, ε = {s.eps:g}.")
    if not any(h.accuracy is not None for h in history):
        note += " Accuracy per iteration is drawn when every image has a label."
    if res.details.sinkhorn_fallbacks:
        note += (f" {res.details.sinkhorn_fallbacks} Sinkhorn solve(s) finished in the log domain "
                 "(the scalings left the float range at this ε; same answer, slower).")
    return plots.convergence_figure(history, title="OTFusion convergence (paper Fig. 3)"), note


def sensitivity_views(session: Session):
    """Accuracy (or changed fraction) over a λ x ε grid, against λ and against ε."""
    from core.methods import sensitivity_sweep

    rows = sensitivity_sweep(session.extraction.features, settings=session.settings)
    for r in rows:
        r["changed_fraction"] = 1.0 - r["agreement_with_clip"]
    s = session.settings.otfusion
    note = (f"OTFusion over a λ x ε grid; the dashed line marks this Run's current λ = {s.lam:g} "
            f"and ε = {s.eps:g}.")
    return (plots.sensitivity_figure(rows, x="lam", title="OTFusion sensitivity to λ (Fig. 2)",
                                     current=s.lam),
            plots.sensitivity_figure(rows, x="eps", title="OTFusion sensitivity to ε",
                                     current=s.eps),
            note)


class SweepOutputs(NamedTuple):
    sweep_lam: Any
    sweep_eps: Any
    sweep_note: str


SWEEP_NOT_RUN = "No sweep for this Run yet: press the button to draw one (cached features)."


def blank() -> SweepOutputs:
    """No sweep drawn for the current Run yet."""
    return SweepOutputs(None, None, SWEEP_NOT_RUN)


@user_errors
def sweep(session) -> SweepOutputs:
    """OTFusion over a λ x ε grid on the cached features (papers' Fig. 2)."""
    return SweepOutputs(*sensitivity_views(need_session(session)))
