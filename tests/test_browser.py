"""The app in a real browser: Debian's Chromium driven headless by Playwright (never downloaded).

Upload an example zip, Run, and check the gallery, a plot and a segmentation overlay render;
screenshots go to ``artifacts/browser/`` (gitignored) for a human to look at.
"""

import contextlib
import os
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _serve(demo):
    from demo import ui

    port = _free_port()
    ui.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
              quiet=True)
    return f"http://127.0.0.1:{port}/"


def _upload(page, path, attempts: int = 5) -> None:
    """Set the image upload. A file set while the page is still hydrating is silently dropped
    (no upload request is made), so retry until the browser actually sends it; never resend one
    that was sent (that would upload it twice)."""
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/upload?" in r.url else None)
    for _ in range(attempts):
        page.locator("#images-upload input[type=file]").first.set_input_files(str(path))
        for _ in range(20):
            if sent:
                break
            page.wait_for_timeout(250)
        if sent:
            break
    page.wait_for_selector(f'#images-upload td.filename[aria-label="{path.name}"]',
                           state="attached", timeout=45_000)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_upload_run_gallery_plot_and_overlay(browser, tmp_path, monkeypatch):
    from core.models.tiny import tiny_test_models
    from demo import ui
    from demo.examples import example_paths

    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "features"))
    keys = tiny_test_models()
    demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"]])
    url = _serve(demo)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("text=VLM x VFM Fusion Lab")
        _upload(page, example_paths()["shapes"])
        page.locator("#run-button").click()
        # The Run streams its stages (CLIP first): wait for the last one.
        _wait_text(page, "#status", "Features ready", 90_000)
        page.wait_for_selector("#summary >> text=OTFusion", timeout=30_000)
        gallery = page.locator("#fusion-gallery img")
        gallery.first.wait_for(timeout=30_000)
        assert gallery.count() == 20  # 4 shapes x 5, folder labels
        assert page.locator("text=/✓|✗/").count() > 0  # captions mark right and wrong
        _shot(page, "1_predictions")

        # λ typed into the slider box re-solves OTFusion from the cached features.
        lam = page.locator("#lam-slider input[type=number]")
        lam.fill("0.35")
        lam.press("Enter")
        page.get_by_role("tab", name="Dynamics").click()
        page.wait_for_selector("#dynamics-note >> text=/λ = 0.35/", timeout=30_000)

        page.get_by_role("tab", name="Metrics").click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
        assert page.locator(".js-plotly-plot").count() >= 2
        _shot(page, "2_metrics")

        page.get_by_role("tab", name="Embedding").click()
        page.get_by_role("button", name="Draw maps").click()
        page.wait_for_selector("text=/After: GPUA-mapped VFM vs text/", timeout=60_000)
        _shot(page, "3_embedding")

        page.get_by_role("tab", name="Segmentation").click()
        page.get_by_role("button", name="Segment", exact=True).click()
        overlay = page.locator("#seg-image img")
        overlay.wait_for(timeout=60_000)
        assert overlay.evaluate("img => img.naturalWidth") > 0
        assert page.locator(".seg-legend").count() == 1
        _shot(page, "4_segmentation")
    finally:
        page.close()
        demo.close()


def test_without_weights_the_playground_opens_first(browser, tmp_path, monkeypatch):
    from demo import ui

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("FUSIONLAB_TEST_MODELS", raising=False)
    demo = ui.build_app()
    url = _serve(demo)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("text=Model weights not found on this machine")
        assert page.get_by_role("tab", name="Playground").get_attribute("aria-selected") == "true"
        page.wait_for_selector("text=/CLIP zero-shot .* -> OTFusion/", timeout=60_000)
        page.locator(".js-plotly-plot").nth(3).wait_for(timeout=30_000)  # accuracy, gap, maps
        _shot(page, "0_offline_landing")
    finally:
        page.close()
        demo.close()


def _wait_text(page, selector: str, pattern: str, timeout: int = 60_000) -> None:
    page.wait_for_selector(f"{selector} >> text=/{pattern}/", timeout=timeout)


