"""Three students at once on a read-only server (benchmarks/classroom.py --sessions 3): every page of every session
settles with no exception, and nothing is written under the runs folder. Timings are the benchmark's business."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_three_sessions_visit_every_page_of_a_read_only_server(chromium_path):
    from benchmarks.classroom import PAGES, run_benchmark

    report = run_benchmark(3, read_only=True, warm="pca")
    assert report["visits"] == 3 * len(PAGES)
    assert report["unsettled_visits"] == [], report
    assert report["exceptions"] == 0, report["browser_errors"]
    assert not report["runs_folder_written"]
    assert report["server_cpu_s_per_visit"] > 0  # the meter read the server, not some other process
