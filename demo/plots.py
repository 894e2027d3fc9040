"""Plotly figure builders for the app: embedding maps, modality gap, dynamics, metrics.

Pure functions: arrays / tensors / lists in, a ``plotly.graph_objects.Figure`` out, always
JSON-serialisable (``gr.Plot`` takes them). No gradio here (STYLE.md rule 9). Class colours come
from ``demo.overlays.class_colors`` so a class looks the same in every view. Accuracies may be given
as fractions in [0, 1] or as percentages; a series whose values are all <= 1 is read as fractions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from demo.overlays import UNKNOWN_COLOR, class_colors

METHODS_2D = ("pca", "tsne", "umap")
LEGEND_MAX_CLASSES = 20  # above this the embedding legend is hidden (colours + hover remain)
TICKS_MAX_CLASSES = 50  # above this confusion tick labels are dropped (hover remains)
_WEBGL_MIN_POINTS = 5000
_TSNE_EXACT_MAX = 200  # points; above, Barnes-Hut (see project_2d)
_FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222")
_ACCENT = "#1f6fb4"
_VLM_COLORS = ("#555555", "#b07aa1", "#9c755f")  # VLM weights, apart from the class colours


def _theme(fig: go.Figure, *, title: str, height: int) -> go.Figure:
    fig.update_layout(template="plotly_white", font=_FONT, height=height,
                      title=dict(text=title, font=dict(size=16), x=0.02, xanchor="left"),
                      margin=dict(l=60, r=30, t=60, b=50), hoverlabel=dict(font_size=12))
    return fig


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN/Inf; check the inputs upstream.")
    return arr


def _field(row, key: str):
    """``row[key]`` for a mapping, ``row.key`` for a record (e.g. ``OTFusionStep``); else None."""
    return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)


def _percent(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v * 100.0 if v.size and np.nanmax(np.abs(v)) <= 1.0 else v


def project_2d(features, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project features to 2-D for the embedding map; deterministic for a given ``seed``.

    ``features`` (P, d) array or Tensor, P >= 3, d >= 2; returns ``xy`` (P, 2) float64.
    ``method``: "pca"; "tsne" (perplexity ``min(30, (P - 1) / 3)``, at least 1, PCA init, exact
    gradients up to 200 points, Barnes-Hut above); "umap" (``n_neighbors = min(15, P - 1)``;
    imported lazily, it JIT-compiles for ~10 s on first use in a process).
    """
    x = _to_numpy(features, "features")
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"features: expected shape (P, d) with P >= 3 points and d >= 2, got "
                         f"{x.shape}; add more images or classes.")
    if method not in METHODS_2D:
        raise ValueError(f"method: expected one of {METHODS_2D}, got {method!r}.")
    p = x.shape[0]
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = float(min(30.0, max(1.0, (p - 1) / 3.0)))
        # Exact gradients only for small maps: measured on 2 cores (512-d), exact vs Barnes-Hut
        # takes 0.7 vs 0.3 s at 200 points, 2.5 vs 0.7 s at 500 and 12.8 vs 1.4 s at 1,100.
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    method="exact" if p <= _TSNE_EXACT_MAX else "barnes_hut", random_state=seed)
        return tsne.fit_transform(x).astype(np.float64)
    import umap  # lazy: the import alone takes seconds
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, p - 1)), n_jobs=1,
                        init="spectral" if p > 10 else "random", random_state=seed)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embedding_figure(image_xy, text_xy, *, image_color_labels: list[str], class_names: list[str],
                     hover: list[str] | None = None, title: str = "",
                     highlight: int | None = None, height: int = 520) -> go.Figure:
    """Scatter of images (circles) and text prototypes (stars) in 2-D, coloured by class.

    Parameters
    ----------
    image_xy : array, shape (N, 2); text_xy : array, shape (K, 2), row k = ``class_names[k]``
    image_color_labels : list of str, length N
        Class name colouring each image (prediction or truth); unknown names are gray "other".
    hover : list of str, length N, optional -- hover text per image (file name, top-k)
    highlight : int, optional -- image drawn enlarged and ringed (trace "selected")

    With K <= ``LEGEND_MAX_CLASSES`` there is one image trace and one prototype trace per class,
    sharing a legend group, so a click on a legend entry toggles a class. Beyond that the figure
    has one image trace and one prototype trace with per-point colours and no legend.
    """
    img = _to_numpy(image_xy, "image_xy")
    txt = _to_numpy(text_xy, "text_xy")
    k = len(class_names)
    if img.ndim != 2 or img.shape[1] != 2 or txt.shape != (k, 2):
        raise ValueError(f"image_xy/text_xy: expected (N, 2) and ({k}, 2) for {k} classes, "
                         f"got {img.shape} and {txt.shape}.")
    n = img.shape[0]
    if len(image_color_labels) != n or (hover is not None and len(hover) != n):
        raise ValueError(f"image_color_labels/hover: expected {n} entries (one per image), got "
                         f"{len(image_color_labels)} and {None if hover is None else len(hover)}.")
    if highlight is not None and not 0 <= int(highlight) < n:
        raise ValueError(f"highlight: expected an image index in [0, {n - 1}], got {highlight}.")
    hover = list(hover) if hover is not None else [f"image {i}" for i in range(n)]
    colors = class_colors(k)
    index = {name: i for i, name in enumerate(class_names)}
    cls = np.array([index.get(lbl, -1) for lbl in image_color_labels], dtype=np.int64)  # (N,)
    point_colors = [colors[c] if c >= 0 else UNKNOWN_COLOR for c in cls]
    scatter = go.Scattergl if n >= _WEBGL_MIN_POINTS else go.Scatter
    show_text = k <= 60
    image_marker = dict(size=8, symbol="circle", opacity=0.8, line=dict(width=0.5, color="white"))
    proto_marker = dict(size=18, symbol="star", line=dict(width=1.2, color="#222"))
    fig = go.Figure()

    if k <= LEGEND_MAX_CLASSES:
        groups = list(enumerate(class_names)) + ([(-1, "other")] if (cls < 0).any() else [])
        for c, name in groups:
            sel = np.flatnonzero(cls == c)
            if sel.size == 0:
                continue
            fig.add_trace(scatter(
                x=img[sel, 0], y=img[sel, 1], mode="markers", name=name, legendgroup=name,
                marker=dict(image_marker, color=colors[c] if c >= 0 else UNKNOWN_COLOR),
                hovertext=[hover[i] for i in sel], hoverinfo="text"))
        for c, name in enumerate(class_names):
            fig.add_trace(go.Scatter(
                x=[txt[c, 0]], y=[txt[c, 1]], mode="markers+text", name=f"text: {name}",
                legendgroup=name, showlegend=False, text=[name], textposition="top center",
                textfont=dict(color=colors[c], size=13), marker=dict(proto_marker, color=colors[c]),
                hovertext=[f"text prototype: {name}"], hoverinfo="text"))
    else:
        fig.add_trace(scatter(
            x=img[:, 0], y=img[:, 1], mode="markers", name="images",
            marker=dict(image_marker, color=point_colors), hovertext=hover, hoverinfo="text"))
        fig.add_trace(go.Scatter(
            x=txt[:, 0], y=txt[:, 1], mode="markers+text" if show_text else "markers",
            name="text prototypes", text=list(class_names) if show_text else None,
            textposition="top center", textfont=dict(color=colors, size=11),
            marker=dict(proto_marker, size=14, color=colors),
            hovertext=[f"text prototype: {c}" for c in class_names], hoverinfo="text"))

    if highlight is not None:
        h = int(highlight)
        fig.add_trace(go.Scatter(
            x=[img[h, 0]], y=[img[h, 1]], mode="markers", name="selected", showlegend=False,
            marker=dict(size=20, symbol="circle", color=point_colors[h],
                        line=dict(width=3, color="#111")),
            hovertext=[hover[h]], hoverinfo="text"))
    _theme(fig, title=title, height=height)
    fig.update_layout(showlegend=k <= LEGEND_MAX_CLASSES, legend=dict(itemsizing="constant"))
    fig.update_xaxes(showticklabels=False, zeroline=False, title=None)
    fig.update_yaxes(showticklabels=False, zeroline=False, title=None)
    return fig


