"""Measure how fast a page of the app paints in a fresh browser tab (not a test: run it by hand).

    .venv/bin/python tests/e2e/measure_first_paint.py --checkpoints DIR [--page ''] [--tabs 7] \
        [--width 1400 --height 1000] [--same-context] [--repo DIR] [--screenshot out.png]

Starts the real Streamlit server (of ``--repo``, by default this checkout) on the given run folders,
with an empty runs/ and a private cache, and the start-up warm-up off. It opens the page once to fill
the server's caches (modules imported, embeddings computed), then opens ``--tabs`` new tabs one at a
time, each a new Streamlit session, and records from the start of navigation (``performance.now()``):

* table: the first data grid (the metrics table) is visible, its canvas laid out;
* chart: the first chart has drawn (its Plotly SVG), wherever it is on the page;
* idle: the script finished, no spinner shows, and every chart sent so far has drawn.

Each tab opens in a new browser context (an empty HTTP cache: the first visit), or with
``--same-context`` in the warmed-up one (the browser has the scripts cached: a new tab of a
browser that has opened the app before). Prints each tab's times and the medians, in seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import CHROMIUM_ARGS, REPO_ROOT, chromium_executable, free_port, stop_process_group, wait_healthy  # noqa: E402

PROBE = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return null;
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.top < innerHeight; };
  const grid = main.querySelector('[data-testid="stDataFrame"] canvas');
  const charts = [...main.querySelectorAll('[data-testid="stPlotlyChart"]')];
  const drawn = charts.filter((c) => c.querySelector('.main-svg, canvas, svg.marks'));
  const app = document.querySelector('[data-testid="stApp"]');
  return {
    table: !!(grid && visible(grid)),
    chart: drawn.length > 0,
    allDrawn: charts.length === drawn.length,
    idle: !!app && app.getAttribute('data-test-script-state') === 'notRunning'
          && !document.querySelector('[data-testid="stSpinner"]'),
    now: performance.now(),
  };
}"""


def measure(browser, url: str, width: int, height: int, context=None, timeout: float = 60.0) -> dict[str, float]:
    own = context is None
    if own:
        context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
    page = context.new_page()
    try:
        page.goto(url, wait_until="commit")
        times: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = page.evaluate(PROBE)
            if state:
                now = state["now"] / 1000
                if state["table"]:
                    times.setdefault("table", now)
                if state["chart"]:
                    times.setdefault("chart", now)
                if state["idle"] and state["allDrawn"] and "table" in times and "chart" in times:
                    times.setdefault("idle", now)
                    break
            time.sleep(0.02)
        return times
    finally:
        page.close()
        if own:
            context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--page", default="", help="URL path of the page: '' (Compare), embeddings, ...")
    parser.add_argument("--tabs", type=int, default=7)
    parser.add_argument("--same-context", action="store_true", help="new tabs in the warmed-up browser context")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose app to serve")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a killed measurement still stops its server

    work = Path(tempfile.mkdtemp(prefix="ecaml-paint-"))
    for name in ("runs", "cache"):
        (work / name).mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/{args.page}"
    env = dict(os.environ, ECAML_CHECKPOINTS_DIR=str(args.checkpoints.resolve()), ECAML_RUNS_DIR=str(work / "runs"),
               ECAML_CACHE_DIR=str(work / "cache"), ECAML_WARM_CACHE="0", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    log = open(work / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, 60)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS)
            shared = None
            if args.same_context:
                shared = browser.new_context(viewport={"width": args.width, "height": args.height},
                                             service_workers="block")
            warm = measure(browser, url, args.width, args.height, context=shared, timeout=180)
            print(f"warm-up tab (fills the caches): {fmt(warm)}")
            rows = []
            for tab in range(args.tabs):
                times = measure(browser, url, args.width, args.height, context=shared)
                rows.append(times)
                print(f"tab {tab + 1}: {fmt(times)}")
            medians = {k: statistics.median(r[k] for r in rows if k in r) for k in ("table", "chart", "idle")
                       if any(k in r for r in rows)}
            print(f"median of {len(rows)} tabs: {fmt(medians)}")
            if args.screenshot:
                context = browser.new_context(viewport={"width": args.width, "height": args.height})
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
                time.sleep(2)
                page.screenshot(path=str(args.screenshot))
                context.close()
            browser.close()
    finally:
        stop_process_group(server)
        log.close()


def fmt(times: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.2f}s" for key, value in times.items()) or "(nothing painted)"


if __name__ == "__main__":
    main()
