"""Tests for demo/plots.py: projections, embedding maps, dynamics and metric figures."""

import json
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from sklearn.metrics import confusion_matrix

from demo.figstyle import TITLE_MAX_CHARS
from demo.maps import STAR_LABELS_MAX, star_label_positions
from demo.overlays import UNKNOWN_COLOR, class_colors
from demo.placement import place_labels
from demo.plots import (
    CELL_TEXT_MAX_CLASSES,
    LEGEND_MAX_CLASSES,
    accuracy_figure,
    confusion_figure,
    convergence_figure,
    embedding_figure,
    embedding_maps,
    modality_gap_figure,
    per_class_figure,
    project_2d,
    sensitivity_figure,
)

ATOL = 1e-8


def blobs(n=60, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = np.arange(n) % k
    return centers[labels] + rng.normal(size=(n, d)), labels


def is_json(fig):
    assert isinstance(fig, go.Figure)
    json.loads(fig.to_json())
    return True


# ----------------------------------------------------------------------------- project_2d


def test_project_2d_pca_matches_svd_reference():
    x, _ = blobs()
    xy = project_2d(torch.tensor(x, dtype=torch.float32), method="pca")
    centred = x - x.mean(axis=0)
    ref = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # (P, 2)
    assert xy.shape == (60, 2)
    # PCA is defined up to the sign of each component
    np.testing.assert_allclose(np.abs(xy), np.abs(ref), atol=1e-4)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_project_2d_shape_and_determinism(method):
    x, labels = blobs()
    a = project_2d(x, method=method, seed=3)
    b = project_2d(x, method=method, seed=3)
    assert a.shape == (60, 2) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=ATOL)
    # well-separated blobs stay separated: each point's nearest neighbour shares its blob
    dist = np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(axis=1)] == labels).mean() > 0.9


def test_tsne_above_the_exact_limit_uses_barnes_hut_and_keeps_blobs_apart(monkeypatch):
    from sklearn import manifold

    used = []
    real = manifold.TSNE

    def spy(*args, **kwargs):
        used.append(kwargs["method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(manifold, "TSNE", spy)
    x, labels = blobs(n=300)
    xy = project_2d(x, method="tsne", seed=0)
    project_2d(x[:60], method="tsne", seed=0)
    assert used == ["barnes_hut", "exact"]
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(axis=1)] == labels).mean() > 0.9


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_project_2d_tiny_inputs(method):
    x, _ = blobs(n=5, d=4)
    assert project_2d(x, method=method).shape == (5, 2)


def test_project_2d_validates():
    with pytest.raises(ValueError, match="P >= 3"):
        project_2d(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="one of"):
        project_2d(np.zeros((10, 5)), method="mds")
    bad = np.zeros((10, 5))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        project_2d(bad)


# ----------------------------------------------------------------------------- embedding maps


def small_embedding(k=3, n=12, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"class {i}" for i in range(k)]
    labels = [names[i % k] for i in range(n)]
    return rng.normal(size=(n, 2)), rng.normal(size=(k, 2)), labels, names


def test_embedding_figure_traces_per_class():
    img, txt, labels, names = small_embedding()
    hover = [f"img{i}.jpg" for i in range(12)]
    fig = embedding_figure(img, txt, image_color_labels=labels, class_names=names, hover=hover,
                           title="map")
    image_traces = [t for t in fig.data if t.marker.symbol == "circle"]
    proto_traces = [t for t in fig.data if t.marker.symbol == "star"]
    assert [t.name for t in image_traces] == names
    assert [t.name for t in proto_traces] == [f"text: {n}" for n in names]
    assert len(fig.data) == 6 and fig.layout.showlegend
    colors = class_colors(3)
    for c, (it, pt) in enumerate(zip(image_traces, proto_traces)):
        assert it.marker.color == pt.marker.color == colors[c]
        assert it.legendgroup == pt.legendgroup == names[c]
        assert list(pt.text) == [names[c]]
        np.testing.assert_allclose([pt.x[0], pt.y[0]], txt[c])
    assert list(image_traces[1].hovertext) == hover[1::3]
    assert fig.layout.title.text == "map" and fig.layout.template.layout.paper_bgcolor == "white"
    assert is_json(fig)


