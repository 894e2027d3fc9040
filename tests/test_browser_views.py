"""Issue 11, points 8-10 in a real browser (Debian's Chromium, Playwright; fixtures from
``test_browser``): the embedding maps linked to the gallery both ways, captions that fit, the
top-3 table beside the gallery, and figures readable when projected and on a 390 px phone.

Geometry is read from the rendered page (bounding boxes of Plotly's SVG text, table cells), so
each check fails on the layout that the issue describes. Screenshots go to ``artifacts/browser/``.
"""

import pytest
from test_browser import _serve, _shot, _upload, browser  # noqa: F401 (fixture)
from test_browser import pytestmark as browser_marks

pytestmark = browser_marks

# Bounding boxes of the elements matched by a selector, in page pixels.
BOXES = """(sel) => [...document.querySelectorAll(sel)].map((e) => {
  const r = e.getBoundingClientRect();
  return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom, text: e.textContent};
}).filter((b) => b.x1 > b.x0 && b.y1 > b.y0)"""
# Page position of the first point of a map's image trace, and its image index.
FIRST_POINT = """(plot) => {
  const gd = document.querySelector(plot + ' .js-plotly-plot');
  const t = gd._fullData.find((d) => Array.isArray(d.customdata) && d.customdata.length);
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return {x: r.left + gd._fullLayout.xaxis.l2p(t.x[0]), y: r.top + gd._fullLayout.yaxis.l2p(t.y[0]),
          index: t.customdata[0]};
}"""

# Per caption label: lines shown (by its height), and the width its first two lines need (canvas
# text metrics in the label's font) against the room inside its padding.
SHOWN_LINES = """(sel) => [...document.querySelectorAll(sel)].map((e) => {
  const cs = getComputedStyle(e), ctx = document.createElement('canvas').getContext('2d');
  ctx.font = cs.font;
  const first = e.textContent.split('\\n').slice(0, 2);
  return {lines: Math.round(e.clientHeight / parseFloat(cs.lineHeight) - 0.3),
          need: Math.max(...first.map((l) => ctx.measureText(l).width)),
          room: e.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight),
          text: first.join(' / ')};
})"""


def _overlap(a, b, tol=0.5) -> bool:
    return (a["x0"] < b["x1"] - tol and b["x0"] < a["x1"] - tol
            and a["y0"] < b["y1"] - tol and b["y0"] < a["y1"] - tol)


def _pairs_overlapping(boxes) -> list:
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if _overlap(a, b)]


def _boxes(page, selector):
    return page.evaluate(BOXES, selector)


def _gallery_captions(page) -> list[str]:
    return page.locator("#fusion-gallery .caption-label").all_inner_texts()


def _wait_info(page, pattern: str) -> None:
    """Wait for the gallery's info line (in the Predictions tab, maybe not the one shown)."""
    page.wait_for_selector(f"#gallery-info >> text=/{pattern}/", state="attached",
                           timeout=30_000)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from core.models.tiny import tiny_test_models
    from demo import ui

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path_factory.mktemp("features")))
        keys = tiny_test_models()
        demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"]])
        try:
            yield _serve(demo)
        finally:
            demo.close()


def _run_shapes(page, url, *, lazsl: bool = False) -> None:
    from demo.examples import example_paths

    page.goto(url)
    page.wait_for_selector("text=VLM x VFM Fusion Lab")
    _upload(page, example_paths()["shapes"])
    if lazsl:
        page.get_by_label("LaZSL").check()
    page.locator("#run-button").click()
    # The Run streams its stages (CLIP first): wait for the last one.
    page.wait_for_selector("#status >> text=/Features ready/", timeout=120_000)
    page.wait_for_selector("#summary >> text=OTFusion", timeout=30_000)
    page.locator("#fusion-gallery img").first.wait_for(timeout=30_000)


def _draw_maps(page) -> None:
    page.get_by_role("tab", name="Embedding").click()
    page.get_by_role("button", name="Draw maps").click()
    page.wait_for_selector("#embed-after .js-plotly-plot", timeout=60_000)
    page.wait_for_timeout(800)


