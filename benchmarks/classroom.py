"""A classroom on one server: N students open the app at once and visit every page.

    .venv/bin/python benchmarks/classroom.py --sessions 30                 # read-only demo, as the Procfile serves it
    .venv/bin/python benchmarks/classroom.py --sessions 5 --train          # while a training job runs (not read-only)
    .venv/bin/python benchmarks/classroom.py --sessions 3 --warm pca       # the quick version the e2e suite runs
    .venv/bin/python benchmarks/classroom.py --sessions 20 --floor         # the same clicks on an empty 5-page app

Starts the real Streamlit server of this checkout on loopback with the shipped checkpoints (a private runs folder
and cache), then one warm-up tab visits every page (the lecturer's check before class) and the server is left to
finish its background work. Then N browser contexts (separate Streamlit sessions, one headless Chromium on this
machine) open the app at the same moment and click through every page in the sidebar. Each visit is timed in the
browser from the click (or the navigation start) until the new page has run: its title shows, Streamlit's
``data-test-script-state`` is ``notRunning`` and no spinner shows.

``--floor`` serves, instead of the app, a Streamlit app of five pages with the same names that each show a
title and one sentence: what Streamlit's front end and Chromium alone cost on this machine, the floor under any
page of ours.

Prints a table, then as its last line one JSON object: p50/p95/max settle seconds, exceptions shown on any page or
thrown in the browser, the server's CPU seconds per page visit (utime + stime of the server process, all its
threads, from /proc, measured over the N sessions only), and its memory (RSS after the warm-up, peak, at the end,
and the growth per session).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.app_server import free_port, start_server, stop_process_group, wait_healthy  # noqa: E402

# The sidebar's pages in the order a student clicks through them ("" is the default page, Compare).
PAGES = ("", "embeddings", "retrieval", "train", "about")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 900}
VISIT_TIMEOUT_S = 120.0
IDLE_CPU_SECONDS = 0.15  # the server counts as idle when it used less CPU than this over IDLE_WINDOW_S
IDLE_WINDOW_S = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Seconds since ``since`` (performance.now() ms) once the page a click led to has run: its title is on the page (not
# the previous page's), the script is not running and no spinner shows; null until then. A fast page's run can go
# from "running" back to "notRunning" within one React render, so the title, not a seen "running" state, says
# that the new page ran.
SETTLED_SINCE = """([since, previousTitle]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return null;
  if (document.querySelector('[data-testid="stSpinner"]')) return null;
  const title = document.querySelector('[data-testid="stMain"] h1');
  if (!title || title.textContent === previousTitle) return null;
  return (performance.now() - since) / 1000;
}"""
PAGE_TITLE = """() => {
  const title = document.querySelector('[data-testid="stMain"] h1');
  return title && title.textContent;
}"""


@dataclass
class Visit:
    session: int
    page: str
    seconds: float | None  # None: it did not settle within VISIT_TIMEOUT_S
    exceptions: int


@dataclass
class ServerMeter:
    """CPU seconds and resident memory of the server process, sampled in a thread."""

    pid: int
    peak_rss: int = 0
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.rss()
            except OSError:
                return
            self.samples.append(value)
            self.peak_rss = max(self.peak_rss, value)
            self._stop.wait(0.25)

    def wait_idle(self, timeout: float = 240.0) -> float:
        """Wait until the server's background work (warm-ups, projections) is done; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = self.cpu_seconds()
            time.sleep(IDLE_WINDOW_S)
            if self.cpu_seconds() - before < IDLE_CPU_SECONDS:
                break
        return time.monotonic() - started


async def visit_every_page(browser, url: str, session: int, log: list[str]) -> list[Visit]:
    """One student: open the app, then click through the sidebar's pages; every visit timed until settled."""
    context = await browser.new_context(viewport=VIEWPORT, service_workers="block")
    await context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                        else route.abort())  # loopback only: nothing may leave the machine
    page = await context.new_page()
    page.on("pageerror", lambda error: log.append(f"session {session}: {error}"))
    visits = []
    try:
        await page.goto(url, wait_until="commit")
        visits.append(await settle(page, session, PAGES[0], since=0.0, previous_title=None))
        for name in PAGES[1:]:
            previous_title = await page.evaluate(PAGE_TITLE)
            since = await page.evaluate("performance.now()")
            await page.locator(f'[data-testid="stSidebarNav"] a[href$="/{name}"]').first.click()
            visits.append(await settle(page, session, name, since, previous_title))
    finally:
        await context.close()
    return visits


async def settle(page, session: int, name: str, since: float, previous_title: str | None) -> Visit:
    try:
        handle = await page.wait_for_function(SETTLED_SINCE, arg=[since, previous_title],
                                              timeout=VISIT_TIMEOUT_S * 1000, polling=20)
        seconds = await handle.json_value()
    except Exception:  # noqa: BLE001 - a visit that never settles is reported, not fatal
        seconds = None
        title = await page.evaluate(PAGE_TITLE)
        print(f"session {session} {name}: not settled {VISIT_TIMEOUT_S:.0f} s after the click at {page.url} "
              f"(title {title!r}, previous {previous_title!r})", file=sys.stderr)
    exceptions = await page.locator('[data-testid="stException"]').count()
    return Visit(session, name or "compare", seconds, exceptions)


async def _sessions(chromium: str, url: str, count: int, first_id: int) -> tuple[list[Visit], list[str]]:
    from playwright.async_api import async_playwright

    log: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            results = await asyncio.gather(*(visit_every_page(browser, url, first_id + i, log) for i in range(count)))
        finally:
            await browser.close()
    return [visit for visits in results for visit in visits], log


