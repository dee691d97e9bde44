"""End to end at scale: a generated run pair with 20,000 unseen images, in the real app, driven by headless Chromium.

The runs come from ``benchmarks/make_large_run.py`` (tiny synthetic images, 10 training steps, a training film
every 5 steps), made once per test session under pytest's tmp folder. The tests share one tab and run in file
order: the Embeddings map (every point in both panels, WebGL), hovering shows the point's thumbnail and rings the
same image in the other panel, a lasso selection in one panel lights the same images in the other and lists them
below, the training film plays, and Retrieval finds a class by typing. Screenshots go to tests/e2e/screenshots/.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

from conftest import (  # noqa: E402
    CHROMIUM_ARGS,  # noqa: F401 - the shared browser fixture launches with these
    REPO_ROOT,
    SCREENSHOTS,
    VIEWPORT,
    Server,
    serving,
)
from test_browser import Errors, assert_no_error_boxes, main_text, settle  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from make_large_run import RUN_NAMES, make_large_runs  # noqa: E402

pytestmark = pytest.mark.e2e

UNSEEN_IMAGES = 20_000
JOBS_TIMEOUT_S = 900  # both runs' embeddings of 20,000 images and the thumbnails, on 2 busy shared cores
MAP_FRAME = "iframe[title*='embedding_map']"


@pytest.fixture(scope="session")
def large_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large")
    make_large_runs(root, unseen_images=UNSEEN_IMAGES, classes=200, steps=10, film_every=5)
    return root


@pytest.fixture(scope="session")
def scale_server(large_runs, tmp_path_factory, chromium_path) -> Server:
    with serving(large_runs / "checkpoints", tmp_path_factory.mktemp("scale-app"), health_timeout_s=60) as server:
        yield server


@pytest.fixture(scope="module")
def tab(browser, scale_server, browser_log):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": VIEWPORT["width"], "height": 1300}, service_workers="block")

    def route(route):
        if route.request.url.startswith((scale_server.url, "data:", "blob:")):
            route.continue_()
        else:  # nothing may leave the machine: every script and thumbnail comes from our server
            browser_log.blocked_requests.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda error: browser_log.page_errors.append(f"{page.url}: {error}"))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def errors(browser_log):
    tracker = Errors(browser_log)
    yield tracker
    tracker.check()


def map_frame(page, timeout: float = JOBS_TIMEOUT_S, film: bool = False):
    """The map's frame, once it has built its panels (and, for the film, shows the step slider)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                ready = frame.evaluate(
                    "(film) => document.body && document.body.dataset.ready === '1'"
                    " && (!film || !document.getElementById('film').hidden)", film)
            except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders
                continue
            if ready:
                return frame
        time.sleep(0.25)
    raise AssertionError(f"the map did not become ready within {timeout:.0f} s")


def overlay_box(page, panel: int) -> dict:
    return page.frame_locator(MAP_FRAME).locator(f".panel[data-panel='{panel}'] canvas.overlay").bounding_box()


def panel_pixels(page, panel: int) -> np.ndarray:
    """The panel's drawn pixels; taken again when the map was redrawn meanwhile (the final layout replacing the
    first one detaches the old canvas)."""
    from PIL import Image
    from playwright.sync_api import Error as PlaywrightError

    canvas = page.frame_locator(MAP_FRAME).locator(f".panel[data-panel='{panel}'] canvas:not(.overlay)")
    for attempt in range(3):
        try:
            png = canvas.screenshot()
            break
        except PlaywrightError as error:
            if "not attached" not in str(error) or attempt == 2:
                raise
            map_frame(page)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_map_draws_every_unseen_image_in_both_panels(tab, scale_server, errors):
    tab.goto(f"{scale_server.url}/embeddings")
    frame = map_frame(tab)
    settle(tab, JOBS_TIMEOUT_S)
    assert frame.evaluate("() => document.body.dataset.points") == str(UNSEEN_IMAGES)
    assert frame.evaluate("() => document.body.dataset.panels") == "2"
    assert frame.evaluate("() => document.getElementById('status').textContent").endswith("WebGL2")
    titles = frame.locator(".panel h4").all_inner_texts()
    assert [title.split(" · ")[0] for title in titles] == list(RUN_NAMES)
    for panel in (0, 1):  # each panel has drawn: many coloured or grey pixels, not a blank canvas
        pixels = panel_pixels(tab, panel)
        assert (pixels.sum(axis=2) < 740).mean() > 0.02
    assert_no_error_boxes(tab, "Embeddings at scale")
    shot(tab, "scale-embeddings")


