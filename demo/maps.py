"""The embedding maps: 2-D projections and the before / after scatter of images and class text
prototypes, linked to the gallery.

Pure functions, arrays in and a ``plotly.graph_objects.Figure`` out (no gradio; STYLE.md rule 9).
Every image point carries its image index as ``customdata``, so a click or a lasso in the browser
names images (``demo.ui``'s script sends them back); ``selected`` dims the other images the way
Plotly's own lasso does, so a search or a selection looks the same after a redraw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from demo.figstyle import normalise, theme, to_numpy
from demo.overlays import UNKNOWN_COLOR, class_colors
from demo.placement import place_labels

METHODS_2D = ("pca", "tsne", "umap")
LEGEND_MAX_CLASSES = 20  # above this the embedding legend is hidden (colours + hover remain)
STAR_LABELS_MAX = 30  # above this class names are in the stars' hover only (they cannot all fit)
HOVER_THUMBS_MAX = 300  # images; above, no hover thumbnails (they travel inside the figure JSON)
_WEBGL_MIN_POINTS = 5000
_TSNE_EXACT_MAX = 200  # points; above, Barnes-Hut (see project_2d)
# Star labels are kept apart on a conservative guess of the plot area (pixels): the map is about
# 300 px square in a half-width column at 1400 px and on a phone; wider screens only add room.
_PLOT_PX = (300.0, 300.0)
_LABEL_FONT = 12
_CHAR_PX = 0.62 * _LABEL_FONT  # average glyph width of the UI font
_STAR_R = 11.0  # half the star marker (px) plus a little air
STAR_POSITIONS = ("top center", "bottom center", "middle right", "middle left", "top right",
                  "top left", "bottom right", "bottom left")
_DIM = 0.12  # opacity of images outside a selection / search


def project_2d(features, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project features to 2-D for the embedding map; deterministic for a given ``seed``.

    ``features`` (P, d) array or Tensor, P >= 3, d >= 2; returns ``xy`` (P, 2) float64.
    ``method``: "pca"; "tsne" (perplexity ``min(30, (P - 1) / 3)``, at least 1, PCA init, exact
    gradients up to 200 points, Barnes-Hut above); "umap" (``n_neighbors = min(15, P - 1)``;
    imported lazily; its first fit in a process JIT-compiles (``demo.warmup`` does that at start).
    """
    x = to_numpy(features, "features")
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


def star_label_positions(text_xy, image_xy, class_names: Sequence[str], *,
                         plot_px: tuple[float, float] = _PLOT_PX) -> list[str | None]:
    """Where to write each class name beside its star (a Plotly ``textposition``) so that no two
    names overlap and no name covers a star; None: no room, the name is left to the hover.

    ``text_xy`` (K, 2) stars and ``image_xy`` (N, 2) images in data units (the images only set
    the axis ranges); ``plot_px``: the plot area assumed, in pixels. Names are placed in class
    order, each trying the positions of ``STAR_POSITIONS`` in turn (Plotly widens the axes to
    keep text inside, so no position is ruled out for being near an edge).
    """
    txt = np.asarray(text_xy, dtype=np.float64).reshape(-1, 2)
    pts = np.concatenate([txt, np.asarray(image_xy, dtype=np.float64).reshape(-1, 2)])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    # Plotly pads the autorange of a marker plot by roughly 5% a side.
    px = (txt - lo + 0.05 * span) * (np.asarray(plot_px) / (1.1 * span))  # (K, 2), y up
    cx, cy = px[:, 0], px[:, 1]
    w = np.array([len(str(n)) * _CHAR_PX + 4.0 for n in class_names])  # (K,)
    h, r = _LABEL_FONT + 4.0, _STAR_R
    d = 0.7 * r  # diagonal positions start at the marker's corner
    boxes = np.stack([  # (K, 8 positions, 4): the order of STAR_POSITIONS
        np.stack([cx - w / 2, cy + r, cx + w / 2, cy + r + h], axis=1),
        np.stack([cx - w / 2, cy - r - h, cx + w / 2, cy - r], axis=1),
        np.stack([cx + r, cy - h / 2, cx + r + w, cy + h / 2], axis=1),
        np.stack([cx - r - w, cy - h / 2, cx - r, cy + h / 2], axis=1),
        np.stack([cx + d, cy + d, cx + d + w, cy + d + h], axis=1),
        np.stack([cx - d - w, cy + d, cx - d, cy + d + h], axis=1),
        np.stack([cx + d, cy - d - h, cx + d + w, cy - d], axis=1),
        np.stack([cx - d - w, cy - d - h, cx - d, cy - d], axis=1),
    ], axis=1)
    stars = np.stack([cx - r + 3, cy - r + 3, cx + r - 3, cy + r - 3], axis=1)  # (K, 4)
    chosen = place_labels(boxes, obstacles=stars, gap=1.0)
    return [None if c is None else STAR_POSITIONS[c] for c in chosen]