def start_training_job(runs: Path) -> Path:
    """A job long enough to outlast the sessions: glyphs, small CNN, evaluated only at the end."""
    from ecaml.config import TrainConfig
    from ecaml.serve.jobs import JobManager

    return JobManager(runs).start(TrainConfig(dataset="glyphs", epochs=200, eval_every=0), name="classroom-job")


def stop_training_job(runs: Path) -> None:
    from ecaml.serve.jobs import JobManager

    manager = JobManager(runs)
    if manager.current() is not None:
        manager.stop()
        deadline = time.monotonic() + 30
        while manager.current() is not None and time.monotonic() < deadline:
            time.sleep(0.25)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def chromium_executable() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("Debian chromium is needed: apt-get install chromium")


def wait_until_training(runs: Path, run_dir: Path, timeout: float = 120.0) -> None:
    from ecaml.serve.jobs import JobManager

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = JobManager(runs).progress(run_dir)
        if progress.state == "running" and progress.step > 0:
            return
        if progress.state not in ("starting", "running"):
            raise RuntimeError(f"the training job ended before the sessions started: {progress.message}")
        time.sleep(0.5)
    raise RuntimeError("the training job did not start training in time")


FLOOR_APP = """import streamlit as st

st.set_page_config(page_title="floor", layout="wide")


def page(title):
    def show():
        st.title(title)
        st.write("An empty page: Streamlit's front end and nothing else.")
    return show


names = ("Compare", "Embeddings", "Retrieval", "Train", "About")
pages = [st.Page(page(name), title=name, url_path=name.lower(), default=name == "Compare") for name in names]
st.navigation(pages).run()
"""


def floor_repo(work: Path) -> Path:
    """A folder holding app/main.py = the empty five-page app (``--floor``)."""
    repo = work / "floor"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "main.py").write_text(FLOOR_APP)
    return repo


def run_benchmark(sessions: int, read_only: bool = True, train: bool = False, warm: str = "umap",
                  checkpoints: Path = REPO_ROOT / "checkpoints", repo: Path = REPO_ROOT, floor: bool = False) -> dict:
    """Serve the app, warm it with one tab, then time ``sessions`` students visiting every page at once."""
    if read_only and train:
        raise ValueError("a read-only server cannot train: use --train without --read-only")
    chromium = chromium_executable()
    work = Path(tempfile.mkdtemp(prefix="ecaml-classroom-"))
    runs, cache = work / "runs", work / "cache"
    cache.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {"ECAML_CHECKPOINTS_DIR": str(Path(checkpoints).resolve()), "ECAML_RUNS_DIR": str(runs),
                   "ECAML_CACHE_DIR": str(cache), "ECAML_WARM_CACHE": warm,
                   "ECAML_READ_ONLY": "1" if read_only else "0"}
    server = start_server(port, work / "streamlit.log", environment, floor_repo(work) if floor else repo)
    try:
        wait_healthy(url, server, 90)
        meter = ServerMeter(server.pid)
        meter.start()
        asyncio.run(_sessions(chromium, url, 1, 0))  # the lecturer's check: fills the per-process caches
        idle_wait = meter.wait_idle()
        if train:
            wait_until_training(runs, start_training_job(runs))
        rss_before, cpu_before, started = meter.rss(), meter.cpu_seconds(), time.monotonic()
        visits, browser_errors = asyncio.run(_sessions(chromium, url, sessions, 1))
        wall, cpu = time.monotonic() - started, meter.cpu_seconds() - cpu_before
        rss_after = meter.rss()
        meter.stop()
    finally:
        if train:
            stop_training_job(runs)
        stop_process_group(server)
    settled = [visit.seconds for visit in visits if visit.seconds is not None]
    return {
        "sessions": sessions,
        "app": "empty five-page floor app" if floor else "ecaml",
        "read_only": read_only,
        "training": train,
        "visits": len(visits),
        "unsettled_visits": [f"session {v.session}: {v.page}" for v in visits if v.seconds is None],
        "settle_p50_s": round(statistics.median(settled), 2) if settled else None,
        "settle_p95_s": round(percentile(settled, 0.95), 2) if settled else None,
        "settle_max_s": round(max(settled), 2) if settled else None,
        "exceptions": sum(visit.exceptions for visit in visits) + len(browser_errors),
        "browser_errors": browser_errors[:5],
        "server_cpu_s_per_visit": round(cpu / max(1, len(visits)), 3),
        "server_cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "server_rss_mb_after_warmup": round(rss_before / 2**20),
        "server_rss_mb_peak": round(meter.peak_rss / 2**20),
        "server_rss_mb_end": round(rss_after / 2**20),
        "server_rss_mb_growth_per_session": round((rss_after - rss_before) / 2**20 / sessions, 1),
        "runs_folder_written": runs.exists(),
        "warm_up_idle_wait_s": round(idle_wait, 1),
        "slowest_pages": slowest_pages(visits),
        "cpus": os.cpu_count(),
    }


def slowest_pages(visits: list[Visit]) -> dict[str, float]:
    """Median settle seconds of each page, slowest first."""
    by_page: dict[str, list[float]] = {}
    for visit in visits:
        if visit.seconds is not None:
            by_page.setdefault(visit.page, []).append(visit.seconds)
    medians = {page: round(statistics.median(times), 2) for page, times in by_page.items()}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--train", action="store_true",
                        help="a training job runs meanwhile (the server is then not read-only)")
    parser.add_argument("--warm", default="umap", choices=("umap", "pca", "0"), help="the server's start-up warm-up")
    parser.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints")
    parser.add_argument("--floor", action="store_true", help="time an empty app of five pages instead (the floor)")
    args = parser.parse_args()
    report = run_benchmark(args.sessions, read_only=not args.train, train=args.train, warm=args.warm,
                           checkpoints=args.checkpoints, floor=args.floor)
    for key, value in report.items():
        print(f"{key:36} {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
