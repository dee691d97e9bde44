"""Fixtures for the end-to-end browser test: fixture runs, the real Streamlit server, and headless Chromium.

Nothing is downloaded: the browser is Debian's ``chromium`` (``apt-get install chromium``), driven by the
``playwright`` Python package without its own browser build. Without that browser the tests are skipped.
The server listens on 127.0.0.1 only and is always stopped (with any training job it started) at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.app_server import SHUTDOWN_TIMEOUT_S, free_port, stop_process_group, wait_healthy  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

# Two real runs, EC off and EC on, named the way `ecaml train` names them by default (test_browser.py expects these).
FIXTURE_RUNS = {"digits-binomial-ec0-seed0": "0", "digits-binomial-ec0.13-seed0": "0.13"}
TRAIN_STEPS = "20"
TRAIN_TIMEOUT_S = 300
HEALTH_TIMEOUT_S = 60

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 900}

# Reports uncaught errors and unhandled promise rejections even where the page's own handlers swallow them
# (window.onerror returning true hides an error from Playwright's "pageerror" event).
ERROR_LISTENER = """
(() => {
  const report = (text) => { try { window.__e2eReportError(String(text)); } catch (ignored) {} };
  window.addEventListener('error', (event) => {
    if (event instanceof ErrorEvent) report(`${event.message} (${event.filename}:${event.lineno})`);
  }, true);
  window.addEventListener('unhandledrejection', (event) => {
    const reason = event.reason;
    report(`unhandled promise rejection: ${(reason && (reason.stack || reason.message)) || reason}`);
  });
})();
"""


def chromium_executable() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test driving the real app in headless Chromium")


# ----------------------------------------------------------------------------- the runs the app shows


def start_fixture_training(root: Path) -> dict[str, subprocess.Popen]:
    """Both fixture runs at once (one process each): 20 steps of digits, evaluated only at the end."""
    return {
        name: subprocess.Popen(
            [sys.executable, "-m", "ecaml", "train", "--dataset", "digits", "--max-steps", TRAIN_STEPS,
             "--eval-every", "0", "--ec-weight", ec_weight, "--seed", "0", "--quiet", "--out", str(root / name)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        for name, ec_weight in FIXTURE_RUNS.items()
    }


def finish_fixture_training(processes: dict[str, subprocess.Popen]) -> None:
    try:
        for name, process in processes.items():
            output, _ = process.communicate(timeout=TRAIN_TIMEOUT_S)
            assert process.returncode == 0, f"training the fixture run {name} failed:\n{output}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    path = chromium_executable()
    if path is None:
        pytest.skip("Debian chromium not installed: apt-get install chromium")
    return path


@pytest.fixture(scope="session")
def e2e_dirs(tmp_path_factory, chromium_path) -> dict[str, Path]:
    """Empty checkpoints/ (the fixture runs are trained into it while the server starts), runs/ and cache/."""
    root = tmp_path_factory.mktemp("e2e")
    dirs = {name: root / name for name in ("checkpoints", "runs", "cache")}
    for path in dirs.values():
        path.mkdir()
    return dirs


# ----------------------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    runs_dir: Path
    checkpoints_dir: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return "(no server log)"


def stop_training_job(runs_dir: Path) -> None:
    """A job the Train page started runs detached from the server: stop it too, and wait (bounded) for it to end."""
    from ecaml.serve.jobs import JobManager

    try:
        manager = JobManager(runs_dir)
        if manager.current() is None:
            return
        manager.stop()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while manager.current() is not None and time.monotonic() < deadline:
            time.sleep(0.25)
    except Exception as error:  # noqa: BLE001 - teardown must go on
        print(f"could not stop the training job in {runs_dir}: {error}", file=sys.stderr)


@contextmanager
def serving(checkpoints: Path, folders: Path, health_timeout_s: float = HEALTH_TIMEOUT_S):
    """A Streamlit server of the app on ``checkpoints``, with runs/ and cache/ (and its log) under ``folders``."""
    port = free_port()
    log_path = folders / "streamlit.log"
    env = dict(os.environ, ECAML_CHECKPOINTS_DIR=str(checkpoints), ECAML_RUNS_DIR=str(folders / "runs"),
               ECAML_CACHE_DIR=str(folders / "cache"), ECAML_WARM_CACHE="0", PYTHONUNBUFFERED="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, health_timeout_s)
        yield Server(url, process, log_path, folders / "runs", checkpoints)
    finally:
        stop_process_group(process)


@pytest.fixture(scope="session")
def app_server(e2e_dirs, tmp_path_factory) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("e2e-server") / "streamlit.log"
    env = dict(os.environ)
    env.update(
        ECAML_CHECKPOINTS_DIR=str(e2e_dirs["checkpoints"]),
        ECAML_RUNS_DIR=str(e2e_dirs["runs"]),
        ECAML_CACHE_DIR=str(e2e_dirs["cache"]),
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        PYTHONUNBUFFERED="1",
        # No start-up warm-up of the aligned UMAP: Embeddings then always opens on PCA, and the test asks for
        # the UMAP with the page's button (the warm-up itself is tested in tests/app).
        ECAML_WARM_CACHE="0",
    )
    command = [
        sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(url, process, log_path, e2e_dirs["runs"], e2e_dirs["checkpoints"])
    try:
        # The app lists runs afresh on every page load, so the fixture runs may be trained while it starts.
        finish_fixture_training(start_fixture_training(e2e_dirs["checkpoints"]))
        try:
            wait_healthy(url, process, HEALTH_TIMEOUT_S)
        except RuntimeError as error:
            pytest.fail(f"{error}\n--- server log ---\n{server.log()}")
        yield server
    finally:
        stop_training_job(e2e_dirs["runs"])
        stop_process_group(process)


# ----------------------------------------------------------------------------- the browser


@dataclass
class BrowserLog:
    """What the page reported: uncaught errors, console errors, and requests that tried to leave the machine."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    blocked_requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture(scope="session")
def page(browser, app_server, browser_log):
    """One tab for the whole session (so the pages share a Streamlit session, as a person's would)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")

    def route(route):
        if route.request.url.startswith((app_server.url + "/", "data:", "blob:")) or route.request.url == app_server.url:
            route.continue_()
        else:  # loopback only: nothing may leave the machine
            browser_log.blocked_requests.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    context.expose_binding("__e2eReportError", lambda source, text: browser_log.page_errors.append(f"{source['page'].url}: {text}"))
    context.add_init_script(ERROR_LISTENER)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.on("pageerror", lambda error: browser_log.page_errors.append(f"{tab.url}: {error}"))
    tab.on(
        "console",
        lambda message: browser_log.console_errors.append(f"{tab.url}: {message.text} ({message.location.get('url')})")
        if message.type == "error" else None,
    )
    try:
        yield tab
    finally:
        context.close()