def test_linked_maps_and_gallery(browser, app):  # noqa: F811
    """Point 8 and the linked view: click -> gallery preview and top-3; lasso and search ->
    gallery subset; hover -> file, every method, thumbnail; colour modes; captions that fit."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _run_shapes(page, app)
        # Captions: the two lines shown fit their label; the full text in the image's title.
        widths = page.evaluate(SHOWN_LINES, "#fusion-gallery .caption-label")
        assert len(widths) == 20 and all(w["lines"] == 2 and w["need"] <= w["room"]
                                         for w in widths), widths
        titles = page.locator("#fusion-gallery img").evaluate_all("ims => ims.map(i => i.title)")
        assert all("CLIP zero-shot:" in t and "OTFusion:" in t for t in titles[:20]), titles[:2]
        # The top-3 table sits beside the gallery, not below it.
        page.locator("#fusion-gallery .thumbnail-item").first.click()
        page.wait_for_selector("#details >> text=top 3", timeout=30_000)
        gal, det = (page.locator(s).bounding_box() for s in ("#fusion-gallery", "#details"))
        assert det["x"] >= gal["x"] + gal["width"] - 5 and det["y"] < gal["y"] + 100, (gal, det)
        table = page.locator("#details table").bounding_box()
        assert table["y"] + table["height"] < 900, table  # in view with the preview
        _shot(page, "views_gallery_preview")

        _draw_maps(page)
        # Hover: file name, true class and each method; a thumbnail next to the cursor.
        point = page.evaluate(FIRST_POINT, "#embed-before")
        page.mouse.move(point["x"], point["y"])
        page.wait_for_selector("#embed-before .hovertext", timeout=10_000)
        hover = page.locator("#embed-before .hovertext").first.text_content()
        assert "true:" in hover and "CLIP zero-shot:" in hover and "OTFusion:" in hover, hover
        assert page.evaluate("() => getComputedStyle(document.getElementById('map-thumb'))"
                             ".display") == "block"
        assert page.evaluate("() => document.getElementById('map-thumb').src").startswith(
            "data:image/jpeg;base64,")
        _shot(page, "views_map_hover")
        # Click: the gallery opens that image in its preview and the top-3 table names it.
        page.mouse.click(point["x"], point["y"])
        page.wait_for_selector("#embed-note >> text=/ringed point/", timeout=30_000)
        name = page.locator("#embed-note strong").last.inner_text()
        page.get_by_role("tab", name="Predictions").click()
        page.wait_for_selector(f"#details >> text={name}", timeout=30_000)
        assert page.locator("#fusion-gallery .preview").count() == 1
        assert name in page.locator("#fusion-gallery .preview img").first.get_attribute("title")

        # Lasso the left half of the "after" map: the gallery shows exactly the lassoed images.
        page.get_by_role("tab", name="Embedding").click()
        page.wait_for_timeout(500)
        area = page.locator("#embed-after .nsewdrag").bounding_box()
        inside = page.evaluate("""() => {
          const gd = document.querySelector('#embed-after .js-plotly-plot');
          const xa = gd._fullLayout.xaxis, ids = new Set();
          for (const t of gd._fullData) {
            if (!Array.isArray(t.customdata) || t.name === 'selected') continue;
            t.x.forEach((x, j) => { if (xa.l2p(x) < xa._length / 2) ids.add(t.customdata[j]); });
          }
          return ids.size;
        }""")
        corners = [(0.005, 0.01), (0.5, 0.01), (0.5, 0.99), (0.005, 0.99), (0.005, 0.02)]
        page.mouse.move(area["x"] + corners[0][0] * area["width"],
                        area["y"] + corners[0][1] * area["height"])
        page.mouse.down()
        for fx, fy in corners[1:]:
            page.mouse.move(area["x"] + fx * area["width"], area["y"] + fy * area["height"],
                            steps=6)
        page.mouse.up()
        page.get_by_role("tab", name="Predictions").click()
        _wait_info(page, f"{inside} selected on the map")
        assert inside > 0 and page.locator("#fusion-gallery .preview").count() == 0
        assert len(_gallery_captions(page)) == inside
        assert page.locator("#subset-clear").is_visible()
        _shot(page, "views_lasso_gallery")
        page.locator("#subset-clear").click()
        _wait_info(page, r"^20 of 20 images \(every image\)")
        assert len(_gallery_captions(page)) == 20
        # A lasso round the whole "before" map, then a double-click: all selected, then cleared.
        page.get_by_role("tab", name="Embedding").click()
        page.wait_for_timeout(500)
        area = page.locator("#embed-before .nsewdrag").bounding_box()
        ring = [(2, 2), (area["width"] - 2, 2), (area["width"] - 2, area["height"] - 2),
                (2, area["height"] - 2), (2, 4)]
        page.mouse.move(area["x"] + ring[0][0], area["y"] + ring[0][1])
        page.mouse.down()
        for dx, dy in ring[1:]:
            page.mouse.move(area["x"] + dx, area["y"] + dy, steps=6)
        page.mouse.up()
        _wait_info(page, "20 selected on the map")
        page.mouse.dblclick(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
        _wait_info(page, r"^20 of 20 images \(every image\)")

        # Search by class: matching points stay bright on the maps, the gallery keeps only them.
        page.get_by_role("tab", name="Embedding").click()
        search = page.locator("#map-search textarea, #map-search input").first
        search.fill("star")
        search.press("Enter")
        page.get_by_role("tab", name="Predictions").click()
        _wait_info(page, "matching “star”")
        caps = page.locator("#fusion-gallery img").evaluate_all("ims => ims.map(i => i.alt)")
        assert caps and all("star" in c for c in caps), caps
        page.get_by_role("tab", name="Embedding").click()
        dims = page.evaluate("""() => {
          const gd = document.querySelector('#embed-before .js-plotly-plot');
          return gd.data.filter((t) => Array.isArray(t.customdata) && t.name !== 'selected')
                        .map((t) => (t.selectedpoints || []).length);
        }""")
        assert sum(dims) == len(caps), (dims, caps)
        _shot(page, "views_search_maps")

        # Colour modes: right / wrong draws a "right" and/or "wrong" legend entry.
        page.get_by_text("right / wrong", exact=True).click()
        page.wait_for_selector("#embed-before .legendtext >> text=/^(right|wrong)$/",
                               timeout=30_000)
        page.get_by_text("methods disagree", exact=True).click()
        page.wait_for_selector("#embed-before .legendtext >> text=/agree|different answers/",
                               timeout=30_000)
        # Class names beside the stars never overlap each other.
        labels = _boxes(page, "#embed-before .textpoint text, #embed-after .textpoint text")
        assert _pairs_overlapping(labels) == [], labels
    finally:
        page.close()


def test_figures_readable_when_projected(browser, app):  # noqa: F811
    """Point 10: counts in the confusion cells, no "0" under a method name, the per-class legend
    clear of the bars, eps ticks uncrowded, LaZSL labels apart, the upload boxes not clipped."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _run_shapes(page, app, lazsl=True)
        page.get_by_role("tab", name="Metrics").click()
        page.wait_for_selector("#confusion-plot .js-plotly-plot", timeout=30_000)
        page.wait_for_timeout(800)
        heat = page.evaluate("""() => {
          const d = document.querySelector('#confusion-plot .js-plotly-plot').data[0];
          return {template: d.texttemplate, text: d.text};
        }""")
        # Every cell prints its count (blank for 0): the counts add up to the 20 images.
        assert heat["template"] == "%{text}" and len(heat["text"]) == 4
        assert sum(int(t) for row in heat["text"] for t in row if t) == 20
        drawn = [t for t in page.locator("#confusion-plot g.heatmap-label text").all_text_contents()
                 if t]
        assert sorted(drawn) == sorted(t for row in heat["text"] for t in row if t)
        ticks = _boxes(page, "#accuracy-plot .xtick text, #accuracy-plot .ytick text")
        assert any(b["text"] == "0" for b in ticks) and _pairs_overlapping(ticks) == [], ticks
        legend = _boxes(page, "#per-class-plot g.legend")[0]
        plot_area = _boxes(page, "#per-class-plot .nsewdrag")[0]
        assert legend["y1"] <= plot_area["y0"] + 1, (legend, plot_area)
        title = _boxes(page, "#per-class-plot .gtitle")[0]
        assert not _overlap(title, legend), (title, legend)
        _shot(page, "views_metrics")

        page.get_by_role("tab", name="Dynamics").click()
        page.get_by_role("button", name="Run the λ / ε sensitivity sweep").click()
        page.wait_for_selector("#sweep-eps .js-plotly-plot", timeout=60_000)
        page.wait_for_timeout(800)
        eps_ticks = _boxes(page, "#sweep-eps .xtick text")
        assert 2 <= len(eps_ticks) <= 6 and _pairs_overlapping(eps_ticks) == [], eps_ticks
        # Ticks at the swept ε only (core.config.SWEEP_EPSS), no minor-tick digits between.
        assert [b["text"] for b in eps_ticks] == ["0.005", "0.01", "0.05", "0.1"], eps_ticks
        _shot(page, "views_dynamics")

        page.get_by_role("tab", name="LaZSL", exact=True).click()
        page.wait_for_selector("#crop-image img", timeout=60_000)
        _shot(page, "views_lazsl")

        page.get_by_text("Advanced (LaZSL crops, attributes, labels)").click()
        for box in ("#attributes-upload", "#labels-upload"):
            page.locator(box).scroll_into_view_if_needed()
            outer = page.locator(box).bounding_box()
            for inner in _boxes(page, f"{box} button, {box} .wrap"):
                assert inner["y1"] <= outer["y"] + outer["height"] + 0.5, (box, inner, outer)
        # "Model precision": every option (demo.precision) inside the column, the app's
        # default picked, and the notes of the Run name the precision each model ran in.
        from demo.precision import app_precision, precision_choices

        page.locator("#precision-radio").scroll_into_view_if_needed()
        outer = page.locator("#precision-radio").bounding_box()
        labels = _boxes(page, "#precision-radio label")
        assert [b["text"].strip() for b in labels] == [t for t, _ in precision_choices()]
        for b in labels:
            assert outer["x"] - 0.5 <= b["x0"] and b["x1"] <= outer["x"] + outer["width"] + 0.5
        picked = page.locator("#precision-radio label:has(input:checked)").inner_text()
        assert picked.strip() == dict((v, t) for t, v in precision_choices())[app_precision()]
        assert "Model precision: Tiny CLIP ViT (test): fp32" in \
            page.locator(".prose.notes-panel").inner_text()
        _shot(page, "views_advanced")
    finally:
        page.close()


