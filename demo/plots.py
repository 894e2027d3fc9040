"""Plotly figure builders for the app: modality gap, dynamics, metrics; the embedding maps live in
``demo.maps`` and are re-exported here, so ``demo.plots`` stays the one place figures come from.

Pure functions: arrays / tensors / lists in, a ``plotly.graph_objects.Figure`` out, always
JSON-serialisable (``gr.Plot`` takes them). No gradio here (STYLE.md rule 9). Class colours come
from ``demo.overlays.class_colors`` so a class looks the same in every view. Accuracies may be given
as fractions in [0, 1] or as percentages; a series whose values are all <= 1 is read as fractions.
Readable when projected: no crowded minor ticks, counts printed in the confusion cells, legends
outside the bars, long titles split into a title and a subtitle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from demo.figstyle import ACCENT, TITLE_TOP, field_of, percent, theme, to_numpy
from demo.maps import (  # noqa: F401 (re-exported: the maps are figures like the others)
    LEGEND_MAX_CLASSES,
    METHODS_2D,
    embedding_figure,
    embedding_maps,
    map_heads,
    project_2d,
    project_panel,
)
from demo.overlays import UNKNOWN_COLOR, class_colors

TICKS_MAX_CLASSES = 50  # above this confusion tick labels are dropped (hover remains)
LOG_TICKS_MAX = 6  # a log axis labels up to this many swept values, else one tick per decade
CELL_TEXT_MAX_CLASSES = 25  # up to this many classes each confusion cell prints its count
_VLM_COLORS = ("#555555", "#b07aa1", "#9c755f")  # VLM weights, apart from the class colours


def modality_gap_figure(gaps: dict[str, float], *, height: int = 320) -> go.Figure:
    """Horizontal bars of modality gaps, e.g. ``{"CLIP image vs text": 0.8, ...}``."""
    if not gaps:
        raise ValueError("gaps: expected at least one {name: gap} entry, got an empty dict.")
    names, values = list(gaps), [float(v) for v in gaps.values()]
    colors = [UNKNOWN_COLOR] + class_colors(len(names))[: len(names) - 1]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                           name="modality gap", text=[f"{v:.2f}" for v in values],
                           textposition="outside", cliponaxis=False))
    theme(fig, title="Modality gap", subtitle="distance between the image and text centroids",
          height=height)
    fig.update_xaxes(title="gap (lower = closer)", rangemode="tozero")
    fig.update_yaxes(autorange="reversed")
    return fig


def convergence_figure(history: list[dict], *, title: str = "Convergence",
                       height: int = 380) -> go.Figure:
    """Objective per outer iteration, and accuracy (%) on a second y axis when recorded (Fig. 3).

    ``history``: per iteration a ``{"iteration", "objective", "accuracy" (optional)}`` dict or a
    record with those attributes (``OTFusionResult.history``).
    """
    if not history:
        raise ValueError("history: expected at least one {'iteration', 'objective'} entry.")
    missing = [i for i, r in enumerate(history)
               if field_of(r, "iteration") is None or field_of(r, "objective") is None]
    if missing:
        raise ValueError(f"history: rows {missing[:5]} lack 'iteration' or 'objective'.")
    it = [field_of(r, "iteration") for r in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=it, y=[float(field_of(r, "objective")) for r in history],
                             name="objective", mode="lines+markers",
                             line=dict(color=ACCENT, width=2)), secondary_y=False)
    acc_rows = [r for r in history if field_of(r, "accuracy") is not None]
    if acc_rows:
        fig.add_trace(go.Scatter(x=[field_of(r, "iteration") for r in acc_rows],
                                 y=percent([field_of(r, "accuracy") for r in acc_rows]),
                                 name="accuracy (%)", mode="lines+markers",
                                 line=dict(color="#f07d14", width=2, dash="dot")),
                      secondary_y=True)
        fig.update_yaxes(title_text="accuracy (%)", secondary_y=True, showgrid=False)
    theme(fig, title=title, height=height)
    fig.update_xaxes(title_text="iteration", dtick=1 if len(it) <= 20 else None)
    fig.update_yaxes(title_text="objective", secondary_y=False)
    fig.update_layout(legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def source_weights_figure(history, *, visual_names: Sequence[str], vlm_names: Sequence[str],
                          title: str = "Source weights per iteration",
                          height: int = 440) -> go.Figure:
    """OTFusion's source weights per outer iteration: one line per visual source (its η, top
    panel) and one per VLM (its λ, bottom panel), named by the sources.

    ``history``: records with ``iteration``, ``eta`` (one weight per visual source) and ``lam``
    (one per VLM), e.g. ``OTFusionResult.history``; ``visual_names`` / ``vlm_names`` name them
    (a missing name becomes "visual source i" / "VLM j"). Two panels because η sums to 1 over
    the visual sources while λ is on its own scale (0.8 per VLM in the paper recipe).
    """
    if not history:
        raise ValueError("history: expected at least one {'iteration', 'eta', 'lam'} entry.")
    it = [field_of(r, "iteration") for r in history]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35],
                        vertical_spacing=0.08)
    for row, (kind, names, symbol) in enumerate((("eta", visual_names, "η"),
                                                 ("lam", vlm_names, "λ")), start=1):
        weights = [tuple(field_of(r, kind) or ()) for r in history]  # per iteration
        n = max(len(w) for w in weights)
        colors = class_colors(max(n, 1)) if kind == "eta" else _VLM_COLORS
        for j in range(n):
            default = f"visual source {j + 1}" if kind == "eta" else f"VLM {j + 1}"
            name = names[j] if j < len(names) else default
            fig.add_trace(go.Scatter(
                x=it, y=[w[j] if j < len(w) else None for w in weights],
                name=f"{symbol} {name}", mode="lines+markers",
                line=dict(color=colors[j % len(colors)], width=2,
                          dash="solid" if kind == "eta" else "dash")), row=row, col=1)
        fig.update_yaxes(title_text=f"{symbol} ({'visual' if kind == 'eta' else 'VLMs'})",
                         rangemode="tozero", row=row, col=1)
    theme(fig, title=title, height=height)
    fig.update_xaxes(title_text="iteration", dtick=1 if len(it) <= 20 else None, row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.28, yanchor="top", x=0, xanchor="left"),
                      margin=dict(b=120))
    return fig


def sensitivity_figure(rows: list[dict], *, x: str = "lam", title: str | None = None,
                       current: float | None = None, height: int = 380) -> go.Figure:
    """Accuracy (or changed fraction) against ``lam`` or ``eps``, one line per other value (Fig. 2).

    ``rows``: one ``{"lam", "eps", "accuracy" | "changed_fraction"}`` dict per solve; ``x`` is the
    swept parameter, "lam" or "eps" (drawn on a log axis). ``current``: the value in use, marked
    by a dashed vertical line labelled "current".
    """
    if x not in ("lam", "eps"):
        raise ValueError(f"x: expected 'lam' or 'eps', got {x!r}.")
    if not rows:
        raise ValueError("rows: expected at least one {'lam', 'eps', 'accuracy'} entry.")
    metric = "accuracy" if all(r.get("accuracy") is not None for r in rows) else "changed_fraction"
    bad = [i for i, r in enumerate(rows)
           if r.get("lam") is None or r.get("eps") is None or r.get(metric) is None]
    if bad:
        raise ValueError(f"rows: rows {bad[:5]} lack 'lam', 'eps' or 'accuracy' / "
                         "'changed_fraction'.")
    other = "eps" if x == "lam" else "lam"
    keys = sorted({float(r[other]) for r in rows})
    colors = class_colors(len(keys))
    all_y = percent([r[metric] for r in rows])
    fig = go.Figure()
    for key, color in zip(keys, colors):
        idx = sorted((i for i, r in enumerate(rows) if float(r[other]) == key),
                     key=lambda i: float(rows[i][x]))
        label = f"{'ε' if other == 'eps' else 'λ'} = {key:g}"
        fig.add_trace(go.Scatter(x=[float(rows[i][x]) for i in idx], y=all_y[idx], name=label,
                                 mode="lines+markers", line=dict(color=color, width=2)))
    y_title = "accuracy (%)" if metric == "accuracy" else "predictions changed (%)"
    x_title = "λ (weight of the VLM)" if x == "lam" else "ε (entropic regularisation)"
    theme(fig, title=title or f"Sensitivity to {'λ' if x == 'lam' else 'ε'}", height=height)
    fig.update_yaxes(title_text=y_title)
    swept = sorted({float(r[x]) for r in rows} | ({float(current)} if current is not None
                                                   else set()))
    if x == "eps":
        _log_axis(fig, swept, title=x_title)
    else:
        fig.update_xaxes(title_text=x_title)
    if current is not None:
        symbol = "λ" if x == "lam" else "ε"
        fig.add_vline(x=float(current), line=dict(color="#333333", width=1.5, dash="dash"),
                      annotation_text=f"current {symbol} = {float(current):g}",
                      annotation_position="top")
    return fig


def _log_axis(fig: go.Figure, values: list[float], *, title: str) -> None:
    """A log x axis readable from the back of a room: ticks at the swept values only (at most
    ``LOG_TICKS_MAX`` of them, else one per decade), no minor ticks, padded to the data."""
    lo, hi = np.log10(min(values)), np.log10(max(values))
    pad = max(0.1, 0.06 * (hi - lo))
    ticks = dict(tickmode="array", tickvals=values, ticktext=[f"{v:g}" for v in values]) if (
        len(values) <= LOG_TICKS_MAX) else dict(dtick=1)
    fig.update_xaxes(type="log", title_text=title, range=[lo - pad, hi + pad],
                     minor=dict(ticks="", showgrid=False), **ticks)


def accuracy_figure(acc: dict[str, float], *, baseline: str | None = None,
                    title: str = "Accuracy", height: int = 340) -> go.Figure:
    """Horizontal bars per method, top to bottom in ``acc``'s order, with the value printed at
    the end of each bar; ``baseline`` (default: the first key) is gray. Horizontal so long method
    names sit left of their bar (never under the axis' "0") and the chart fits a phone."""
    if not acc:
        raise ValueError("acc: expected at least one {method: accuracy} entry, got an empty dict.")
    names = list(acc)
    baseline = names[0] if baseline is None else baseline
    values = percent([float(v) for v in acc.values()])
    palette = iter(class_colors(len(names)))
    colors = [UNKNOWN_COLOR if n == baseline else next(palette) for n in names]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                           name="accuracy", text=[f"{v:.1f}%" for v in values],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.1f}%<extra></extra>"))
    theme(fig, title=title, height=height)
    # Room right of a 100% bar for its printed value.
    fig.update_xaxes(title_text="accuracy (%)", range=[0, max(100.0, float(values.max())) * 1.16],
                     tickvals=[0, 20, 40, 60, 80, 100])
    fig.update_yaxes(autorange="reversed", automargin=True, ticksuffix=" ")
    fig.update_layout(margin=dict(r=20))
    return fig