def embedding_figure(image_xy, text_xy, *, image_color_labels: list[str], class_names: list[str],
                     hover: list[str] | None = None, title: str = "", subtitle: str | None = None,
                     highlight: int | None = None, height: int = 520,
                     group_colors: Mapping[str, str] | None = None,
                     selected: Sequence[int] | None = None, thumbs: Sequence[str] | None = None,
                     uirevision: str | None = None) -> go.Figure:
    """Scatter of images (circles) and text prototypes (stars) in 2-D.

    Parameters
    ----------
    image_xy : array, shape (N, 2); text_xy : array, shape (K, 2), row k = ``class_names[k]``
    image_color_labels : list of str, length N
        The group colouring each image: a class name (prediction or truth) by default, else a key
        of ``group_colors``; anything else is gray "other".
    group_colors : {group: "#rrggbb"}, optional
        Colour images by these groups (e.g. right / wrong) instead of by class; stars keep their
        class colours in one trace.
    hover : list of str, length N, optional -- hover text per image (file name, predictions)
    highlight : int, optional -- image drawn enlarged and ringed (trace "selected")
    selected : sequence of int, optional
        Images kept bright (Plotly ``selectedpoints``); the others are dimmed, as after a lasso.
    thumbs : sequence of str, length N, optional
        Image URLs (data URIs) for the hover thumbnails, stored in ``layout.meta.thumbs``.
    uirevision : str, optional -- zoom and drag mode survive redraws while this stays the same

    Every image trace carries the image indices as ``customdata``. With at most
    ``LEGEND_MAX_CLASSES`` groups there is one image trace per group (a legend entry toggles it;
    coloured by class, each class's star shares its legend group). Class names are written beside
    the stars where they fit (``star_label_positions``), up to ``STAR_LABELS_MAX`` classes.
    """
    img = to_numpy(image_xy, "image_xy")
    txt = to_numpy(text_xy, "text_xy")
    k = len(class_names)
    if img.ndim != 2 or img.shape[1] != 2 or txt.shape != (k, 2):
        raise ValueError(f"image_xy/text_xy: expected (N, 2) and ({k}, 2) for {k} classes, "
                         f"got {img.shape} and {txt.shape}.")
    n = img.shape[0]
    if len(image_color_labels) != n or (hover is not None and len(hover) != n) or (
            thumbs is not None and len(thumbs) != n):
        raise ValueError(f"image_color_labels/hover/thumbs: expected {n} entries (one per image), "
                         f"got {len(image_color_labels)}, {None if hover is None else len(hover)} "
                         f"and {None if thumbs is None else len(thumbs)}.")
    if highlight is not None and not 0 <= int(highlight) < n:
        raise ValueError(f"highlight: expected an image index in [0, {n - 1}], got {highlight}.")
    hover = list(hover) if hover is not None else [f"image {i}" for i in range(n)]
    colors = class_colors(k)
    by_class = group_colors is None
    groups = dict(zip(class_names, colors)) if by_class else dict(group_colors)
    order = {name: i for i, name in enumerate(groups)}
    gid = np.array([order.get(lbl, -1) for lbl in image_color_labels], dtype=np.int64)  # (N,)
    palette = list(groups.values())
    point_colors = [palette[g] if g >= 0 else UNKNOWN_COLOR for g in gid]
    keep = None
    if selected is not None:
        keep = np.zeros(n, dtype=bool)
        keep[[int(i) for i in selected if 0 <= int(i) < n]] = True
    scatter = go.Scattergl if n >= _WEBGL_MIN_POINTS else go.Scatter
    image_marker = dict(size=8, symbol="circle", opacity=0.85, line=dict(width=0.5, color="white"))
    proto_marker = dict(size=18, symbol="star", line=dict(width=1.2, color="#222"))
    label_font = dict(color="#222", size=_LABEL_FONT, shadow="0 0 3px white")
    positions = (star_label_positions(txt, img, class_names) if k <= STAR_LABELS_MAX
                 else [None] * k)
    fig = go.Figure()

    def images(sel: np.ndarray, color, **names):
        trace = dict(x=img[sel, 0], y=img[sel, 1], mode="markers", customdata=sel.tolist(),
                     marker=dict(image_marker, color=color), hoverinfo="text",
                     hovertext=[hover[i] for i in sel], **names)
        if keep is not None:
            trace.update(selectedpoints=np.flatnonzero(keep[sel]).tolist(),
                         selected=dict(marker=dict(opacity=1.0)),
                         unselected=dict(marker=dict(opacity=_DIM)))
        fig.add_trace(scatter(**trace))

    per_group = len(groups) <= LEGEND_MAX_CLASSES
    if per_group:
        listed = list(enumerate(groups)) + ([(-1, "other")] if (gid < 0).any() else [])
        for g, name in listed:
            sel = np.flatnonzero(gid == g)
            if sel.size:
                images(sel, palette[g] if g >= 0 else UNKNOWN_COLOR, name=name, legendgroup=name)
    else:
        images(np.arange(n), point_colors, name="images")
    if by_class and per_group:
        for c, name in enumerate(class_names):
            fig.add_trace(go.Scatter(
                x=[txt[c, 0]], y=[txt[c, 1]], mode="markers+text", name=f"text: {name}",
                legendgroup=name, showlegend=False, text=[name if positions[c] else ""],
                textposition=positions[c] or "top center", textfont=label_font,
                marker=dict(proto_marker, color=colors[c]),
                hovertext=[f"text prototype: {name}"], hoverinfo="text"))
    else:
        fig.add_trace(go.Scatter(
            x=txt[:, 0], y=txt[:, 1], mode="markers+text", name="class text (stars)",
            text=[name if p else "" for name, p in zip(class_names, positions)],
            textposition=[p or "top center" for p in positions], textfont=label_font,
            marker=dict(proto_marker, size=14, color=colors),
            hovertext=[f"text prototype: {c}" for c in class_names], hoverinfo="text"))

    if highlight is not None:
        h = int(highlight)
        fig.add_trace(go.Scatter(
            x=[img[h, 0]], y=[img[h, 1]], mode="markers", name="selected", showlegend=False,
            customdata=[h], marker=dict(size=20, symbol="circle", color=point_colors[h],
                                        line=dict(width=3, color="#111")),
            hovertext=[hover[h]], hoverinfo="text"))
    theme(fig, title=title, subtitle=subtitle, height=height)
    # Legend under the map, not beside it: the map keeps the column's width on a phone.
    fig.update_layout(showlegend=per_group, dragmode="lasso", margin=dict(l=20, r=20, b=20),
                      legend=dict(itemsizing="constant", orientation="h", x=0, xanchor="left",
                                  y=-0.02, yanchor="top"))
    if thumbs is not None:
        fig.update_layout(meta=dict(thumbs=list(thumbs)))
    if uirevision is not None:
        fig.update_layout(uirevision=uirevision)
    fig.update_xaxes(showticklabels=False, zeroline=False, title=None)
    fig.update_yaxes(showticklabels=False, zeroline=False, title=None)
    return fig