def test_mobile_tables_titles_and_accuracy(browser, app):  # noqa: F811
    """Point 9 at 390 x 844: table headers on one line, plot titles and the accuracy chart
    inside their plots."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        _run_shapes(page, app)
        # The inputs stack above the results on a phone: Run scrolled to where results start.
        top = page.evaluate("document.getElementById('status').getBoundingClientRect().top")
        assert -2 <= top < 844 / 2, top
        lines = page.evaluate("""() => [...document.querySelectorAll('#summary th')].map((th) => {
          const r = document.createRange(); r.selectNodeContents(th);
          return new Set([...r.getClientRects()].map((q) => Math.round(q.top))).size;
        })""")
        assert lines and max(lines) == 1, lines
        _shot(page, "views_mobile_predictions")
        for tab, last in (("Metrics", "#confusion-plot"), ("Embedding", "#embed-after")):
            button = page.get_by_role("tab", name=tab, exact=True)
            if not button.is_visible():
                page.locator("#tabs .overflow-menu > button").first.click(timeout=10_000)
                button = page.locator("#tabs .overflow-dropdown button", has_text=tab).first
            button.click()
            if tab == "Embedding":
                page.get_by_role("button", name="Draw maps").click()
            page.wait_for_selector(f"{last} .js-plotly-plot .gtitle", timeout=60_000)
            page.wait_for_timeout(1000)
            plots = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
              .filter((gd) => gd.offsetParent !== null).map((gd) => {
                const r = gd.getBoundingClientRect();
                const inner = [...gd.querySelectorAll('.gtitle, .g-gtitle text, .bartext')]
                  .map((t) => t.getBoundingClientRect());
                return {x0: r.left, x1: r.right, inner: inner.map((b) => [b.left, b.right])};
              })""")
            assert plots, tab
            for p in plots:
                for left, right in p["inner"]:
                    assert p["x0"] - 0.5 <= left and right <= p["x1"] + 0.5, (tab, p)
            if tab == "Metrics":  # the per-class legend clear of its title and bars
                legend = _boxes(page, "#per-class-plot g.legend")[0]
                title = _boxes(page, "#per-class-plot .gtitle")[0]
                plot_area = _boxes(page, "#per-class-plot .nsewdrag")[0]
                assert not _overlap(title, legend) and legend["y1"] <= plot_area["y0"] + 1
            _shot(page, f"views_mobile_{tab.lower()}")
    finally:
        page.close()


