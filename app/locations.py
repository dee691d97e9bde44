"""Where the app finds things: shipped runs, the user's runs, the disk cache and the data folder.

Each place can be moved with an environment variable, which tests and deployments use.
"""

from __future__ import annotations

import os
from pathlib import Path

from ecaml.store.paths import default_cache_dir


REPO_ROOT = Path(__file__).resolve().parents[1]


CHECKPOINTS_ENV, RUNS_ENV, CACHE_ENV = "ECAML_CHECKPOINTS_DIR", "ECAML_RUNS_DIR", "ECAML_CACHE_DIR"


DATA_ENV = "ECAML_DATA_DIR"


def _configured(variable: str, default: Path) -> Path:
    # Resolved, so that run paths compare equal to the ones the job manager (which resolves) hands back.
    return Path(os.environ.get(variable) or default).expanduser().resolve()


def checkpoints_dir() -> Path:
    """Shipped runs (read-only for the app)."""
    return _configured(CHECKPOINTS_ENV, REPO_ROOT / "checkpoints")


def runs_dir() -> Path:
    """The user's own runs, where the Train page writes."""
    return _configured(RUNS_ENV, REPO_ROOT / "runs")


def cache_dir() -> Path:
    """Embeddings and projections cached on disk: the library's one root (``$ECAML_CACHE_DIR``, else
    ``~/.cache/ecaml``), so what ``python -m ecaml embed`` cached the app reuses, and the reverse."""
    return default_cache_dir()


def data_dir() -> Path:
    """The only place the Train page may read a folder dataset from."""
    return _configured(DATA_ENV, REPO_ROOT / "data")


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it: shorter, and the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