def per_class_figure(per_class: dict[str, list[float]], class_names: list[str], *,
                     max_classes: int = 40, title: str = "Per-class accuracy",
                     height: int = 420) -> go.Figure:
    """Grouped bars: per-class accuracy (%) for each method.

    ``per_class`` maps a method to K values (order of ``class_names``). With more than
    ``max_classes`` classes only those where the first and last method differ most are drawn,
    and the title says so.
    """
    k = len(class_names)
    if not per_class:
        raise ValueError("per_class: expected at least one {method: per-class accuracies} entry.")
    values = {m: percent(v) for m, v in per_class.items()}
    wrong = {m: v.shape for m, v in values.items() if v.shape != (k,)}
    if wrong:
        raise ValueError(f"per_class: expected {k} values per method (one per class), got {wrong}.")
    order = np.arange(k)
    if k > max_classes:
        first, last = values[next(iter(values))], values[list(values)[-1]]
        order = np.sort(np.argsort(-np.abs(last - first), kind="stable")[:max_classes])
        subtitle = f"{max_classes} of {k} classes, those with the largest change"
    else:
        subtitle = None
    names = [class_names[i] for i in order]
    fig = go.Figure()
    for (method, v), color in zip(values.items(), [UNKNOWN_COLOR] + class_colors(len(values))):
        fig.add_trace(go.Bar(x=names, y=v[order], name=method, marker_color=color,
                             hovertemplate="%{x}: %{y:.1f}%<extra>" + method + "</extra>"))
    theme(fig, title=title, subtitle=subtitle, height=height)
    # The legend in its own band between the title and the plot, never over a bar: two
    # entries a row whatever the width (a phone would stack them up into the title).
    rows = -(-len(values) // 2)
    fig.update_layout(barmode="group", bargap=0.2,
                      margin=dict(t=TITLE_TOP + (64 if subtitle else 44) + 22 * rows),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0, xanchor="left",
                                  entrywidth=0.5, entrywidthmode="fraction"))
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100])
    fig.update_xaxes(tickangle=-45 if len(names) > 8 else 0)
    return fig


