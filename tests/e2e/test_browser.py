"""End to end: the real Streamlit server, driven by headless Chromium through every page.

The tests run in file order and share one browser tab (one Streamlit session, as a person's would be):
Compare; Train, starting a tiny job; Embeddings (PCA at once, then the aligned UMAP computed in the background)
and Retrieval while it trains (the sidebar shows its progress);
Train again, where the job has finished, and Compare with the new run; About. Each checks
the rendered text and elements, that no exception or error box shows, that the browser reported no
uncaught error and that nothing tried to leave the machine, and saves a full-page screenshot to
``tests/e2e/screenshots/<page>.png`` for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from app.train_form import EVALUATE_EVERY_EPOCHS

PlaywrightTimeout = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").TimeoutError

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"  # git-ignored
RUN_OFF, RUN_ON = "digits-binomial-ec0-seed0", "digits-binomial-ec0.13-seed0"  # the fixture runs (conftest.py)
NEW_RUN = "e2e-tiny"

PAGES = {"Compare": "", "Embeddings": "embeddings", "Retrieval": "retrieval", "Train": "train", "Import": "imports",
         "About": "about"}
MAIN = '[data-testid="stMain"]'
PLOTS = f'{MAIN} [data-testid="stPlotlyChart"] .js-plotly-plot'  # every chart and map is Plotly
CHARTS = f'{MAIN} [data-testid="stPlotlyChart"]'
WIDE = {"width": 1920, "height": 1080}
SETTLE_S = 0.5  # how long the app must stay idle to count as rendered
PAGE_TIMEOUT_S = 60
UMAP_TIMEOUT_S = 120  # the first aligned UMAP of a process compiles numba code
TRAIN_TIMEOUT_S = 120

# Streamlit itself probes <page>/_stcore/health and <page>/_stcore/host-config when a page is opened by its URL
# (https://github.com/streamlit/streamlit/issues/7074); the browser logs those 404s as console errors.
KNOWN_CONSOLE_NOISE = re.compile(r"Failed to load resource: .*404.*\(https?://[^ ]+/[a-z]+/_stcore/(health|host-config)\)$")


# ----------------------------------------------------------------------------- helpers


def settle(page, timeout: float = PAGE_TIMEOUT_S) -> None:
    """Wait until Streamlit has finished running the script and stayed idle for SETTLE_S (no spinner either)."""
    deadline = time.monotonic() + timeout
    idle_since = None
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(
            """() => {
                const app = document.querySelector('[data-testid="stApp"]');
                return app && {
                    script: app.getAttribute('data-test-script-state'),
                    connection: app.getAttribute('data-test-connection-state'),
                    spinner: !!document.querySelector('[data-testid="stSpinner"]'),
                };
            }"""
        )
        idle = bool(state) and state["script"] == "notRunning" and state["connection"] == "CONNECTED" and not state["spinner"]
        if idle:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= SETTLE_S:
                return
        else:
            idle_since = None
        time.sleep(0.1)
    raise AssertionError(f"the app did not finish rendering within {timeout:.0f} s (last state: {state})")


def main_text(page) -> str:
    return page.inner_text(MAIN)


def wait_for_text(page, text: str, timeout: float = PAGE_TIMEOUT_S) -> None:
    page.locator(MAIN).get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout * 1000)


def wait_for_path(page, target: str, timeout: float = PAGE_TIMEOUT_S) -> None:
    """Wait for the tab to reach ``target``; the app keeps its query (?owner=..., whose runs this tab started)
    across pages, so the path alone is matched."""
    page.wait_for_url(lambda url: url.split("?")[0] == target, timeout=timeout * 1000)


def open_page(page, server, title: str, timeout: float = PAGE_TIMEOUT_S, wait: bool = True) -> None:
    """Click the page's link in the sidebar (opening the app first when this tab is elsewhere), and wait for it."""
    if not page.url.startswith(server.url):
        page.goto(server.url + "/")
        settle(page, timeout)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=False).click()
    wait_for_path(page, f"{server.url}/{PAGES[title]}", timeout)
    if wait:
        settle(page, timeout)