def _open_tab(page, name: str) -> None:
    """Click a tab, through the overflow menu when it does not fit the row (a phone)."""
    button = page.get_by_role("tab", name=name)
    if not button.is_visible():
        page.locator(".overflow-menu > button").first.click(timeout=10_000)
        button = page.locator(".overflow-dropdown button", has_text=name).first
    button.click()


def test_compare_two_runs(browser, app):  # noqa: F811
    """Compare runs: two Runs with different prompt templates; the Compare tab lists both (A the
    previous, B the current), the settings that differ, and the images where they disagree; at
    1400 x 900 and 390 x 844."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _run_shapes(page, app)
        page.get_by_label("Prompt template(s), one per line").fill("a drawing of a {}.")
        page.locator("#run-button").click()
        _open_tab(page, "Compare")
        # B follows the second Run (opened during the Run, the tab shows its first stage, CLIP
        # only, until the Run ends and the tab refreshes).
        page.wait_for_function("() => { const v = (document.querySelector('#cmp-b input') || {})"
                               ".value || ''; return v.startsWith('#2') && v.includes('OTFusion');"
                               " }", timeout=120_000)
        page.wait_for_selector("#cmp-info >> text=/OTFusion disagrees/", timeout=30_000)
        a = page.locator("#cmp-a input").input_value()
        b = page.locator("#cmp-b input").input_value()
        assert a.startswith("#1 ") and "20 images" in a and "(current)" not in a, a
        assert b.startswith("#2 ") and b.endswith("(current)"), b
        assert "prompt “a drawing of a {}.”" in b and "prompt" not in a, (a, b)
        page.locator("#cmp-a input").click()
        options = [o.split("\n")[-1] for o in page.get_by_role("option").all_inner_texts()]
        assert len(options) == 2 and options[0].startswith("#2") and options[1].startswith("#1")
        page.keyboard.press("Escape")
        settings = page.locator("#cmp-settings").inner_text()
        assert "a drawing of a {}." in settings and "a photo of a {}." in settings, settings
        info = page.locator("#cmp-info").inner_text()
        shown = int(info.split(" of 20 images where OTFusion disagrees")[0].split()[-1])
        row = page.locator("#cmp-table tr", has_text="OTFusion").inner_text().split("\t")
        assert row[-1].strip() == str(shown), (row, info)  # the table's count, the same
        captions = page.locator("#cmp-gallery .caption-label").all_inner_texts()
        assert len(captions) == min(shown, 60), (captions, info)
        assert all(c.startswith("A: ") and "\nB: " in c for c in captions), captions
        assert page.locator("#cmp-table tr", has_text="CLIP zero-shot").count() == 1
        page.locator("#cmp-note").scroll_into_view_if_needed()
        _shot(page, "views_compare")
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(800)
        _shot(page, "views_mobile_compare")
    finally:
        page.close()