def confusion_figure(matrix, class_names: list[str], *, normalize: bool = True,
                     max_classes: int = 200, title: str = "Confusion matrix",
                     height: int = 560) -> go.Figure:
    """Heatmap of a confusion matrix: rows are true classes, columns predicted.

    ``matrix`` (K, K): counts, ``matrix[i, j]`` = images of class i predicted as j. ``normalize``
    shows row-normalised rates (empty rows stay 0) as colours; counts are always in the hover, and
    printed in the non-zero cells up to ``CELL_TEXT_MAX_CLASSES`` classes (zeros stay blank so
    the errors stand out). With K > ``TICKS_MAX_CLASSES`` tick labels are hidden; with
    K > ``max_classes`` only the ``max_classes`` classes with the most errors (as truth or
    prediction) are drawn, since a 1000 x 1000 heatmap is tens of MB of JSON; rates still use
    the full rows.
    """
    counts = to_numpy(matrix, "matrix")
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix: expected shape ({k}, {k}) for {k} classes, got {counts.shape}.")
    rows = counts.sum(axis=1, keepdims=True)  # (K, 1)
    rates = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    keep = np.arange(k)
    if k > max_classes:
        off = counts - np.diag(np.diag(counts))
        errors = off.sum(axis=0) + off.sum(axis=1)  # (K,)
        keep = np.sort(np.argsort(-errors, kind="stable")[:max_classes])
        subtitle = f"the {max_classes} most confused of {k} classes"
    else:
        subtitle = None
    counts, rates = counts[np.ix_(keep, keep)], rates[np.ix_(keep, keep)]
    names = [class_names[i] for i in keep]
    z = np.round(rates, 4) if normalize else counts
    cells = {}
    if len(keep) <= CELL_TEXT_MAX_CLASSES:
        text = np.where(counts > 0, counts.astype(np.int64).astype(str), "")  # (k, k)
        cells = dict(text=text.tolist(), texttemplate="%{text}",
                     textfont=dict(size=max(10, 16 - len(keep) // 3)))
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, customdata=counts, colorscale="Blues",
        zmin=0, zmax=1 if normalize else None, name="confusion",
        colorbar=dict(title="rate" if normalize else "count"),
        hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{customdata:.0f}"
                      + ("<br>rate: %{z:.1%}" if normalize else "") + "<extra></extra>",
        **cells))
    theme(fig, title=title, subtitle=subtitle, height=height)
    show = len(keep) <= TICKS_MAX_CLASSES
    fig.update_xaxes(title_text="predicted", showticklabels=show, tickangle=-45, type="category")
    fig.update_yaxes(title_text="true", showticklabels=show, autorange="reversed",
                     type="category")
    return fig