def test_embedding_figure_highlight_adds_ringed_marker():
    img, txt, labels, names = small_embedding()
    base = embedding_figure(img, txt, image_color_labels=labels, class_names=names)
    fig = embedding_figure(img, txt, image_color_labels=labels, class_names=names, highlight=4)
    assert len(fig.data) == len(base.data) + 1
    sel = fig.data[-1]
    assert sel.name == "selected"
    np.testing.assert_allclose([sel.x[0], sel.y[0]], img[4])
    assert sel.marker.size > fig.data[0].marker.size
    assert sel.marker.line.width >= 2
    assert sel.marker.color == class_colors(3)[4 % 3]
    with pytest.raises(ValueError, match="highlight"):
        embedding_figure(img, txt, image_color_labels=labels, class_names=names, highlight=12)


def test_embedding_figure_many_classes_and_unknown_labels():
    k = LEGEND_MAX_CLASSES + 5
    img, txt, labels, names = small_embedding(k=k, n=40)
    labels[0] = "not a class"
    fig = embedding_figure(img, txt, image_color_labels=labels, class_names=names)
    assert len(fig.data) == 2 and fig.layout.showlegend is False
    assert fig.data[0].marker.color[0] == UNKNOWN_COLOR
    assert fig.data[0].marker.color[1] == class_colors(k)[1]
    assert fig.data[1].marker.symbol == "star" and len(fig.data[1].x) == k
    assert is_json(fig)
    few = embedding_figure(*small_embedding()[:2], image_color_labels=["x"] * 12,
                           class_names=small_embedding()[3])
    assert [t.name for t in few.data if t.marker.symbol == "circle"] == ["other"]


def test_embedding_figure_validates_lengths():
    img, txt, labels, names = small_embedding()
    with pytest.raises(ValueError, match="one per image"):
        embedding_figure(img, txt, image_color_labels=labels[:-1], class_names=names)
    with pytest.raises(ValueError, match="for 3 classes"):
        embedding_figure(img, txt[:2], image_color_labels=labels, class_names=names)


def test_embedding_figure_points_name_their_images_and_show_a_selection():
    img, txt, labels, names = small_embedding()
    thumbs = [f"data:image/jpeg;base64,{i}" for i in range(12)]
    fig = embedding_figure(img, txt, image_color_labels=labels, class_names=names,
                           selected=[1, 4, 5], thumbs=thumbs, uirevision="run:pca", highlight=4)
    images = [t for t in fig.data if t.marker.symbol == "circle" and t.name != "selected"]
    for t in images:  # customdata = image index, so a click or lasso names images
        np.testing.assert_allclose(np.c_[t.x, t.y], img[list(t.customdata)])
    assert sorted(i for t in images for i in t.customdata) == list(range(12))
    bright = sorted(t.customdata[j] for t in images for j in t.selectedpoints)
    assert bright == [1, 4, 5]
    assert all(t.unselected.marker.opacity < 0.3 for t in images)
    assert list(fig.data[-1].customdata) == [4]  # the ringed point too
    assert list(fig.layout.meta["thumbs"]) == thumbs and fig.layout.uirevision == "run:pca"
    assert fig.layout.dragmode == "lasso"
    plain = embedding_figure(img, txt, image_color_labels=labels, class_names=names)
    assert all(t.selectedpoints is None for t in plain.data) and plain.layout.meta is None
    with pytest.raises(ValueError, match="one per image"):
        embedding_figure(img, txt, image_color_labels=labels, class_names=names, thumbs=["x"])


