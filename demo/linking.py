"""The embedding maps linked to the gallery, both ways (FiftyOne / Embedding Projector style).

- A **click** on an image point opens that image in the gallery (its page, its preview, the top-3
  table) and rings it on both maps; Segmentation and LaZSL point at it too.
- A **lasso or box selection** narrows the gallery to the selected images (a *subset*, see
  ``demo.predictions``) and shows the same selection on the other map; a double-click clears it.
- A **search** by file name or class does the same for the images that match.

``gr.Plot`` has no click or selection event in Gradio 6 (only ``change``), so the page script
(:data:`MAP_SCRIPT`, added to ``demo.ui``'s) listens to Plotly's own ``plotly_click`` /
``plotly_selected`` / ``plotly_deselect`` / ``plotly_doubleclick`` events and writes
``{"click": i}`` or ``{"select": [i, ...] | null}`` into a hidden textbox (``#map-event``), whose
change event calls :func:`map_event`. Each image point carries its image index as
``customdata`` (``demo.maps``). The same script shows the hover thumbnail stored in the figure's
``layout.meta.thumbs``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import gradio as gr

from demo import embedding
from demo.predictions import (
    PAGE_SIZE,
    compare_method,
    details_markdown,
    gallery_page,
    make_subset,
    page_update,
    true_labels,
    view_indices,
)
from demo.state import Session, user_errors


class LinkOutputs(NamedTuple):
    """Everything a map click, a selection or a search can change."""

    subset: Any
    subset_clear: Any
    map_search: Any
    filter_mode: Any
    gallery: Any
    gallery_info: Any
    page: Any
    shown: Any
    selected: Any
    details: Any
    seg_pick: Any
    lazsl_pick: Any
    embed_before: Any
    embed_after: Any
    gap_plot: Any
    embed_note: Any


def _skip_all() -> LinkOutputs:
    return LinkOutputs(*([gr.skip()] * len(LinkOutputs._fields)))


def parse_event(payload) -> dict:
    """The script's message: ``{"click": int}`` or ``{"select": [int, ...] | None}``."""
    try:
        event = json.loads(payload or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(event, dict):
        return {}
    if isinstance(event.get("click"), int):
        return {"click": event["click"]}
    if "select" in event:
        ids = event["select"]
        if ids is None:
            return {"select": None}
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return {"select": ids}
    return {}


def search_matches(session: Session, query: str, compare: str | None = None) -> list[int]:
    """Images whose file name, true class or class predicted by ``compare`` contains ``query``
    (case-insensitive), in upload order."""
    q = str(query or "").strip().casefold()
    names = session.class_names
    truth = true_labels(session)
    pred = session.results[compare_method(session, compare)].pred.tolist()
    return [i for i, file in enumerate(session.names)
            if q in file.casefold() or q in names[pred[i]].casefold()
            or (truth[i] >= 0 and q in names[truth[i]].casefold())]


def _views(session: Session, compare, filter_mode, page, subset, *, projection, color_by,
           method, selected, focus: int | None = None) -> dict:
    """Gallery page and maps for a (possibly new) subset; ``focus``: an image to open."""
    compare = compare_method(session, compare)
    out = {}
    if focus is not None:
        if focus not in view_indices(session, compare, filter_mode, subset):
            # Not in what the gallery shows: show everything rather than hide the image.
            subset, filter_mode = None, "all"
            out.update(filter_mode="all", map_search="")
        page = view_indices(session, compare, filter_mode, subset).index(focus) // PAGE_SIZE + 1
    items, info, pages, page, shown = gallery_page(session, compare, filter_mode, page, subset)
    # The preview opens on the focused image, or closes: its old position may now hold another.
    # (A component, not gr.update: an update's selected_index=None leaves the preview open.)
    gallery = gr.Gallery(value=items, selected_index=None if focus is None else shown.index(focus))
    out.update(subset=subset, subset_clear=gr.update(visible=subset is not None),
               gallery=gallery, gallery_info=info, page=page_update(pages, page), shown=shown)
    if embedding.is_drawn(session, projection):
        figs = embedding.embedding_views(session, projection, color_by, selected, method, subset)
        out.update(zip(("embed_before", "embed_after", "gap_plot", "embed_note"), figs))
    return out


def _outputs(values: dict) -> LinkOutputs:
    return LinkOutputs(**{f: values.get(f, gr.skip()) for f in LinkOutputs._fields})


@user_errors
def map_event(session, payload, compare=None, filter_mode="all", page=1, subset=None,
              projection="pca", color_by=embedding.TRUE_CLASS, method=None,
              selected=None) -> LinkOutputs:
    """A click or a selection on a map (the script's ``payload``, see :func:`parse_event`)."""
    event = parse_event(payload)
    if not isinstance(session, Session) or not event:
        return _skip_all()
    n = len(session.names)
    common = dict(projection=projection, color_by=color_by, method=method)
    if "click" in event:
        index = event["click"]
        if not 0 <= index < n:
            return _skip_all()
        values = _views(session, compare, filter_mode, page, subset, selected=index, focus=index,
                        **common)
        values.update(selected=index, details=details_markdown(session, index),
                      seg_pick=gr.update(value=index), lazsl_pick=gr.update(value=index))
        return _outputs(values)
    ids = event["select"]
    subset = None
    if ids is not None:
        subset = make_subset(session, ids, "")
        subset["label"] = f"{len(subset['indices'])} selected on the map"
    values = _views(session, compare, filter_mode, 1, subset, selected=selected, **common)
    return _outputs({**values, "map_search": ""})


@user_errors
def search(session, query="", compare=None, filter_mode="all", projection="pca",
           color_by=embedding.TRUE_CLASS, method=None, selected=None) -> LinkOutputs:
    """Search by file name or class: the gallery shows the matches, the maps highlight them
    (an empty query shows everything again)."""
    if not isinstance(session, Session):
        return _skip_all()
    q = str(query or "").strip()
    subset = None if not q else make_subset(session, search_matches(session, q, compare),
                                            f"matching “{q}”")
    return _outputs(_views(session, compare, filter_mode, 1, subset, projection=projection,
                           color_by=color_by, method=method, selected=selected))


@user_errors
def clear_subset(session, compare=None, filter_mode="all", projection="pca",
                 color_by=embedding.TRUE_CLASS, method=None, selected=None) -> LinkOutputs:
    """The "show all images" button: drop the map selection or search."""
    return search(session, "", compare, filter_mode, projection, color_by, method, selected)


# The browser half (see the module docstring). Plotly re-renders a map in place
# (``Plotly.react``), which keeps its listeners; a new plot element gets bound on sight.
MAP_SCRIPT = """
  const mapBound = new WeakMap();
  const sendMap = (payload) => {
    const box = document.querySelector('#map-event textarea, #map-event input');
    if (!box) return;
    box.value = JSON.stringify(Object.assign({nonce: Date.now()}, payload));
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const tip = document.createElement('img');
  tip.id = 'map-thumb';
  tip.alt = '';
  tip.style.cssText = 'position:fixed;display:none;z-index:1000;pointer-events:none;' +
    'max-width:112px;max-height:112px;border:2px solid #fff;border-radius:4px;' +
    'box-shadow:0 2px 10px rgba(0,0,0,.35);background:#fff';
  document.body.appendChild(tip);
  const imageOf = (p) => (Number.isInteger(p.customdata) ? p.customdata : null);
  const firstImage = (e) => ((e && e.points) || []).map(imageOf).find((i) => i !== null);
  const bindMaps = () => {
    const plots = document.querySelectorAll(
      '#embed-before .js-plotly-plot, #embed-after .js-plotly-plot');
    for (const gd of plots) {
      if (!gd._ev || mapBound.get(gd) === gd._ev) continue;
      mapBound.set(gd, gd._ev);
      gd.on('plotly_click', (e) => {
        const i = firstImage(e);
        if (i !== undefined) sendMap({click: i});
      });
      gd.on('plotly_selected', (e) => {
        // Only a drawn lasso or box (a redraw re-announces the old selection without either).
        if (!e || !(e.lassoPoints || e.range)) return;
        sendMap({select: [...new Set(e.points.map(imageOf).filter((i) => i !== null))]});
      });
      // A double-click clears the selection (Plotly announces it only while one is drawn).
      gd.on('plotly_deselect', () => sendMap({select: null}));
      gd.on('plotly_doubleclick', () => sendMap({select: null}));
      gd.on('plotly_hover', (e) => {
        const i = firstImage(e);
        const thumbs = gd.layout && gd.layout.meta && gd.layout.meta.thumbs;
        if (i === undefined || !thumbs || !thumbs[i]) return;
        tip.src = thumbs[i];
        const x = (e.event && e.event.clientX) || 0, y = (e.event && e.event.clientY) || 0;
        tip.style.left = (x + 136 > window.innerWidth ? x - 128 : x + 16) + 'px';
        tip.style.top = (y + 136 > window.innerHeight ? y - 128 : y + 16) + 'px';
        tip.style.display = 'block';
      });
      gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
    }
  };
  let bindQueued = false;  // at most one look per frame, however busy the page is
  new MutationObserver(() => {
    if (bindQueued) return;
    bindQueued = true;
    requestAnimationFrame(() => { bindQueued = false; bindMaps(); });
  }).observe(document.body, {childList: true, subtree: true});
"""