def test_hovering_a_point_shows_its_thumbnail_and_rings_it_in_the_other_panel(tab, errors):
    deadline = time.monotonic() + JOBS_TIMEOUT_S  # the thumbnail sheets are written by a background job
    loaded = None
    while time.monotonic() < deadline and loaded != "1":
        frame = map_frame(tab)
        box = overlay_box(tab, 0)
        for step in range(40):
            tab.mouse.move(box["x"] + box["width"] * (0.2 + 0.6 * ((step * 0.37) % 1)),
                           box["y"] + box["height"] * (0.2 + 0.6 * ((step * 0.61) % 1)))
            time.sleep(0.05)
            if frame.evaluate("() => document.body.dataset.hovered") not in (None, "-1"):
                time.sleep(0.5)  # the sheet loads
                loaded = frame.evaluate("() => document.getElementById('tip-image').dataset.loaded")
                if loaded == "1":
                    break
        if loaded != "1":
            time.sleep(2)
    assert loaded == "1", "no thumbnail appeared on hover"
    tip = frame.locator("#tip")
    assert tip.is_visible()
    assert "image" in frame.locator("#tip-text").inner_text()
    background = frame.evaluate("() => getComputedStyle(document.getElementById('tip-image')).backgroundImage")
    assert "sheet_" in background and scale_server_url(tab) in background  # served by our server
    row = int(frame.evaluate("() => document.body.dataset.hovered"))
    x, y = frame.evaluate(f"() => window.ecamlMap.screenPosition(1, {row})")
    ring = tab.frame_locator(MAP_FRAME).locator(".panel[data-panel='1'] canvas.overlay").screenshot()
    from PIL import Image

    overlay = np.asarray(Image.open(io.BytesIO(ring)).convert("RGBA"))
    scale = overlay.shape[1] / overlay_box(tab, 1)["width"]
    around = overlay[max(0, int((y - 12) * scale)):int((y + 12) * scale), max(0, int((x - 12) * scale)):int((x + 12) * scale)]
    assert (around[..., :3].sum(axis=2) < 150).any(), "no ring around the same image in the other panel"
    shot(tab, "scale-hover")


def scale_server_url(page) -> str:
    return page.url.split("/embeddings")[0]


def test_a_lasso_in_one_panel_lights_the_same_images_in_the_other(tab, errors):
    frame = map_frame(tab)
    frame.locator("#mode-lasso").click()
    box = overlay_box(tab, 0)
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    radius = min(box["width"], box["height"]) * 0.18
    tab.mouse.move(centre_x + radius, centre_y)
    tab.mouse.down()
    for angle in np.linspace(0, 2 * np.pi, 40):
        tab.mouse.move(centre_x + radius * np.cos(angle), centre_y + radius * np.sin(angle))
    tab.mouse.up()
    selected = int(frame.evaluate("() => document.body.dataset.selected"))
    assert 0 < selected < UNSEEN_IMAGES
    rows = frame.evaluate("() => window.ecamlMap.selectedRows()")
    assert len(rows) == selected
    # In the other panel the selected images are drawn at full colour and the rest faded nearly to white.
    pixels = panel_pixels(tab, 1)
    scale = pixels.shape[1] / overlay_box(tab, 1)["width"]

    def saturation(row: int) -> float:
        x, y = frame.evaluate(f"() => window.ecamlMap.screenPosition(1, {row})")
        r, c = int(y * scale), int(x * scale)
        if not (0 <= r < pixels.shape[0] and 0 <= c < pixels.shape[1]):
            return np.nan
        patch = pixels[max(0, r - 1):r + 2, max(0, c - 1):c + 2]
        return float((patch.max(axis=2) - patch.min(axis=2)).max() + (255 - patch.min()))

    chosen = [saturation(row) for row in rows[:: max(1, len(rows) // 40)]]
    assert np.nanmedian(chosen) > 120, "the selected images are not lit in the other panel"
    settle(tab, 60)
    text = main_text(tab)
    assert f"{selected:,} selected" in text
    assert tab.locator('[data-testid="stImage"]').count() > 0
    assert_no_error_boxes(tab, "selection at scale")
    shot(tab, "scale-selection")


def test_the_training_film_plays(tab, errors):
    tab.locator('[data-testid="stMain"]').get_by_text("Training film", exact=True).click()
    frame = map_frame(tab, 120, film=True)
    settle(tab, 60)
    steps = frame.locator("#step")
    assert steps.get_attribute("max") == "2"  # steps 0, 5 and 10
    assert frame.locator("#step-label").inner_text() == "step 10 of 10"
    steps.fill("0")
    assert frame.evaluate("() => document.body.dataset.frame") == "0"
    shot(tab, "scale-film-start")
    frame.locator("#play").click()
    deadline = time.monotonic() + 20
    seen = set()
    while time.monotonic() < deadline and "2" not in seen:
        seen.add(frame.evaluate("() => document.body.dataset.frame"))
        time.sleep(0.1)
    assert {"1", "2"} <= seen, f"the film did not advance (frames seen: {sorted(seen)})"
    assert_no_error_boxes(tab, "film")
    shot(tab, "scale-film")


def test_retrieval_finds_a_class_by_typing(tab, scale_server, errors):
    tab.goto(f"{scale_server.url}/retrieval")
    settle(tab, JOBS_TIMEOUT_S)
    main = tab.locator('[data-testid="stMain"]')
    main.get_by_text("Find a class", exact=True).click()
    settle(tab)
    from ecaml.data.folder import sorted_half_split

    wanted = f"class{sorted_half_split(200).unseen_classes[7]:05d}"  # an unseen class of the generated folder
    main.get_by_label("Class name contains", exact=False).fill(wanted)
    main.get_by_label("Class name contains", exact=False).press("Enter")
    settle(tab)
    assert_no_error_boxes(tab, "Retrieval at scale")
    text = main_text(tab)
    assert "answered in" in text and f"query: class {wanted}" in text
    shot(tab, "scale-retrieval")
