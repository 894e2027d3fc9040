"""What every Plotly figure of the app shares: the theme, array checks and the percent rule.

Used by ``demo.plots`` (metrics, dynamics) and ``demo.maps`` (embedding maps); no gradio here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222")
ACCENT = "#1f6fb4"
TITLE_SIZE = 16
# A title longer than this (characters) is cut on a 390 px phone: the rest goes in a subtitle
# (tests/test_plots.py checks every figure's title against it).
TITLE_MAX_CHARS = 36
TITLE_TOP = 40  # px above the title: room for the label Gradio puts over a plot
TEMPLATE = "plotly_white"
# Every figure of the app starts from TEMPLATE as Plotly's default: a figure takes the default
# template without validating it, while setting one on a figure validates and copies all of it
# (measured under load 13 on 2 cores: 190 ms per figure, against 12 ms with the default; the
# Playground's λ move redraws two figures).
pio.templates.default = TEMPLATE


def theme(fig: go.Figure, *, title: str, height: int, subtitle: str | None = None) -> go.Figure:
    """White template, the app's font, a left-aligned title (``subtitle``: a smaller second
    line, so long titles are never cut on narrow screens)."""
    # Pinned to the top of the figure, so a legend placed above the plot never runs into it,
    # below the label Gradio draws over a plot's top-left corner.
    head = dict(text=title, font=dict(size=TITLE_SIZE), x=0.02, xanchor="left", y=1.0,
                yref="container", yanchor="top", pad=dict(t=TITLE_TOP))
    if subtitle:
        head["subtitle"] = dict(text=subtitle, font=dict(size=12, color="#555"))
    if fig.layout.template.layout.paper_bgcolor != "white":  # made before the default was set
        fig.update_layout(template=TEMPLATE)
    fig.update_layout(font=FONT, height=height, title=head,
                      margin=dict(l=60, r=30, t=TITLE_TOP + (64 if subtitle else 44), b=50),
                      hoverlabel=dict(font_size=12))
    return fig


def to_numpy(x, name: str) -> np.ndarray:
    """``x`` (array, list or Tensor) as float64 numpy; NaN/Inf are refused with ``name``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN/Inf; check the inputs upstream.")
    return arr


def field_of(row, key: str):
    """``row[key]`` for a mapping, ``row.key`` for a record (e.g. ``OTFusionStep``); else None."""
    return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)


def percent(values: Sequence[float]) -> np.ndarray:
    """Accuracies as percentages: a series whose values are all <= 1 is read as fractions."""
    v = np.asarray(values, dtype=np.float64)
    return v * 100.0 if v.size and np.nanmax(np.abs(v)) <= 1.0 else v


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, d) scaled to unit L2 norm (zero rows stay ~0)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
