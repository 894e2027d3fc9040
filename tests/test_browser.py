"""The app in a real browser: Debian's Chromium driven headless by Playwright (never downloaded).

Upload an example zip, Run, and check the gallery, a plot and a segmentation overlay render;
screenshots go to ``artifacts/browser/`` (gitignored) for a human to look at.
"""

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
        page.wait_for_selector("#summary >> text=OTFusion", timeout=90_000)
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
