#!/usr/bin/env python
"""How long the Embeddings page takes to become interactive with every unseen image on the map (not a test).

    python benchmarks/make_large_run.py --out /tmp/ecaml-large       # once: 60,000 unseen images, a trained pair
    python benchmarks/app_map.py --checkpoints /tmp/ecaml-large/checkpoints --out benchmarks/app_map.json

Starts the real Streamlit server on those runs with a private, empty cache (start-up warm-up off) and drives
Debian's chromium (playwright, nothing downloaded):

1. cold: opens Embeddings and waits until the map is interactive, through the background jobs (both runs'
   embeddings of the split, then the PCA); the thumbnail sheets are then waited for and timed too
   (with ``--cache`` holding a previous run's cache, this first visit is a new server process's, warm on disk);
2. warm: ``--tabs`` new tabs (each a new Streamlit session, a new browser context: empty HTTP cache), each
   timed from the start of navigation until the map is interactive: the map frame reports every panel built
   (``data-ready``) and a hover over a point is answered with that point's thumbnail.

Writes the figures (seconds) with the machine's core count and the exact command to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))

from conftest import CHROMIUM_ARGS, chromium_executable, free_port, stop_process_group, wait_healthy  # noqa: E402

VIEWPORT = {"width": 1400, "height": 1100}


def map_frame(page, timeout: float):
    """The map's iframe once it reports its panels built, and when that happened (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if frame.evaluate("() => document.body && document.body.dataset.ready") == "1":
                    return frame, time.monotonic()
            except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders
                pass
        time.sleep(0.05)
    raise TimeoutError(f"the map did not become ready within {timeout:.0f} s")


def hover_until_thumbnail(page, frame, timeout: float = 30.0) -> float:
    """Sweep the mouse over the first panel until a point's thumbnail shows; when it did (monotonic seconds)."""
    overlay = page.frame_locator("iframe[title*='embedding_map']").locator(".panel[data-panel='0'] canvas.overlay")
    box = overlay.bounding_box()
    deadline = time.monotonic() + timeout
    step = 0
    while time.monotonic() < deadline:
        x = box["x"] + box["width"] * (0.3 + 0.4 * ((step * 0.137) % 1))
        y = box["y"] + box["height"] * (0.3 + 0.4 * ((step * 0.291) % 1))
        page.mouse.move(x, y)
        step += 1
        if frame.evaluate("() => document.getElementById('tip-image').dataset.loaded") == "1":
            return time.monotonic()
        time.sleep(0.03)
    raise TimeoutError("no thumbnail appeared on hover")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "app_map.json")
    parser.add_argument("--cold-timeout", type=float, default=1800)
    parser.add_argument("--cache", type=Path, help="an existing cache folder (then the first visit is warm too)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="ecaml-app-map-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, ECAML_CHECKPOINTS_DIR=str(args.checkpoints), ECAML_RUNS_DIR=str(scratch / "runs"),
               ECAML_CACHE_DIR=str(args.cache or scratch / "cache"), ECAML_WARM_CACHE="0",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1"]
    with open(scratch / "streamlit.log", "wb") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    results: dict = {"command": " ".join(["python", "benchmarks/app_map.py", *sys.argv[1:]]), "cores": os.cpu_count()}
    try:
        wait_healthy(url, server, 60)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            page = context.new_page()
            started = time.monotonic()
            page.goto(f"{url}/embeddings")
            frame, ready = map_frame(page, args.cold_timeout)
            results["points_per_panel"] = int(frame.evaluate("() => document.body.dataset.points"))
            results["panels"] = int(frame.evaluate("() => document.body.dataset.panels"))
            results["renderer"] = frame.evaluate("() => document.getElementById('status').textContent")
            results["first_visit_map_ready_s" if args.cache else "cold_map_ready_s"] = round(ready - started, 1)
            # The thumbnails job started with the map: wait for it (the page reruns when it ends), then hover.
            frame, _ = map_frame(page, 600)
            while True:
                frame, _ = map_frame(page, 600)
                try:
                    hovered = hover_until_thumbnail(page, frame, timeout=5)
                    break
                except TimeoutError:
                    if time.monotonic() - started > args.cold_timeout:
                        raise
            results["first_visit_thumbnail_s" if args.cache else "cold_thumbnails_ready_s"] = round(hovered - started, 1)
            context.close()
            warm = []
            for _ in range(args.tabs):
                context = browser.new_context(viewport=VIEWPORT, service_workers="block")
                page = context.new_page()
                started = time.monotonic()
                page.goto(f"{url}/embeddings")
                frame, ready = map_frame(page, 120)
                hovered = hover_until_thumbnail(page, frame)
                warm.append({"map_ready_s": round(ready - started, 2), "hover_thumbnail_s": round(hovered - started, 2),
                             "build_ms": round(frame.evaluate("() => window.__mapBuildMs"), 1)})
                context.close()
            browser.close()
        results["warm_tabs"] = warm
        results["warm_interactive_median_s"] = round(statistics.median(w["hover_thumbnail_s"] for w in warm), 2)
        results["warm_map_ready_median_s"] = round(statistics.median(w["map_ready_s"] for w in warm), 2)
    finally:
        stop_process_group(server)
    results["note"] = "2 shared CPU cores, other jobs running: timings under contention"
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