def _type_enter(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")  # no click elsewhere: Enter alone must apply the value


def _error_badges(page) -> int:
    """Gradio's red "Error" status on outputs of a failed event."""
    return page.get_by_text("Error", exact=True).count()


def _all_tabs(page, prefix: str) -> None:
    for tab in ("Predictions", "Metrics", "Compare", "Embedding", "Dynamics", "Segmentation",
                "LaZSL", "Playground"):
        button = page.get_by_role("tab", name=tab, exact=True)
        if not button.is_visible():  # narrow screens move some tabs into Gradio's overflow menu
            page.locator("#tabs .overflow-menu > button").first.click(timeout=10_000)
            button = page.locator("#tabs .overflow-dropdown button", has_text=tab).first
        button.click(timeout=10_000)
        page.wait_for_timeout(600)
        _shot(page, f"{prefix}_{tab.lower()}")


def test_one_state_model_in_the_browser(browser, tmp_path, monkeypatch):
    """Issue 11, points 1, 2, 3, 5 and 6, then screenshots of every tab at two sizes."""
    from core.models.tiny import tiny_test_models
    from demo import ui
    from demo.examples import example_paths

    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "features"))
    keys = tiny_test_models()
    demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"]])
    url = _serve(demo)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("text=VLM x VFM Fusion Lab")
        _upload(page, example_paths()["shapes"])
        page.get_by_label("LaZSL").check()
        page.locator("#run-button").click()
        _wait_text(page, "#summary", "LaZSL", 120_000)
        page.locator("#fusion-gallery img").first.wait_for(timeout=30_000)

        # 1. Each slider changes its own method; the others keep their shown settings.
        _type_enter(page, "lam-slider", "1.6")
        _wait_text(page, "#summary", "λ 1.6, ε 0.01")
        page.get_by_role("tab", name="GPUA settings").click()
        # Gradio mounts a tab's sliders when it opens and then sets their values: a value typed
        # within those first moments is overwritten (no person types that fast).
        page.locator("#gpua-ths-steps-slider input[type=number]").wait_for()
        page.wait_for_timeout(500)
        # Then a typed value must be applied at once: it used to be "lost" when the Run's LaZSL
        # stage, still being solved, was shown after the re-solve with the Run's settings.
        _type_enter(page, "gpua-ths-steps-slider", "0")
        _wait_text(page, "#summary", "THS 0 steps")
        page.get_by_role("tab", name="LaZSL settings").click()
        page.locator("#lazsl-theta-slider input[type=number]").wait_for()
        page.wait_for_timeout(500)
        _type_enter(page, "lazsl-theta-slider", "0.3")
        _wait_text(page, "#summary", "θ 0.3")
        summary = page.locator("#summary").inner_text()
        assert "λ 1.6, ε 0.01" in summary and "THS 0 steps" in summary, summary
        # 6. every live slider, its method's settings tab open, and the whole summary table it
        # changes are on screen together at 1400x900, without scrolling
        page.evaluate("window.scrollTo(0, 0)")
        for tab, sliders in (("OTFusion", ("lam", "eps", "n-iter")),
                             ("GPUA", ("gpua-lam", "gpua-eps", "gpua-ths-steps")),
                             ("LaZSL", ("lazsl-theta",))):
            page.get_by_role("tab", name=f"{tab} settings").click()
            page.wait_for_timeout(300)
            for elem in (*(f"#{s}-slider" for s in sliders), "#summary tbody tr:last-child"):
                box = page.locator(elem).bounding_box()
                assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900, (
                    tab, elem, box)
        page.get_by_role("tab", name="Dynamics").click()
        _wait_text(page, "#dynamics-note", "λ = 1.6")
        page.get_by_role("button", name="Run the λ / ε sensitivity sweep").click()
        _wait_text(page, "#sweep-note", "current λ = 1.6")
        assert page.locator("#dynamics-note").inner_text().count("λ = 1.6") == 1

        # 5. The embedding maps keep their full size after a visit to another tab.
        page.get_by_role("tab", name="Embedding").click()
        page.get_by_role("button", name="Draw maps").click()
        page.wait_for_selector("text=/After: GPUA-mapped VFM vs text/", timeout=60_000)
        page.get_by_role("tab", name="Metrics").click()
        page.wait_for_timeout(500)
        page.get_by_role("tab", name="Embedding").click()
        page.wait_for_timeout(1500)
        for plot in ("#embed-before", "#embed-after"):
            container = page.locator(plot).bounding_box()
            svg = page.locator(f"{plot} svg.main-svg").first.bounding_box()
            assert svg and container and svg["width"] > 0.8 * container["width"], (plot, svg)
            assert page.locator(f"{plot} g.legend").count() == 1, plot
        page.get_by_role("tab", name="Segmentation").click()
        page.get_by_role("button", name="Segment", exact=True).click()
        page.locator("#seg-image img").wait_for(timeout=60_000)
        _all_tabs(page, "desktop_shapes")

        # 3. A failed Run: one message, the previous results stay, no error badges.
        page.get_by_role("tab", name="Predictions").click()
        n_before = page.locator("#fusion-gallery img").count()
        page.get_by_label("Class names (one per line or comma-separated)").fill("circle")
        page.locator("#run-button").click()
        _wait_text(page, "#status", "previous Run")
        page.wait_for_timeout(1000)
        assert page.locator("#fusion-gallery img").count() == n_before
        assert _error_badges(page) == 0
        assert page.locator("text=/expected at least 2 classes/").count() == 1, (
            page.locator("#status").inner_text())
        _shot(page, "desktop_failed_run")

        # 2. A new Run blanks every view derived from the previous one.
        page.get_by_label("Class names (one per line or comma-separated)").fill("")
        page.locator("#images-upload button[aria-label='Clear']").first.click()
        _upload(page, example_paths()["scenes"])
        page.locator("#run-button").click()
        _wait_text(page, "#status", "Features ready", 120_000)
        page.get_by_role("tab", name="Embedding").click()
        _wait_text(page, "#embed-note", "Press Draw maps")
        assert page.locator("#embed-after svg.main-svg").count() == 0
        page.get_by_role("tab", name="Dynamics").click()
        _wait_text(page, "#sweep-note", "No sweep for this Run yet")
        page.get_by_role("tab", name="Segmentation").click()
        assert page.locator("#seg-image img").count() == 0
        page.get_by_role("tab", name="LaZSL", exact=True).click()
        _wait_text(page, "#lazsl-table", "scene|sky|beach|forest|city|night|mountain", 60_000)
        assert "circle" not in page.locator("#lazsl-table").inner_text()

        page.set_viewport_size({"width": 390, "height": 844})
        _all_tabs(page, "mobile_scenes")
    finally:
        page.close()
        demo.close()


