"""The Dynamics tab: OTFusion's convergence, its source weights per iteration and the lambda x
epsilon sensitivity sweep, all with the settings of the session record."""

from __future__ import annotations

from typing import Any, NamedTuple

from core.methods import otfusion_weights
from demo import plots
from demo.provenance import SETTING_LABELS, VARIANT_LABELS, lam_text
from demo.state import Session, need_session, user_errors


def convergence_view(session: Session):
    """(OTFusion convergence figure or None, source-weights figure or None, note), from the
    record's result history and settings."""
    res = session.results.get("otfusion")
    if res is None:
        return None, None, "Tick **OTFusion** and Run to see its convergence."
    history = list(res.details.history)
    s = session.settings.otfusion
    note = (f"OTFusion ({s.recipe} recipe, {SETTING_LABELS[s.setting]}, "
            f"{VARIANT_LABELS[s.variant]}) ran {res.details.n_iter} outer iteration(s) "
            f"({'converged' if res.details.converged else 'stopped at the limit'}) with "
            f"{lam_text(s).replace(' ', ' = ', 1)}, ε = {s.eps:g}.")
    if not any(h.accuracy is not None for h in history):
        note += " Accuracy per iteration is drawn when every image has a label."
    if res.details.sinkhorn_fallbacks:
        note += (f" {res.details.sinkhorn_fallbacks} Sinkhorn solve(s) finished in the log domain "
                 "(the scalings left the float range at this ε; same answer, slower).")
    note += " " + _weights_note(s, history)
    visual = [n for n in res.sources if not n.startswith("Y: ")]
    vlms = [n[len("Y: "):] for n in res.sources if n.startswith("Y: ")]
    weights = plots.source_weights_figure(
        history, visual_names=visual, vlm_names=vlms,
        title=f"Source weights per iteration ({otfusion_weights(s)})")
    return (plots.convergence_figure(history, title="OTFusion convergence (paper Fig. 3)"),
            weights, note)


def _weights_note(s, history) -> str:
    """Why the source weights move or stay flat."""
    if otfusion_weights(s) == "fixed":
        return ("Source weights are **fixed** (η uniform over the visual sources, λ per VLM): "
                "flat lines. Pick adaptive weights (or the official recipe) to let them follow "
                "their agreement with Q.")
    groups = max((len(h.eta) for h in history), default=0), max(
        (len(h.lam) for h in history), default=0)
    if max(groups) < 2:
        return ("Source weights are **adaptive**, but each group has one member: nothing to "
                "share. Add a VFM or a VLM (main setting) to see them move.")
    return ("Source weights are **adaptive**: after each Sinkhorn every source's share of its "
            "group follows the number of images whose argmax agrees with Q's.")


def sensitivity_views(session: Session):
    """Accuracy (or changed fraction) over a λ x ε grid, against λ and against ε."""
    from core.methods import sensitivity_sweep

    rows = sensitivity_sweep(session.extraction.features, settings=session.settings)
    for r in rows:
        r["changed_fraction"] = 1.0 - r["agreement_with_clip"]
    s = session.settings.otfusion
    note = (f"OTFusion ({s.recipe} recipe) over a λ x ε grid; the dashed line marks this Run's "
            f"current {lam_text(s).replace(' ', ' = ', 1)} and ε = {s.eps:g}.")
    if s.lam is None:
        note += " (λ is uniform in this Run, so no λ line; the grid sets λ per VLM.)"
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