def embedding_maps(before_image, before_text, after_image, after_text, *,
                   image_color_labels: list[str], class_names: list[str],
                   hover: list[str] | None = None, method: str = "pca", seed: int = 0,
                   highlight: int | None = None, gap_before: float | None = None,
                   gap_after: float | None = None, before_name: str = "CLIP image",
                   after_name: str = "GPUA-mapped VFM") -> tuple[go.Figure, go.Figure]:
    """The "before / after" pair of embedding maps, with the modality gap in both titles.

    Each panel projects its images and text prototypes jointly (one ``project_2d`` call on the
    stacked, L2-normalised features), so the gap between the two clouds stays visible. Two separate
    figures are returned rather than subplots: each keeps its own legend and zoom, and the app can
    put them side by side or stack them on narrow screens.

    Parameters
    ----------
    before_image : (N, d), before_text : (K, d) -- VLM image embeddings and text prototypes
    after_image : (N, d'), after_text : (K, d') -- mapped VFM embeddings (GPUA ``transform``)
        and the prototypes in that space
    gap_before, gap_after : float, optional
        Gaps to print; default: distance between the image and text centroids of the normalised
        features (the DESIGN.md definition). Other options go to ``project_2d`` /
        ``embedding_figure``. Returns the (before, after) figures.
    """
    panels = []
    for img, txt, which in ((before_image, before_text, "before"),
                            (after_image, after_text, "after")):
        img = _normalise(_to_numpy(img, f"{which}_image"))
        txt = _normalise(_to_numpy(txt, f"{which}_text"))
        if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
            raise ValueError(f"{which}_image/{which}_text: expected (N, d) and (K, d) in one "
                             f"space, got {img.shape} and {txt.shape}.")
        xy = project_2d(np.concatenate([img, txt]), method=method, seed=seed)  # (N + K, 2)
        gap = float(np.linalg.norm(img.mean(axis=0) - txt.mean(axis=0)))  # core.metrics' gap
        panels.append((xy[: len(img)], xy[len(img):], gap))
    g0 = panels[0][2] if gap_before is None else float(gap_before)
    g1 = panels[1][2] if gap_after is None else float(gap_after)
    titles = (f"Before: {before_name} vs text | gap {g0:.2f}",
              f"After: {after_name} vs text | gap {g0:.2f} -> {g1:.2f}")
    before, after = (
        embedding_figure(ixy, txy, image_color_labels=image_color_labels,
                         class_names=class_names, hover=hover, title=t, highlight=highlight)
        for (ixy, txy, _), t in zip(panels, titles))
    for fig in (before, after):
        fig.update_layout(xaxis_title=f"{method.upper()} 1", yaxis_title=f"{method.upper()} 2")
    return before, after