def _otfusion_row(page) -> str:
    return page.locator("#summary tr", has_text="OTFusion").first.inner_text()


@contextlib.contextmanager
def _app_page(browser, tmp_path, monkeypatch, *, models=("clip_vit", "dinov2"),
              size=(1400, 900)):
    """A page on the app served with the tiny test ``models`` listed first (closed after)."""
    from core.models.tiny import tiny_test_models
    from demo import ui

    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "features"))
    keys = tiny_test_models()
    demo = ui.build_app(extra_models=[keys[m] for m in models])
    url = _serve(demo)
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    try:
        page.goto(url)
        page.wait_for_selector("text=VLM x VFM Fusion Lab")
        yield page
    finally:
        page.close()
        demo.close()


def test_recipe_switch_changes_the_otfusion_row(browser, tmp_path, monkeypatch):
    """Two VFMs picked in the multiselect, Run, then the OTFusion recipe radio: the OTFusion row
    names the official recipe and its sources, λ is greyed out as uniform, GPUA's row stays, and
    Dynamics draws one weight line per source."""
    from demo.examples import example_paths

    with _app_page(browser, tmp_path, monkeypatch,
                   models=("clip_vit", "dinov2", "dinov3")) as page:
        _upload(page, example_paths()["shapes"])
        picker = page.locator("#vfm-picker input")
        picker.click()
        picker.fill("Tiny DINOv3")
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.locator("#run-button").click()
        _wait_text(page, "#summary", "paper recipe: λ 0.8, ε 0.01, 10 iter", 120_000)
        page.locator("#fusion-gallery img").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # the Run's follow-up events settle first
        paper = _otfusion_row(page)
        assert "Tiny DINOv2 (test)" in paper and "Tiny DINOv3 (test)" in paper, paper
        gpua = page.locator("#summary tr", has_text="GPUA").first.inner_text()

        page.locator("#otfusion-recipe-choice label", has_text="official").click()
        _wait_text(page, "#summary", "official recipe: λ 1/J")
        official = _otfusion_row(page)
        assert official != paper and "adaptive weights" in official, official
        assert "Tiny DINOv3 (test)" in official and "Y: Tiny CLIP ViT (test)" in official
        assert page.locator("#summary tr", has_text="GPUA").first.inner_text() == gpua
        assert page.locator("#lam-uniform-checkbox input").is_checked()
        assert page.locator("#lam-slider input[type=range]").is_disabled()
        assert page.locator("#otfusion-weights-choice input[value=adaptive]").is_checked()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#live-settings").first.screenshot(path=str(ARTIFACTS / "recipe_controls.png"))
        _shot(page, "recipe_official")

        page.get_by_role("tab", name="Dynamics").click()
        _wait_text(page, "#dynamics-note", "official recipe")
        weights = page.locator("#weights-plot g.scatterlayer g.trace")
        weights.first.wait_for(timeout=30_000)
        assert weights.count() == 4  # η of CLIP's image features and both VFMs, λ of CLIP
        _shot(page, "recipe_dynamics")