def test_embedding_figure_groups_other_than_classes():
    img, txt, _, names = small_embedding()
    groups = ["right", "wrong", "no label"] * 4
    colors = {"right": "#2a9c3a", "wrong": "#d12b2b"}
    fig = embedding_figure(img, txt, image_color_labels=groups, class_names=names,
                           group_colors=colors)
    images = {t.name: t for t in fig.data if t.marker.symbol == "circle"}
    assert list(images) == ["right", "wrong", "other"]
    assert images["right"].marker.color == "#2a9c3a" and images["other"].marker.color == (
        UNKNOWN_COLOR)
    assert list(images["wrong"].customdata) == [1, 4, 7, 10]
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert len(stars) == 1 and list(stars[0].marker.color) == class_colors(3)  # class colours


def test_star_labels_never_overlap_and_yield_to_the_hover():
    # Two stars on the same spot: one name above, the other below (not on top of each other).
    txt = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    img = np.array([[-5.0, -5.0], [5.0, -5.0]])
    pos = star_label_positions(txt, img, ["circle", "triangle", "star"])
    assert pos[0] == "top center" and pos[1] == "bottom center" and pos[2] is not None
    # Crowded stars: every name drawn gets a box clear of the others; the rest hover only.
    rng = np.random.default_rng(0)
    txt = rng.normal(scale=0.05, size=(12, 2))
    names = [f"class number {i}" for i in range(12)]
    fig = embedding_figure(rng.normal(size=(30, 2)), txt, image_color_labels=names[:1] * 30,
                           class_names=names)
    shown = [t for t in fig.data if t.marker.symbol == "star" and t.text[0]]
    assert 0 < len(shown) < 12
    many = [f"c{i}" for i in range(STAR_LABELS_MAX + 1)]
    fig = embedding_figure(rng.normal(size=(40, 2)), rng.normal(size=(len(many), 2)),
                           image_color_labels=many[:1] * 40, class_names=many)
    assert not any(fig.data[-1].text)  # too many classes: names in the hover only
    assert list(fig.data[-1].hovertext)[:2] == ["text prototype: c0", "text prototype: c1"]


def test_place_labels_takes_the_first_free_candidate():
    # Label 0 takes its first spot; label 1's first spot collides with it, so it takes its
    # second; label 2 has only colliding or out-of-bounds spots: None.
    cand = np.array([
        [[0, 0, 10, 10], [20, 0, 30, 10]],
        [[5, 5, 15, 15], [40, 0, 50, 10]],
        [[0, 0, 10, 10], [95, 0, 105, 10]],
    ], dtype=float)
    assert place_labels(cand, bounds=(0, 0, 100, 100)) == [0, 1, None]
    assert place_labels(cand[:1], obstacles=np.array([[0, 0, 3, 3]])) == [1]  # obstacle
    with pytest.raises(ValueError, match=r"\(M, C, 4\)"):
        place_labels(np.zeros((2, 4)))

def test_embedding_maps_titles_carry_gaps():
    rng = np.random.default_rng(0)
    k, n, d = 3, 30, 8
    text = rng.normal(size=(k, d))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    labels = np.arange(n) % k
    before = text[labels] + 0.3 * rng.normal(size=(n, d)) + 2.0 * np.eye(d)[0]  # modality offset
    after = text[labels] + 0.3 * rng.normal(size=(n, d))

    def gap(img, txt):  # centroid distance of normalised embeddings, computed independently
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
        return np.linalg.norm(img.mean(0) - txt.mean(0))

    names = ["a", "b", "c"]
    fig_b, fig_a = embedding_maps(before, text, torch.tensor(after), text,
                                  image_color_labels=[names[i] for i in labels],
                                  class_names=names, method="pca", highlight=2)
    g0, g1 = gap(before, text), gap(after, text)
    assert g0 > g1
    assert f"gap {g0:.2f}" in fig_b.layout.title.subtitle.text
    assert f"gap {g0:.2f} -> {g1:.2f}" in fig_a.layout.title.subtitle.text
    assert "CLIP image" in fig_b.layout.title.text and "GPUA" in fig_a.layout.title.text
    assert all(len(f.layout.title.text) <= TITLE_MAX_CHARS for f in (fig_b, fig_a))
    # joint projection: the text stars share the plane with the images
    joint = np.concatenate([before / np.linalg.norm(before, axis=1, keepdims=True), text])
    xy = project_2d(joint, method="pca")
    stars = [t for t in fig_b.data if t.marker.symbol == "star"]
    np.testing.assert_allclose([[s.x[0], s.y[0]] for s in stars], xy[n:], atol=1e-6)
    assert fig_a.data[-1].name == "selected"
    assert is_json(fig_b) and is_json(fig_a)
    _, fixed = embedding_maps(before, text, after, text, image_color_labels=["a"] * n,
                              class_names=names, gap_before=0.83, gap_after=0.21)
    assert "gap 0.83 -> 0.21" in fixed.layout.title.subtitle.text


