"""Two students at once on a read-only server (benchmarks/classroom.py --sessions 2): every page of every session
settles with no exception, and nothing is written under the runs folder. Timings are the benchmark's business.

The server serves the shipped digits and glyphs runs: the Fashion-MNIST pair adds a minute of embedding 2 x 35,000
photos to the server's warm-up and nothing to what this test checks (its pages are driven in tests/e2e/ and
tests/app/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def built_in_checkpoints(root: Path) -> Path:
    """A copy of checkpoints/ with its digits and glyphs runs, featuring the digits pair."""
    shipped = REPO_ROOT / "checkpoints"
    for run in shipped.iterdir():
        if run.is_dir() and run.name.startswith(("digits-", "glyphs-")):
            shutil.copytree(run, root / run.name)
    featured = json.loads((shipped / "featured.json").read_text())
    featured = {key: value for key, value in featured.items() if key != "fashion-mnist"}
    (root / "featured.json").write_text(json.dumps(featured))
    return root


def test_two_sessions_visit_every_page_of_a_read_only_server(chromium_path, tmp_path):
    checkpoints = built_in_checkpoints(tmp_path)
    # Its own process: the benchmark drives Chromium with asyncio, and this test process may already hold the
    # event loop of the other browser tests' (synchronous) Playwright.
    result = subprocess.run([sys.executable, "benchmarks/classroom.py", "--sessions", "2", "--warm", "pca",
                             "--checkpoints", str(checkpoints)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["visits"] == 2 * 5  # Compare, Embeddings, Retrieval, Train, About
    assert report["unsettled_visits"] == [], result.stderr[-3000:]
    assert report["exceptions"] == 0, report["browser_errors"]
    assert report["read_only"] and not report["runs_folder_written"]
    assert report["server_cpu_s_per_visit"] > 0  # the meter read the server, not some other process
