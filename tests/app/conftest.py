"""Fixtures for the app tests: two tiny digits runs (EC off and on) trained once per session, and a page opener.

Every test gets its own empty runs folder and the shared fixture runs as the
"shipped" checkpoints, through the environment variables the app reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FIXTURE_RUNS = {"digits-ec-off": "0", "digits-ec-on": "0.13"}
TRAIN_STEPS = "20"


def train_tiny_runs(root: Path) -> None:
    """Both fixture runs at once (one process each), 20 steps, evaluated only at the end."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ecaml",
                "train",
                "--dataset",
                "digits",
                "--ec-weight",
                ec_weight,
                "--seed",
                "0",
                "--max-steps",
                TRAIN_STEPS,
                "--eval-every",
                "0",
                "--quiet",
                "--out",
                str(root / name),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, ec_weight in FIXTURE_RUNS.items()
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output


@pytest.fixture(scope="session")
def shipped_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    train_tiny_runs(root)
    return root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def app_environment(monkeypatch, tmp_path, shipped_runs, session_cache) -> Path:
    """Point the app at the fixture runs, an empty runs folder of this test's own, and the session's cache.

    The app's start-up warm-up (a background thread computing the aligned UMAP) is off, so that what a page
    shows never depends on how far that thread got; the tests that want it turn it on.
    """
    runs = tmp_path / "runs"
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(shipped_runs))
    monkeypatch.setenv("ECAML_RUNS_DIR", str(runs))
    monkeypatch.setenv("ECAML_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("ECAML_WARM_CACHE", "0")
    return runs


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path) -> Path:
    """An empty cache folder of this test's own (nothing embedded or projected yet)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ECAML_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def checkpoints_copy(monkeypatch, tmp_path, shipped_runs) -> Path:
    """A writable copy of the fixture runs, used as checkpoints/, for tests that add or break runs."""
    root = tmp_path / "checkpoints"
    shutil.copytree(shipped_runs, root)
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(root))
    return root


def pytest_configure(config):
    # Keep Streamlit's bare-mode notices out of the test output.
    os.environ.setdefault("STREAMLIT_LOGGER_LEVEL", "error")


@pytest.fixture
def glyph_runs(monkeypatch, tmp_path) -> Path:
    """Two shipped glyphs runs (52 unseen classes: more than the map's palette) as the checkpoints folder."""
    root = tmp_path / "glyphs"
    for name in ("glyphs-triplet-ec0-seed0", "glyphs-triplet-ec0.13-seed0"):
        shutil.copytree(REPO_ROOT / "checkpoints" / name, root / name, ignore=shutil.ignore_patterns("film"))
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(root))
    return root