def test_modality_gap_figure():
    gaps = {"CLIP image vs text": 0.8, "GPUA-mapped VFM vs text": 0.2}
    fig = modality_gap_figure(gaps)
    bar = fig.data[0]
    assert list(bar.y) == list(gaps) and list(bar.x) == [0.8, 0.2]
    assert list(bar.text) == ["0.80", "0.20"]
    assert is_json(fig)
    with pytest.raises(ValueError):
        modality_gap_figure({})


# ----------------------------------------------------------------------------- dynamics


def test_convergence_figure_with_and_without_accuracy():
    hist = [{"iteration": i, "objective": 10.0 - i, "accuracy": 0.5 + 0.05 * i} for i in range(5)]
    fig = convergence_figure(hist)
    assert [t.name for t in fig.data] == ["objective", "accuracy (%)"]
    assert list(fig.data[0].y) == [10.0, 9.0, 8.0, 7.0, 6.0]
    np.testing.assert_allclose(fig.data[1].y, [50, 55, 60, 65, 70])  # fractions shown as %
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    assert fig.layout.yaxis2.title.text == "accuracy (%)"
    assert is_json(fig)
    plain = convergence_figure([{"iteration": i, "objective": -i} for i in range(3)])
    assert [t.name for t in plain.data] == ["objective"]
    with pytest.raises(ValueError, match="objective"):
        convergence_figure([{"iteration": 0}])


def test_sensitivity_figure_eps_axis_is_readable():
    rows = [{"lam": 0.8, "eps": eps, "accuracy": 0.5} for eps in (0.005, 0.01, 0.05, 0.1)]
    fig = sensitivity_figure(rows, x="eps", current=0.02)
    ax = fig.layout.xaxis
    # Ticks at the swept values and the current one only, no minor ticks, the data inside.
    assert list(ax.tickvals) == [0.005, 0.01, 0.02, 0.05, 0.1]
    assert list(ax.ticktext) == ["0.005", "0.01", "0.02", "0.05", "0.1"]
    assert ax.minor.ticks == "" and ax.minor.showgrid is False
    assert ax.range[0] < np.log10(0.005) and ax.range[1] > np.log10(0.1)
    assert ax.range[1] < np.log10(0.2)  # no empty decade beyond the data
    dense = [{"lam": 0.8, "eps": e, "accuracy": 0.5} for e in np.geomspace(1e-3, 1, 10)]
    assert sensitivity_figure(dense, x="eps").layout.xaxis.dtick == 1  # one tick a decade

@dataclass(frozen=True)
class Step:  # shaped like core.methods.otfusion.OTFusionStep
    iteration: int
    objective: float
    accuracy: float | None


