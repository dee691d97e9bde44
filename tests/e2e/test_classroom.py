"""Three students at once on a read-only server (benchmarks/classroom.py --sessions 3): every page of every session
settles with no exception, and nothing is written under the runs folder. Timings are the benchmark's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_three_sessions_visit_every_page_of_a_read_only_server(chromium_path):
    # Its own process: the benchmark drives Chromium with asyncio, and this test process may already hold the
    # event loop of the other browser tests' (synchronous) Playwright.
    result = subprocess.run([sys.executable, "benchmarks/classroom.py", "--sessions", "3", "--warm", "pca"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["visits"] == 3 * 5  # Compare, Embeddings, Retrieval, Train, About
    assert report["unsettled_visits"] == [], result.stderr[-3000:]
    assert report["exceptions"] == 0, report["browser_errors"]
    assert report["read_only"] and not report["runs_folder_written"]
    assert report["server_cpu_s_per_visit"] > 0  # the meter read the server, not some other process
