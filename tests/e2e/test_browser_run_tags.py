"""The run picker with many runs chosen, in headless Chromium: every run's tag stays in view, none cut off.

Streamlit caps a multiselect at four and a half rows of tags and scrolls the box to its end, which cut the top row
of run tags in half on Compare. The app is served here on the shipped runs in checkpoints/ (ten or more, so the tags take
five rows or more), which this test only reads; its cache and runs/ are folders of its own.
"""

from __future__ import annotations

import pytest

PlaywrightTimeout = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed"
).TimeoutError

from conftest import REPO_ROOT, SCREENSHOTS, VIEWPORT, Server, serving  # noqa: E402
from test_browser import MAIN, settle  # noqa: E402

pytestmark = pytest.mark.e2e

RUNS_CHOSEN = 10  # five rows of tags at the test's viewport: more than the four and a half Streamlit shows
PICKER = f'{MAIN} .st-key-runs_compare [data-testid="stMultiSelect"]'


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory, chromium_path) -> Server:
    with serving(REPO_ROOT / "checkpoints", tmp_path_factory.mktemp("tags-app")) as server:
        yield server


def choose_runs(page, count: int) -> None:
    """Choose runs until ``count`` are chosen, as a person does with the keyboard: type, arrow to a match, Enter."""
    box = page.locator(f"{PICKER} input")
    box.wait_for()
    tags = page.locator(f"{PICKER} [data-tag]")
    for _ in range(2 * count):  # bounded: a key press lost on a busy machine is retried, not waited on forever
        chosen = tags.count()
        if chosen >= count:
            break
        box.click()
        page.keyboard.type("seed0")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        try:  # the new tag, then the rerun it starts
            page.wait_for_function("([p, n]) => document.querySelectorAll(p).length > n", arg=[f"{PICKER} [data-tag]", chosen], timeout=10_000)
        except PlaywrightTimeout:
            continue
        settle(page)
    page.keyboard.press("Escape")


def tags_out_of_view(page) -> list[str]:
    """The labels of the chosen runs whose tags are not wholly inside the visible part of the picker."""
    return page.evaluate(
        """(picker) => {
            const box = document.querySelector(picker + ' [data-testid="stMultiSelectTagsContainer"]');
            const shown = box.getBoundingClientRect();
            return [...box.querySelectorAll('[data-tag]')].filter((tag) => {
                const r = tag.getBoundingClientRect();
                return r.top < shown.top - 0.5 || r.bottom > shown.bottom + 0.5;
            }).map((tag) => tag.getAttribute('aria-label'));
        }""",
        PICKER,
    )


def test_every_chosen_run_tag_stays_in_view(browser, shipped_server):
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(shipped_server.url + "/")
        settle(page)
        choose_runs(page, RUNS_CHOSEN)
        assert page.locator(f"{PICKER} [data-tag]").count() >= RUNS_CHOSEN
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator(PICKER).screenshot(path=str(SCREENSHOTS / "run-tags.png"))
        rows = page.evaluate(
            "(p) => new Set([...document.querySelectorAll(p + ' [data-tag]')].map((t) => t.offsetTop)).size", PICKER
        )
        assert rows >= 5, f"the {RUNS_CHOSEN} tags take only {rows} rows: the test no longer reaches the cap"
        assert tags_out_of_view(page) == []
    finally:
        context.close()