def screenshot(page, name: str) -> Path:
    """The whole page: Streamlit scrolls inside <main>, so grow the viewport to its full height first."""
    height = page.evaluate(
        f"""() => Math.max(document.querySelector('{MAIN}')?.scrollHeight || 0,
                           document.documentElement.scrollHeight)"""
    )
    path = SCREENSHOTS / f"{name}.png"
    viewport = page.viewport_size
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], min(int(height) + 40, 12000))})
    try:
        time.sleep(0.3)  # let Plotly and the data grids lay out again
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(viewport)
    return path


class Errors:
    """What the browser reported since this object was made."""

    def __init__(self, log):
        self.log = log
        self.start = (len(log.page_errors), len(log.console_errors), len(log.blocked_requests))

    def check(self) -> None:
        page_errors = self.log.page_errors[self.start[0]:]
        console = [m for m in self.log.console_errors[self.start[1]:] if not KNOWN_CONSOLE_NOISE.search(m)]
        blocked = self.log.blocked_requests[self.start[2]:]
        assert not page_errors, f"uncaught errors in the page: {page_errors}"
        assert not console, f"browser console errors: {console}"
        assert not blocked, f"requests that tried to leave 127.0.0.1 (blocked): {blocked}"


def assert_no_error_boxes(page, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: Streamlit exception box: {exceptions.first.inner_text()[:500]}"
    errors = page.locator(f'{MAIN} [data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: st.error box: {errors.all_inner_texts()}"
    text = main_text(page)
    assert "hit an unexpected error" not in text, f"{where}: the app's last-resort error net fired: {text[:500]}"


def plot_count(page) -> int:
    """Plotly charts that have drawn their SVG."""
    return page.locator(f"{PLOTS} .main-svg").evaluate_all(
        "svgs => new Set(svgs.map(s => s.closest('.js-plotly-plot'))).size"
    )


def wait_for_plots(page, count: int, timeout: float = PAGE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while plot_count(page) < count:
        assert time.monotonic() < deadline, f"expected {count} drawn Plotly charts, found {plot_count(page)}"
        time.sleep(0.2)


def point_positions(page) -> list[str]:
    """Where the first scatter points of each chart sit (their SVG transforms)."""
    return page.locator(f"{PLOTS} .scatterlayer .point").evaluate_all(
        "points => points.slice(0, 50).map(p => p.getAttribute('transform'))"
    )


def plot_texts(page) -> str:
    """Titles, legends and axis labels of every chart on the page."""
    return " | ".join(page.locator(f"{PLOTS} .main-svg").all_text_contents())


def chart_count(page) -> int:
    return plot_count(page)


def wait_for_charts(page, count: int, timeout: float = PAGE_TIMEOUT_S) -> None:
    wait_for_plots(page, count, timeout)


def chart_texts(page) -> str:
    return plot_texts(page)


def assert_fits(page, frame, where: str) -> None:
    """The data grid shows every column: nothing to scroll sideways, and its right edge inside the page's column."""
    box = frame.evaluate(
        """f => {
            const scroller = f.querySelector('.dvn-scroller');
            const block = f.closest('[data-testid="stMainBlockContainer"]') || f.closest('[data-testid="stMain"]');
            return {scroll: scroller ? scroller.scrollWidth : -1, client: scroller ? scroller.clientWidth : -1,
                    right: f.getBoundingClientRect().right, limit: block.getBoundingClientRect().right};
        }"""
    )
    assert box["client"] > 0, f"{where}: the data grid is not laid out"
    assert box["scroll"] <= box["client"] + 1, f"{where}: columns cut off, the grid scrolls sideways: {box}"
    assert box["right"] <= box["limit"] + 1, f"{where}: the grid sticks out of the page's column: {box}"


def assert_tables_fit(page, frames: list, where: str) -> None:
    """Each data grid fits, at the test's viewport (1400 wide) and on a 1920x1080 screen."""
    viewport = page.viewport_size
    try:
        for size in (viewport, WIDE):
            page.set_viewport_size(size)
            time.sleep(0.5)  # let the grids lay out again
            for index, frame in enumerate(frames):
                assert_fits(page, frame, f"{where}, table {index + 1} at {size['width']}x{size['height']}")
    finally:
        page.set_viewport_size(viewport)


def dataframe_cells(frame) -> tuple[list[str], list[str]]:
    """(column headers, cells row by row) from the data grid's accessible table."""
    return frame.locator('[role="columnheader"]').all_inner_texts(), frame.locator('[role="gridcell"]').all_inner_texts()


# ----------------------------------------------------------------------------- pages


@pytest.fixture
def errors(browser_log) -> Errors:
    return Errors(browser_log)


def test_compare(page, app_server, errors):
    page.goto(app_server.url + "/")
    settle(page)
    wait_for_text(page, "Compare runs")

    links = page.locator('[data-testid="stSidebarNav"] a')
    hrefs = {link.inner_text().split("\n")[-1].strip(): link.get_attribute("href") for link in links.all()}
    assert hrefs == {title: f"{app_server.url}/{path}" for title, path in PAGES.items()}, hrefs

    text = main_text(page)
    for expected in ("Retrieval and clustering on unseen classes", "Training curves",
                     "Retrieval quality during training", "Distances between unseen images"):
        assert expected in text, f"Compare lacks the section {expected!r}"
    chosen = page.locator(f'{MAIN} [data-testid="stMultiSelect"]').inner_text()
    assert RUN_OFF in chosen and RUN_ON in chosen, f"the default selection is not the EC off/on pair: {chosen!r}"

    # The fixture runs share the study's run names, so the study's spread over seeds is a third table, last.
    frames = page.locator(f'{MAIN} [data-testid="stDataFrame"]')
    assert frames.count() == 3, "expected the metrics table, the settings table and the study's seed spread"
    frames.nth(2).locator('[role="gridcell"]').first.wait_for(state="attached")
    headers, _ = dataframe_cells(frames.nth(2))
    assert headers[1:] and all(header.endswith(" seeds") for header in headers[1:]), headers
    frames.nth(0).locator('[role="gridcell"]').first.wait_for(state="attached")  # the grid's chunk loads lazily
    headers, cells = dataframe_cells(frames.nth(0))
    assert headers[1:] == [RUN_OFF, RUN_ON, "Δ"], headers  # each Δ column right of its run, headed "Δ"
    rows = {cells[i]: cells[i + 1:i + len(headers)] for i in range(0, len(cells), len(headers))}
    for metric in ("Recall@1", "Recall@8", "NMI", "MAP@R", "R-Precision"):
        assert metric in rows, f"metrics table lacks {metric}: {list(rows)}"
        off, on = (float(value) for value in rows[metric][:2])
        assert 0 <= off <= 100 and 0 <= on <= 100, (metric, rows[metric])
        assert abs(float(rows[metric][2]) - (on - off)) < 1e-6, (metric, rows[metric])  # the grid's raw values
    # The settings, one row per run, behind an expander.
    page.locator(MAIN).get_by_text("How each run was trained").click()
    frames.nth(1).locator('[role="gridcell"]').first.wait_for(state="attached")
    headers, cells = dataframe_cells(frames.nth(1))
    assert headers[1:] == ["dataset", "backbone", "loss", "Energy Confusion", "evaluated", "steps", "seed"], headers
    assert RUN_OFF in cells and "digits" in cells and "EC off" in cells and "EC λ=0.13" in cells, cells
    assert cells.count("at the end") == 2, cells  # the fixture runs are trained with --eval-every 0
    assert_tables_fit(page, [frames.nth(0), frames.nth(1)], "Compare")

    # Training curves and evaluations over training.
    wait_for_charts(page, 2)
    legends = chart_texts(page)
    assert RUN_OFF in legends and RUN_ON in legends, legends
    text = main_text(page)
    assert (f"Only the final evaluation was recorded for {RUN_OFF} and {RUN_ON}: they were trained with "
            "--eval-every 0.") in text, text
    # Hovering the curves: a tooltip with every run's value at that step.
    curves = page.locator(CHARTS).first
    curves.scroll_into_view_if_needed()
    box = curves.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6)
    tooltip = curves.locator(".hoverlayer .legend")  # Plotly's one label for every line at the hovered step
    tooltip.wait_for(state="attached", timeout=10_000)
    label = tooltip.text_content()
    assert RUN_OFF in label and RUN_ON in label, label
    page.mouse.move(0, 0)

    # The distance histograms are drawn once their expander is opened.
    assert chart_count(page) == 2
    page.locator(MAIN).get_by_text("Same-class against different-class distances").click()
    settle(page)
    wait_for_charts(page, 4)
    texts = chart_texts(page)
    assert "same class" in texts and "different classes" in texts, texts

    assert_no_error_boxes(page, "Compare")
    screenshot(page, "compare")
    errors.check()


def test_train_form_starts_a_job(page, app_server, errors):
    open_page(page, app_server, "Train")
    wait_for_text(page, "New run")
    form = page.locator(f'{MAIN} [data-testid="stForm"]')
    for label in ("Data root (folder dataset only)", "Base metric loss", "Energy Confusion weight λ", "Epochs", "Seed"):
        assert form.get_by_label(label, exact=True).count() == 1, f"the form lacks the field {label!r}"
    # The data set is chosen above the form, which then redraws with that data set's schedule.
    dataset = page.locator(MAIN).get_by_label("Dataset", exact=True)
    assert dataset.count() == 1 and form.get_by_label("Dataset", exact=True).count() == 0
    assert dataset.input_value() == "digits"
    assert form.get_by_label("Base metric loss", exact=True).input_value() == "binomial"
    assert form.get_by_label("Energy Confusion weight λ", exact=True).input_value() == "0.13"
    start = form.locator('[data-testid="stFormSubmitButton"] button')
    assert "Start training" in start.inner_text()
    assert_no_error_boxes(page, "Train")
    screenshot(page, "train")

    # A tiny run: one epoch of digits (about 15 steps), named so it can be found afterwards.
    form.get_by_label("Epochs", exact=True).fill("1")
    form.get_by_text("More settings").click()
    for label in ("Run name", "Backbone", "Device", "Stop after steps", "Evaluate every (epochs)"):
        form.get_by_label(label, exact=True).wait_for(state="visible")
    form.get_by_label("Run name", exact=True).fill(NEW_RUN)
    form.get_by_label("Run name", exact=True).press("Tab")
    start.click()

    # The live panel: a progress bar under "Training <name>" (the job may also have ended already).
    panel = page.locator(MAIN).get_by_role("heading", name=f"Training {NEW_RUN}")
    finished = page.locator(MAIN).get_by_text(f"Last run {NEW_RUN} finished")
    page.locator(f'{MAIN} [data-testid="stProgress"]').or_(finished).first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    failed = page.locator(f'{MAIN} [data-testid="stAlertContentError"]')
    assert not failed.count(), f"starting the training failed: {failed.all_inner_texts()}"
    assert panel.count() or finished.count(), main_text(page)[:800]
    if panel.count():
        progress = page.locator(f'{MAIN} [data-testid="stProgress"]')
        assert progress.count() == 1
        print(f"live panel: {progress.inner_text()!r}")
        assert page.locator(MAIN).get_by_role("button", name="Stop").count() == 1
        # One job at a time: Start is disabled while it runs, and the form says why.
        settle(page)
        disabled, note = start.is_disabled(), form.inner_text()
        if not finished.count():
            assert disabled, "Start training is enabled while a job runs"
            assert f"A job is running: {NEW_RUN}" in note, note
        screenshot(page, "train-progress")
    errors.check()


def job_state(server) -> str | None:
    try:
        return json.loads((server.runs_dir / NEW_RUN / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def test_embeddings(page, app_server, errors):
    """Opened while the job trains (in its own process): the sidebar shows its progress meanwhile."""
    open_page(page, app_server, "Embeddings", wait=False)
    sidebar_progress = page.locator('[data-testid="stSidebar"] [data-testid="stProgress"]')
    try:
        sidebar_progress.wait_for(timeout=5_000)
        assert f"Training {NEW_RUN}" in page.inner_text('[data-testid="stSidebar"]')
        print(f"sidebar progress: {sidebar_progress.inner_text()!r}")
    except PlaywrightTimeout:
        print(f"no sidebar progress: the job had ended ({job_state(app_server)})")
        assert job_state(app_server) in ("completed", "stopped", "failed"), (
            f"the job is {job_state(app_server)!r} but the sidebar shows no progress"
        )

    # The aligned UMAP is not cached yet (and the server's warm-up is off): the page opens on PCA, once the
    # background job has embedded the runs' unseen images.
    settle(page)
    wait_for_text(page, "Embeddings of unseen classes")
    frame = wait_for_map(page)
    radios = page.locator(f'{MAIN} [data-testid="stRadio"] input[type="radio"]')
    assert radios.nth(1).is_checked(), "the page did not open on PCA"
    compute = page.locator(MAIN).get_by_role("button", name=re.compile("Compute aligned UMAP"))
    assert compute.count() == 1, "no button to compute the aligned UMAP"
    titles = frame.locator(".panel h4").all_inner_texts()
    assert titles == [f"{RUN_OFF} · EC off", f"{RUN_ON} · EC λ=0.13"], titles
    assert int(frame.evaluate("() => document.body.dataset.points")) == 896, "not every unseen digit is on the map"
    assert "Hover a point to see its image" in main_text(page)
    assert_no_error_boxes(page, "Embeddings (PCA)")
    screenshot(page, "embeddings-pca")

    # The button computes the UMAP in the background; the PCA maps stay usable meanwhile.
    pca_points = map_positions(frame)
    compute.click()
    computing = page.locator(MAIN).get_by_text("Computing the aligned UMAP")
    computing.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    assert radios.nth(0).is_checked()
    # When it is done the page switches by itself.
    computing.wait_for(state="detached", timeout=UMAP_TIMEOUT_S * 1000)
    settle(page)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:  # the panels now show the UMAP maps
        frame = wait_for_map(page)
        if map_positions(frame) != pca_points:
            break
        assert time.monotonic() < deadline, "the finished UMAP did not replace the PCA maps"
        time.sleep(0.2)
    assert radios.nth(0).is_checked()
    assert page.locator(MAIN).get_by_role("button", name=re.compile("Compute aligned UMAP")).count() == 0

    # A click on a point selects it: its image shows under the map (beside any the page already shows, such as the
    # images whose neighbourhoods changed most between the two runs).
    images = page.locator(f'{MAIN} [data-testid="stImage"] img')
    shown_before = images.count()
    x, y = frame.evaluate("() => window.ecamlMap.screenPosition(0, 40)")
    box = page.frame_locator("iframe[title*='embedding_map']").locator(".panel[data-panel='0'] canvas.overlay").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    wait_for_text(page, "1 selected")
    settle(page)
    assert images.count() == shown_before + 1, "the clicked point's image is missing"
    assert_no_error_boxes(page, "Embeddings (UMAP)")
    screenshot(page, "embeddings")
    errors.check()


def wait_for_map(page, timeout: float = PAGE_TIMEOUT_S):
    """The embedding map's frame once it has built its panels (app/map_frontend)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if frame.evaluate("() => document.body && document.body.dataset.ready === '1'"):
                    return frame
            except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders
                pass
        time.sleep(0.2)
    raise AssertionError(f"the map did not build within {timeout:.0f} s")


def map_positions(frame) -> list:
    return frame.evaluate("() => [0, 100, 500].map((row) => window.ecamlMap.screenPosition(0, row))")


def test_retrieval(page, app_server, errors):
    open_page(page, app_server, "Retrieval")
    wait_for_text(page, "Nearest neighbours")
    wait_for_text(page, "query: class")  # it opens where the runs disagree, ranked by a (short) background job
    settle(page)
    text = main_text(page)
    assert "query: class" in text, "no query image caption"
    times = re.findall(r"answered in (\d+(?:\.\d+)?) ms", text)
    assert len(times) == 2, f"expected one query time per run, found {times}"
    for run in (RUN_OFF, RUN_ON):
        assert page.locator(MAIN).get_by_role("heading", name=run).count() == 1, f"no result panel for {run}"
    # One query image, and 8 neighbours (the slider's default) per run, each with its ✓/✗ caption.
    images = page.locator(f'{MAIN} [data-testid="stImage"] img')
    assert images.count() == 1 + 2 * 8, f"expected 17 images, found {images.count()}"
    assert all(image.evaluate("i => i.complete && i.naturalWidth > 0") for image in images.all()), "an image did not load"
    assert len(re.findall(r"[✓✗] \d · \d\.\d\d", text)) == 16, "neighbour captions missing"

    # Another query source: a random image gives a fresh set of answers.
    page.locator(MAIN).get_by_text("At random").click()
    settle(page)
    wait_for_text(page, "Another random image")
    assert page.locator(f'{MAIN} [data-testid="stImage"] img').count() == 17
    assert len(re.findall(r"answered in \d+(?:\.\d+)? ms", main_text(page))) == 2
    assert_no_error_boxes(page, "Retrieval")
    screenshot(page, "retrieval")
    errors.check()


def test_trained_run_finishes_and_shows_in_compare(page, app_server, errors):
    open_page(page, app_server, "Train")
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    finished = page.locator(MAIN).get_by_text(f"Last run {NEW_RUN} finished")
    while not finished.count():  # the live panel refreshes itself every 2 s and redraws the page at the end
        assert time.monotonic() < deadline, f"training did not finish in {TRAIN_TIMEOUT_S} s: {main_text(page)[:800]}"
        failed = page.locator(f'{MAIN} [data-testid="stAlertContentError"]')
        assert not failed.count(), f"training failed: {failed.all_inner_texts()}\n{app_server.log()}"
        time.sleep(0.2)
    settle(page)
    assert "Unseen Recall@1" in main_text(page)
    assert job_state(app_server) == "completed"
    assert (app_server.runs_dir / NEW_RUN / "metrics.json").is_file()
    config = json.loads((app_server.runs_dir / NEW_RUN / "config.json").read_text())
    submitted = {key: config.get(key) for key in ("dataset", "loss", "ec_weight", "epochs", "seed")}
    assert submitted == {"dataset": "digits", "loss": "binomial", "ec_weight": 0.13, "epochs": 1, "seed": 0}, submitted
    assert_no_error_boxes(page, "Train (finished)")
    screenshot(page, "train-finished")

    # The finished run, compared with the shipped pair.
    page.locator(MAIN).get_by_role("button", name="Compare it with the shipped runs").click()
    wait_for_path(page, f"{app_server.url}/")
    settle(page)
    wait_for_text(page, "Compare runs")
    chosen = page.locator(f'{MAIN} [data-testid="stMultiSelect"]').inner_text()
    assert f"{NEW_RUN} (yours)" in chosen and RUN_OFF in chosen and RUN_ON in chosen, chosen
    frames = page.locator(f'{MAIN} [data-testid="stDataFrame"]')
    frames.first.locator('[role="gridcell"]').first.wait_for(state="attached")
    headers, _ = dataframe_cells(frames.first)
    assert headers[1:] == [RUN_OFF, RUN_ON, "Δ", f"{NEW_RUN} (yours)", "Δ"], headers
    assert_tables_fit(page, [frames.first], "Compare with the new run")
    wait_for_charts(page, 2)  # curves and evaluations
    assert f"{NEW_RUN} (yours)" in chart_texts(page)
    # The new run evaluates every EVALUATE_EVERY_EPOCHS epochs (the form's default) but trained for 1: that is why it
    # has one point (its final evaluation).
    assert (f"{NEW_RUN} (yours): it trained for 1 epoch, shorter than its evaluation interval of "
            f"{EVALUATE_EVERY_EPOCHS} epochs." in main_text(page)), main_text(page)
    page.locator(MAIN).get_by_text("Same-class against different-class distances").click()
    settle(page)
    wait_for_charts(page, 5)  # and three histograms
    assert_no_error_boxes(page, "Compare with the new run")
    screenshot(page, "compare-new-run")
    errors.check()


def test_about(page, app_server, errors):
    page.goto(f"{app_server.url}/about")  # by its URL path this time
    settle(page)
    wait_for_text(page, "About ECAML")
    text = main_text(page)
    for expected in ("Energy Confused Adversarial Metric Learning", "The method", "Which parameters each gradient reaches",
                     "How to read each page", "arXiv:1901.07169"):
        assert expected in text, f"About lacks {expected!r}"
    formulas = " ".join(page.locator(f'{MAIN} .katex-mathml annotation').all_text_contents())
    for tex in (r"L_{ec} \;=\; \log E", r"R(W)", r"\mathrm{sg}(f)", r"\lambda \log E"):
        assert tex in formulas, f"formula {tex!r} not rendered: {formulas[:300]}"
    assert page.locator(f'{MAIN} .katex-display').count() >= 3, "display formulas not typeset by KaTeX"
    graph = page.locator(f'{MAIN} [data-testid="stGraphVizChart"] svg')
    graph.first.wait_for(state="visible")
    assert "stop-gradient" in graph.first.text_content()
    assert_no_error_boxes(page, "About")
    screenshot(page, "about")
    errors.check()