def modality_gap_figure(gaps: dict[str, float], *, height: int = 320) -> go.Figure:
    """Horizontal bars of modality gaps, e.g. ``{"CLIP image vs text": 0.8, ...}``."""
    if not gaps:
        raise ValueError("gaps: expected at least one {name: gap} entry, got an empty dict.")
    names, values = list(gaps), [float(v) for v in gaps.values()]
    colors = [UNKNOWN_COLOR] + class_colors(len(names))[: len(names) - 1]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                           name="modality gap", text=[f"{v:.2f}" for v in values],
                           textposition="outside", cliponaxis=False))
    _theme(fig, title="Modality gap (distance between image and text centroids)", height=height)
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
               if _field(r, "iteration") is None or _field(r, "objective") is None]
    if missing:
        raise ValueError(f"history: rows {missing[:5]} lack 'iteration' or 'objective'.")
    it = [_field(r, "iteration") for r in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=it, y=[float(_field(r, "objective")) for r in history],
                             name="objective", mode="lines+markers",
                             line=dict(color=_ACCENT, width=2)), secondary_y=False)
    acc_rows = [r for r in history if _field(r, "accuracy") is not None]
    if acc_rows:
        fig.add_trace(go.Scatter(x=[_field(r, "iteration") for r in acc_rows],
                                 y=_percent([_field(r, "accuracy") for r in acc_rows]),
                                 name="accuracy (%)", mode="lines+markers",
                                 line=dict(color="#f07d14", width=2, dash="dot")),
                      secondary_y=True)
        fig.update_yaxes(title_text="accuracy (%)", secondary_y=True, showgrid=False)
    _theme(fig, title=title, height=height)
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
    it = [_field(r, "iteration") for r in history]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35],
                        vertical_spacing=0.08)
    for row, (kind, names, symbol) in enumerate((("eta", visual_names, "η"),
                                                 ("lam", vlm_names, "λ")), start=1):
        weights = [tuple(_field(r, kind) or ()) for r in history]  # per iteration
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
    _theme(fig, title=title, height=height)
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
    all_y = _percent([r[metric] for r in rows])
    fig = go.Figure()
    for key, color in zip(keys, colors):
        idx = sorted((i for i, r in enumerate(rows) if float(r[other]) == key),
                     key=lambda i: float(rows[i][x]))
        label = f"{'ε' if other == 'eps' else 'λ'} = {key:g}"
        fig.add_trace(go.Scatter(x=[float(rows[i][x]) for i in idx], y=all_y[idx], name=label,
                                 mode="lines+markers", line=dict(color=color, width=2)))
    y_title = "accuracy (%)" if metric == "accuracy" else "predictions changed (%)"
    x_title = "λ (weight of the VLM)" if x == "lam" else "ε (entropic regularisation)"
    _theme(fig, title=title or f"Sensitivity to {'λ' if x == 'lam' else 'ε'}", height=height)
    fig.update_xaxes(title_text=x_title, type="log" if x == "eps" else "linear")
    fig.update_yaxes(title_text=y_title)
    if current is not None:
        symbol = "λ" if x == "lam" else "ε"
        fig.add_vline(x=float(current), line=dict(color="#333333", width=1.5, dash="dash"),
                      annotation_text=f"current {symbol} = {float(current):g}",
                      annotation_position="top")
    return fig