def test_convergence_figure_accepts_records():
    fig = convergence_figure([Step(1, 3.0, None), Step(2, 2.5, None)])
    assert [t.name for t in fig.data] == ["objective"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [3.0, 2.5]
    fig = convergence_figure([Step(1, 3.0, 0.5), Step(2, 2.5, 0.75)])
    np.testing.assert_allclose(fig.data[1].y, [50.0, 75.0])


def test_sensitivity_figure_lines_per_eps():
    rows = [{"lam": lam, "eps": eps, "accuracy": 60 + 10 * lam - 100 * eps}
            for eps in (0.1, 0.01) for lam in (0.8, 0.2, 0.5)]
    fig = sensitivity_figure(rows)
    assert [t.name for t in fig.data] == ["ε = 0.01", "ε = 0.1"]
    for trace, eps in zip(fig.data, (0.01, 0.1)):
        assert list(trace.x) == [0.2, 0.5, 0.8]  # sorted along the swept axis
        np.testing.assert_allclose(trace.y, [60 + 10 * lam - 100 * eps for lam in (0.2, 0.5, 0.8)])
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    by_eps = sensitivity_figure([{**r, "accuracy": None, "changed_fraction": 0.1} for r in rows],
                                x="eps")
    assert [t.name for t in by_eps.data] == ["λ = 0.2", "λ = 0.5", "λ = 0.8"]
    assert by_eps.layout.xaxis.type == "log"
    np.testing.assert_allclose(by_eps.data[0].y, [10.0, 10.0])
    assert "changed" in by_eps.layout.yaxis.title.text
    assert is_json(fig) and is_json(by_eps)
    with pytest.raises(ValueError, match="'lam' or 'eps'"):
        sensitivity_figure(rows, x="theta")


# ----------------------------------------------------------------------------- metrics


def test_accuracy_figure_values_printed():
    fig = accuracy_figure({"CLIP": 0.612, "OTFusion": 0.715, "GPUA": 0.70})
    bar = fig.data[0]
    # Horizontal bars: method names on the y axis, never under the x axis' "0".
    assert bar.orientation == "h" and list(bar.y) == ["CLIP", "OTFusion", "GPUA"]
    np.testing.assert_allclose(bar.x, [61.2, 71.5, 70.0])
    assert list(bar.text) == ["61.2%", "71.5%", "70.0%"] and bar.textposition == "outside"
    assert fig.layout.yaxis.autorange == "reversed"  # first method on top
    assert fig.layout.xaxis.range[1] > 100 * 1.1  # room for "100.0%" right of a full bar
    assert bar.marker.color[0] == UNKNOWN_COLOR and bar.marker.color[1] != UNKNOWN_COLOR
    pct = accuracy_figure({"a": 55.0, "b": 80.0}, baseline="b")
    np.testing.assert_allclose(pct.data[0].x, [55.0, 80.0])
    assert pct.data[0].marker.color[1] == UNKNOWN_COLOR
    assert is_json(fig)


def test_per_class_figure_groups_and_top_changes():
    names = ["a", "b", "c"]
    fig = per_class_figure({"CLIP": [0.5, 1.0, 0.0], "OTFusion": [0.75, 1.0, 0.5]}, names)
    assert [t.name for t in fig.data] == ["CLIP", "OTFusion"]
    assert list(fig.data[0].x) == names
    np.testing.assert_allclose(fig.data[1].y, [75.0, 100.0, 50.0])
    assert fig.layout.barmode == "group"
    k = 60
    base = np.full(k, 50.0)
    fused = base.copy()
    fused[[7, 3, 42]] += [30.0, -20.0, 10.0]
    many = per_class_figure({"CLIP": base, "fused": fused}, [f"c{i}" for i in range(k)],
                            max_classes=3)
    assert list(many.data[0].x) == ["c3", "c7", "c42"]
    assert "3 of 60" in many.layout.title.subtitle.text
    assert len(many.layout.title.text) <= TITLE_MAX_CHARS
    # classes absent from the labels come as NaN (core.metrics.per_class_accuracy): no bar
    gap = per_class_figure({"CLIP": torch.tensor([0.5, float("nan"), 1.0])}, names)
    y = np.asarray(gap.data[0].y)
    assert np.isnan(y[1]) and y[0] == 50.0 and is_json(gap)
    with pytest.raises(ValueError, match="3 values per method"):
        per_class_figure({"CLIP": [0.5, 1.0]}, names)
    assert is_json(many)


def test_per_class_legend_sits_between_title_and_bars():
    fig = per_class_figure({"CLIP": [0.5, 1.0], "OTFusion": [1.0, 0.5], "GPUA": [0.0, 1.0],
                            "LaZSL": [1.0, 1.0]}, ["a", "b"])
    leg = fig.layout.legend
    assert leg.orientation == "h" and leg.y >= 1.0 and leg.yanchor == "bottom"  # above the bars
    title = fig.layout.title
    assert title.yref == "container" and title.yanchor == "top"  # pinned at the very top
    # the margin holds the title, its pad and two rows of legend
    assert fig.layout.margin.t >= title.pad.t + 20 + 2 * 20


def test_every_title_fits_a_phone():
    figs = [modality_gap_figure({"a": 0.5}), accuracy_figure({"a": 0.5}),
            per_class_figure({"a": [0.5]}, ["x"]), confusion_figure(np.eye(2), ["x", "y"]),
            convergence_figure([{"iteration": 1, "objective": 1.0}]),
            sensitivity_figure([{"lam": 1.0, "eps": 0.1, "accuracy": 0.5}])]
    for fig in figs:
        assert len(fig.layout.title.text) <= TITLE_MAX_CHARS, fig.layout.title.text

@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_figure_matches_sklearn(normalize):
    rng = np.random.default_rng(0)
    k = 4
    y_true = rng.integers(0, k - 1, size=80)  # class 3 never occurs: an empty row
    y_pred = np.where(rng.random(80) < 0.7, y_true, rng.integers(0, k, size=80))
    counts = confusion_matrix(y_true, y_pred, labels=range(k))
    names = ["w", "x", "y", "z"]
    fig = confusion_figure(torch.tensor(counts), names, normalize=normalize)
    heat = fig.data[0]
    ref = confusion_matrix(y_true, y_pred, labels=range(k), normalize="true" if normalize else None)
    np.testing.assert_allclose(np.asarray(heat.z), np.nan_to_num(ref), atol=1e-4)  # 4 decimals
    np.testing.assert_allclose(np.asarray(heat.customdata), counts)
    assert list(heat.y) == names and list(heat.x) == names  # rows true, columns predicted
    assert fig.layout.yaxis.title.text == "true" and fig.layout.xaxis.title.text == "predicted"
    assert fig.layout.xaxis.showticklabels
    # Counts printed in the cells, zeros blank, whatever the colour scale shows.
    assert heat.texttemplate == "%{text}"
    assert [list(r) for r in heat.text] == [[str(c) if c else "" for c in row] for row in counts]
    assert is_json(fig)


def test_confusion_figure_many_classes_hides_ticks_keeps_hover():
    k = 60
    fig = confusion_figure(np.eye(k) * 3, [f"c{i}" for i in range(k)])
    assert fig.layout.xaxis.showticklabels is False and fig.layout.yaxis.showticklabels is False
    assert k > CELL_TEXT_MAX_CLASSES and fig.data[0].text is None  # too small to print counts
    assert "true: %{y}" in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match=r"\(60, 60\)"):
        confusion_figure(np.eye(3), [f"c{i}" for i in range(k)])


def test_confusion_figure_caps_classes_to_most_confused():
    k = 30
    counts = np.eye(k) * 5
    counts[4, 9] = 3  # errors touch classes 4, 9, 20, 21 only
    counts[20, 21] = 1
    fig = confusion_figure(counts, [f"c{i}" for i in range(k)], max_classes=4)
    heat = fig.data[0]
    assert list(heat.y) == ["c4", "c9", "c20", "c21"]
    np.testing.assert_allclose(np.asarray(heat.customdata)[0], [5, 3, 0, 0])
    np.testing.assert_allclose(np.asarray(heat.z)[0, 1], 3 / 8, atol=1e-4)  # full-row rate
    assert "4 most confused of 30" in fig.layout.title.subtitle.text
