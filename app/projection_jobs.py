"""Projections computed in background threads, shared by every session, and the warm-up at start.

The threads write into the library's on-disk projection cache; pages poll the
job and read the cache, so no request waits on a UMAP.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from app.errors import LOG
from app.locations import cache_dir, checkpoints_dir, runs_dir
from app.run_catalog import RunEntry, default_selection, run_fingerprint, same_data, scan_all_runs, usable
from ecaml.runs import Run


WARM_CACHE_ENV = "ECAML_WARM_CACHE"  # 0: no warm-up at start; pca: warm the PCA maps only; else the aligned UMAP


# The projection the Embeddings page shows (with method "umap" or "pca"); a warm-up must compute exactly this one.
PROJECTION = {"part": "unseen", "aligned": True, "seed": 0, "max_points": 3000}


MAX_FINISHED_JOBS = 16


@dataclass
class ProjectionJob:
    """A projection being computed (and cached on disk) by a background thread; the page polls it."""

    run_names: list[str]
    method: str
    started: float = field(default_factory=time.monotonic)
    error: Exception | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@st.cache_resource(show_spinner=False)
def _projection_jobs() -> dict[tuple, ProjectionJob]:
    """Per process: job key -> its latest job, shared by every session (the disk cache is shared too)."""
    return {}


_jobs_lock = threading.Lock()


def projection_job_key(chosen: list[RunEntry], method: str) -> tuple:
    """Which projection a job computes: the runs (their files as they are now), the method and the cache."""
    return (method, str(cache_dir()), tuple((entry.key, run_fingerprint(entry.path)) for entry in chosen))


def projection_job(chosen: list[RunEntry], method: str) -> ProjectionJob | None:
    return projection_job_by_key(projection_job_key(chosen, method))


def projection_job_by_key(key: tuple) -> ProjectionJob | None:
    return _projection_jobs().get(key)


def forget_projection_job(chosen: list[RunEntry], method: str) -> None:
    with _jobs_lock:
        _projection_jobs().pop(projection_job_key(chosen, method), None)


def project_in_background(chosen: list[RunEntry], method: str) -> ProjectionJob:
    """The job computing this projection into the disk cache: the one already known, else a thread started now."""
    key = projection_job_key(chosen, method)
    with _jobs_lock:
        jobs = _projection_jobs()
        if key in jobs:
            return jobs[key]
        for old in [k for k, job in jobs.items() if not job.running][: max(0, len(jobs) - MAX_FINISHED_JOBS)]:
            del jobs[old]
        job = ProjectionJob([entry.name for entry in chosen], method)
        job.thread = threading.Thread(
            target=_compute_projection,
            args=(job, [entry.run for entry in chosen], cache_dir()),
            name=f"ecaml-{method}-projection",
            daemon=True,  # never holds up the server's exit
        )
        job.thread.start()  # before it is listed: a listed job that is not running has ended
        jobs[key] = job
        return job


def _compute_projection(job: ProjectionJob, runs: list[Run], cache: Path) -> None:
    """The body of a background job: never raises, so the thread cannot take anything down; failures are logged."""
    try:
        _lower_thread_priority()
        from ecaml.projection import warm_projection_cache  # slow first import (scikit-learn, umap): off the page

        computed = warm_projection_cache(runs, method=job.method, cache_dir=cache, **PROJECTION)
        LOG.info(
            "%s projection of %s %s in %.1f s",
            job.method, ", ".join(job.run_names), "computed and cached" if computed else "was already cached",
            job.seconds,
        )
    except Exception as error:  # noqa: BLE001 - a background thread must never take the app down
        job.error = error
        LOG.exception("computing the %s projection of %s in the background failed", job.method, job.run_names)


def _lower_thread_priority() -> None:
    """Let the pages' own threads go first on a busy CPU (Linux: a nice value per thread); elsewhere nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def warm_projection_setting() -> str | None:
    """The method the start-up warm-up computes, or None when ``ECAML_WARM_CACHE`` turns it off."""
    value = os.environ.get(WARM_CACHE_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return None
    return "pca" if value == "pca" else "umap"


def start_projection_warmup() -> ProjectionJob | None:
    """Once per server process (and cache folder): project the default pair in the background, as Embeddings shows it.

    Called by main.py after the first page has run, so the aligned UMAP (half a minute the first
    time) is usually cached by the time someone opens Embeddings. Off with ``ECAML_WARM_CACHE=0``.
    """
    method = warm_projection_setting()
    if method is None:
        return None
    try:
        return _start_warmup(method, str(cache_dir()), str(checkpoints_dir()), str(runs_dir()))
    except _NothingToWarm:
        return None  # not remembered: the next page load looks again
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: it must never break a page
        LOG.exception("could not start warming the projection cache")
        return None


class _NothingToWarm(Exception):
    pass


@st.cache_resource(show_spinner=False)
def _start_warmup(method: str, cache: str, checkpoints: str, runs: str) -> ProjectionJob:
    # The folders are arguments only to key the cache: another configuration is another warm-up.
    entries = scan_all_runs()
    by_key = {entry.key: entry for entry in usable(entries)}
    chosen = [by_key[key] for key in default_selection(entries) if key in by_key]
    if not chosen:
        raise _NothingToWarm
    return project_in_background(same_data(chosen), method)