def accuracy_figure(acc: dict[str, float], *, baseline: str | None = None,
                    title: str = "Accuracy", height: int = 340) -> go.Figure:
    """Bars per method with the value printed; ``baseline`` (default: the first key) is gray."""
    if not acc:
        raise ValueError("acc: expected at least one {method: accuracy} entry, got an empty dict.")
    names = list(acc)
    baseline = names[0] if baseline is None else baseline
    values = _percent([float(v) for v in acc.values()])
    palette = iter(class_colors(len(names)))
    colors = [UNKNOWN_COLOR if n == baseline else next(palette) for n in names]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colors, name="accuracy",
                           text=[f"{v:.1f}%" for v in values], textposition="outside",
                           cliponaxis=False))
    _theme(fig, title=title, height=height)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, max(100.0, float(values.max()) * 1.08)])
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
    values = {m: _percent(v) for m, v in per_class.items()}
    wrong = {m: v.shape for m, v in values.items() if v.shape != (k,)}
    if wrong:
        raise ValueError(f"per_class: expected {k} values per method (one per class), got {wrong}.")
    order = np.arange(k)
    if k > max_classes:
        first, last = values[next(iter(values))], values[list(values)[-1]]
        order = np.sort(np.argsort(-np.abs(last - first), kind="stable")[:max_classes])
        title = f"{title} ({max_classes} of {k} classes with the largest change)"
    names = [class_names[i] for i in order]
    fig = go.Figure()
    for (method, v), color in zip(values.items(), [UNKNOWN_COLOR] + class_colors(len(values))):
        fig.add_trace(go.Bar(x=names, y=v[order], name=method, marker_color=color,
                             hovertemplate="%{x}: %{y:.1f}%<extra>" + method + "</extra>"))
    _theme(fig, title=title, height=height)
    fig.update_layout(barmode="group", bargap=0.2,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100])
    fig.update_xaxes(tickangle=-45 if len(names) > 8 else 0)
    return fig


def confusion_figure(matrix, class_names: list[str], *, normalize: bool = True,
                     max_classes: int = 200, title: str = "Confusion matrix",
                     height: int = 560) -> go.Figure:
    """Heatmap of a confusion matrix: rows are true classes, columns predicted.

    ``matrix`` (K, K): counts, ``matrix[i, j]`` = images of class i predicted as j. ``normalize``
    shows row-normalised rates (empty rows stay 0); counts are always in the hover. With
    K > ``TICKS_MAX_CLASSES`` tick labels are hidden; with K > ``max_classes`` only the
    ``max_classes`` classes with the most errors (as truth or prediction) are drawn, since a
    1000 x 1000 heatmap is tens of MB of JSON; rates still use the full rows.
    """
    counts = _to_numpy(matrix, "matrix")
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
        title = f"{title} ({max_classes} most confused of {k} classes)"
    counts, rates = counts[np.ix_(keep, keep)], rates[np.ix_(keep, keep)]
    names = [class_names[i] for i in keep]
    z = np.round(rates, 4) if normalize else counts
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, customdata=counts, colorscale="Blues",
        zmin=0, zmax=1 if normalize else None, name="confusion",
        colorbar=dict(title="rate" if normalize else "count"),
        hovertemplate="true: %{y}<br>predicted: %{x}<br>count: %{customdata:.0f}"
                      + ("<br>rate: %{z:.1%}" if normalize else "") + "<extra></extra>"))
    _theme(fig, title=title, height=height)
    show = len(keep) <= TICKS_MAX_CLASSES
    fig.update_xaxes(title_text="predicted", showticklabels=show, tickangle=-45, type="category")
    fig.update_yaxes(title_text="true", showticklabels=show, autorange="reversed",
                     type="category")
    return fig
