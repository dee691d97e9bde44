"""Projections computed in background jobs (``app.background_jobs``), and the warm-up at start.

The jobs write into the library's on-disk projection cache; pages poll the job
and read the cache, so no request waits on a UMAP.
"""

from __future__ import annotations

import os

import streamlit as st

from app import background_jobs
from app.background_jobs import BackgroundJob
from app.locations import cache_dir, checkpoints_dir, runs_dir
from app.run_catalog import RunEntry, default_selection, run_fingerprint, same_data, scan_all_runs, usable


WARM_CACHE_ENV = "ECAML_WARM_CACHE"  # 0: no warm-up at start; pca: warm the PCA maps only; else the aligned UMAP


# The projection the Embeddings page shows (with method "umap" or "pca"): every image of the split (no subsample,
# the map draws them all with WebGL). A warm-up must compute exactly this one.
PROJECTION = {"part": "unseen", "aligned": True, "seed": 0, "max_points": None}


def projection_job_key(chosen: list[RunEntry], method: str) -> tuple:
    """Which projection a job computes: the runs (their files as they are now), the method and the cache."""
    return ("projection", method, str(cache_dir()), tuple((entry.key, run_fingerprint(entry.path)) for entry in chosen))


def projection_job(chosen: list[RunEntry], method: str) -> BackgroundJob | None:
    return background_jobs.job_by_key(projection_job_key(chosen, method))


def forget_projection_job(chosen: list[RunEntry], method: str) -> None:
    background_jobs.forget(projection_job_key(chosen, method))


def project_in_background(chosen: list[RunEntry], method: str) -> BackgroundJob:
    """The job computing this projection into the disk cache: the one already known, else one started now."""
    runs, cache = [entry.run for entry in chosen], cache_dir()
    names = ", ".join(entry.name for entry in chosen)

    def work(job: BackgroundJob) -> None:
        from ecaml.serve.projection import warm_projection_cache  # slow first import (scikit-learn, umap): off the page

        warm_projection_cache(runs, method=method, cache_dir=cache, progress=job.report, **PROJECTION)

    return background_jobs.start(projection_job_key(chosen, method), f"{method} projection of {names}", work)


def warm_projection_setting() -> str | None:
    """The method the start-up warm-up computes, or None when ``ECAML_WARM_CACHE`` turns it off."""
    value = os.environ.get(WARM_CACHE_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return None
    return "pca" if value == "pca" else "umap"


def start_projection_warmup() -> BackgroundJob | None:
    """Once per server process (and cache folder): project the default pair in the background, as Embeddings shows it.

    Called by main.py after the first page has run, so the aligned UMAP is usually cached by the time someone
    opens Embeddings. Off with ``ECAML_WARM_CACHE=0``.
    """
    method = warm_projection_setting()
    if method is None:
        return None
    try:
        return _start_warmup(method, str(cache_dir()), str(checkpoints_dir()), str(runs_dir()))
    except _NothingToWarm:
        return None  # not remembered: the next page load looks again
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: it must never break a page
        background_jobs.LOG.exception("could not start warming the projection cache")
        return None


class _NothingToWarm(Exception):
    pass


@st.cache_resource(show_spinner=False)
def _start_warmup(method: str, cache: str, checkpoints: str, runs: str) -> BackgroundJob:
    # The folders are arguments only to key the cache: another configuration is another warm-up.
    entries = scan_all_runs()
    by_key = {entry.key: entry for entry in usable(entries)}
    chosen = [by_key[key] for key in default_selection(entries) if key in by_key]
    if not chosen:
        raise _NothingToWarm
    return project_in_background(same_data(chosen), method)