def project_panel(image, text, *, method: str = "pca", seed: int = 0,
                  name: str = "panel") -> tuple[np.ndarray, np.ndarray, float]:
    """One map panel: images and text prototypes projected jointly (one ``project_2d`` call on
    the stacked, L2-normalised features), so the gap between the two clouds stays visible.

    ``image`` (N, d), ``text`` (K, d) in one space; returns ``image_xy`` (N, 2), ``text_xy``
    (K, 2) and the modality gap (distance between the normalised centroids, core.metrics' gap).
    ``name`` words the error message (e.g. "before").
    """
    img = normalise(to_numpy(image, f"{name}_image"))
    txt = normalise(to_numpy(text, f"{name}_text"))
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"{name}_image/{name}_text: expected (N, d) and (K, d) in one "
                         f"space, got {img.shape} and {txt.shape}.")
    xy = project_2d(np.concatenate([img, txt]), method=method, seed=seed)  # (N + K, 2)
    gap = float(np.linalg.norm(img.mean(axis=0) - txt.mean(axis=0)))
    return xy[: len(img)], xy[len(img):], gap


def map_heads(method: str, gap_before: float, gap_after: float, *,
              before_name: str = "CLIP image", after_name: str = "GPUA-mapped VFM"):
    """((title, subtitle) of the "before" map, (title, subtitle) of the "after" map)."""
    axis = method.upper()
    return ((f"Before: {before_name} vs text", f"{axis} · modality gap {gap_before:.2f}"),
            (f"After: {after_name} vs text",
             f"{axis} · modality gap {gap_before:.2f} -> {gap_after:.2f}"))


def embedding_maps(before_image, before_text, after_image, after_text, *,
                   image_color_labels: list[str], class_names: list[str],
                   hover: list[str] | None = None, method: str = "pca", seed: int = 0,
                   highlight: int | None = None, gap_before: float | None = None,
                   gap_after: float | None = None, before_name: str = "CLIP image",
                   after_name: str = "GPUA-mapped VFM") -> tuple[go.Figure, go.Figure]:
    """The "before / after" pair of embedding maps, with the modality gap in both titles.

    Each panel is one ``project_panel``. Two separate figures are returned rather than subplots:
    each keeps its own legend and zoom, and the app can put them side by side or stack them on
    narrow screens.

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
    panels = [project_panel(img, txt, method=method, seed=seed, name=which)
              for img, txt, which in ((before_image, before_text, "before"),
                                      (after_image, after_text, "after"))]
    g0 = panels[0][2] if gap_before is None else float(gap_before)
    g1 = panels[1][2] if gap_after is None else float(gap_after)
    heads = map_heads(method, g0, g1, before_name=before_name, after_name=after_name)
    before, after = (
        embedding_figure(ixy, txy, image_color_labels=image_color_labels,
                         class_names=class_names, hover=hover, title=t, subtitle=s,
                         highlight=highlight)
        for (ixy, txy, _), (t, s) in zip(panels, heads))
    return before, after