def test_run_without_weights_shows_one_plain_message(browser, tmp_path, monkeypatch):
    """Issue 11, point 4: no error box with server paths over the tabs, no error badges."""
    from demo import ui
    from demo.examples import example_paths

    hub = tmp_path / "empty-hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("FUSIONLAB_TEST_MODELS", raising=False)
    demo = ui.build_app()
    url = _serve(demo)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(url)
        page.wait_for_selector("text=Model weights not found on this machine")
        page.wait_for_selector("text=/CLIP zero-shot .* -> OTFusion/", timeout=60_000)
        _upload(page, example_paths()["shapes"])
        page.locator("#run-button").click()
        _wait_text(page, "#status", "Model weights are not available", 60_000)
        page.wait_for_timeout(1000)
        assert str(hub) not in page.content() and "gaierror" not in page.content()
        assert _error_badges(page) == 0
        assert page.locator("#status >> text=/Playground tab works/").count() == 1
        _shot(page, "offline_run")
    finally:
        page.close()
        demo.close()


def test_notes_panel_shows_odd_file_names_as_typed(browser, tmp_path, monkeypatch):
    """Names are escaped exactly once: no "&lt;img" on screen, no <img> element either."""
    import io
    import zipfile

    from PIL import Image

    from core.models.tiny import tiny_test_models
    from demo import ui

    evil, amp = "<img src=x onerror=alert(1)>.png", "it's & co.png"
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls, color in (("red", (220, 30, 30)), ("green", (30, 180, 60))):
            for i in range(2):
                buf = io.BytesIO()
                Image.new("RGB", (48, 40), color).save(buf, format="PNG")
                zf.writestr(f"{cls}/{i}.png", buf.getvalue())
        zf.writestr(f"red/{evil}", b"not an image")
        zf.writestr(f"green/{amp}", b"not an image either")
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "features"))
    keys = tiny_test_models()
    demo = ui.build_app(extra_models=[keys["clip_vit"], keys["dinov2"]])
    url = _serve(demo)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("text=VLM x VFM Fusion Lab")
        _upload(page, path)
        page.locator("#run-button").click()
        notes = page.locator(".prose.notes-panel")
        page.wait_for_selector(".notes-panel >> text=/2 file\\(s\\) skipped/", timeout=90_000)
        text = notes.inner_text()
        assert f"red/{evil}" in text and f"green/{amp}" in text
        assert "&lt;" not in text and "&amp;" not in text and "&#x27;" not in text
        assert notes.locator("img").count() == 0
        _shot(page, "5_notes_escaping")
    finally:
        page.close()
        demo.close()
