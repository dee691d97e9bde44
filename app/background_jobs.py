"""Work that takes longer than a page may wait (embedding a split, a UMAP, thumbnail sheets), in background threads.

One registry per server process, shared by every session: a page asks for a job
by its key and gets the one already running (or finished) or a new one, so
leaving a page and coming back, or a second tab, re-attaches to the same job.
The work writes its result to the disk cache; pages poll the job's progress and
then read the cache. ``follow`` redraws a page when its jobs end.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from app.errors import LOG

MAX_FINISHED_JOBS = 32
POLL_SECONDS = 1.0
EXIT_WAIT_SECONDS = 10.0
# Set when the process exits: work that loops (a live film) ends at its next look. A daemon thread still inside
# torch when the interpreter tears down aborts the process ("terminate called without an active exception").
SHUTTING_DOWN = threading.Event()


@dataclass
class BackgroundJob:
    """One piece of work in a thread; ``done`` of ``total`` is its progress (total 0: unknown)."""

    label: str
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    error: Exception | None = None
    thread: threading.Thread | None = None
    ended: float | None = None
    result: Any = None  # what the work leaves for the page, when it is small (most jobs write to the disk cache)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def report(self, done: int, total: int) -> None:
        """The progress callback handed to the library."""
        self.done, self.total = int(done), int(total)


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[tuple, BackgroundJob]:
    """Per process: job key -> its latest job."""
    return {}


_lock = threading.Lock()


def job_by_key(key: tuple) -> BackgroundJob | None:
    return _jobs().get(key)


def forget(key: tuple) -> None:
    with _lock:
        _jobs().pop(key, None)


def start(key: tuple, label: str, work: Callable[[BackgroundJob], None], yield_cpu: bool = True) -> BackgroundJob:
    """The job known under ``key``, else ``work(job)`` started now in a daemon thread, at a lower CPU priority
    unless ``yield_cpu`` is False (work that is what the page shows now, beside processes that fill every core)."""
    with _lock:
        jobs = _jobs()
        if key in jobs:
            return jobs[key]
        finished = [k for k, job in jobs.items() if not job.running]
        for old in finished[: max(0, len(jobs) - MAX_FINISHED_JOBS)]:
            del jobs[old]
        job = BackgroundJob(label)
        job.thread = threading.Thread(target=_body, args=(job, work, yield_cpu), name=f"ecaml-{label}", daemon=True)
        job.thread.start()  # before it is listed: a listed job that is not running has ended
        _jobs_seen[:] = [seen for seen in _jobs_seen if seen.running] + [job]
        jobs[key] = job
        return job


@atexit.register
def _let_running_jobs_end() -> None:
    SHUTTING_DOWN.set()
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for job in list(_jobs_seen):
        if job.thread is not None:
            job.thread.join(max(0.0, deadline - time.monotonic()))


_jobs_seen: list[BackgroundJob] = []  # every job of this process (the registry is Streamlit's and may be cleared)


def _body(job: BackgroundJob, work: Callable[[BackgroundJob], None], yield_cpu: bool) -> None:
    """Never raises, so the thread cannot take anything down; failures are kept on the job and logged."""
    try:
        if yield_cpu:
            _lower_thread_priority()
        work(job)
        LOG.info("%s done in %.1f s", job.label, job.seconds)
    except Exception as error:  # noqa: BLE001 - a background thread must never take the app down
        job.error = error
        LOG.exception("%s failed in the background", job.label)
    finally:
        job.ended = time.monotonic()


def _lower_thread_priority() -> None:
    """Let the pages' own threads go first on a busy CPU (Linux: a nice value per thread); elsewhere nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def show_progress(job: BackgroundJob, what: str) -> None:
    """One progress bar with what is being done, how far and for how long."""
    if job.total:
        text = f"{what}: {job.done:,} of {job.total:,} ({job.seconds:.0f} s)"
    else:
        text = f"{what}: starting ({job.seconds:.0f} s)"
    st.progress(job.fraction, text=text)


@st.fragment(run_every=POLL_SECONDS)
def follow(keys: tuple, labels: tuple) -> None:
    """Progress bars of the jobs under ``keys``, redrawn every second; the whole page reruns once all have ended."""
    jobs = [job_by_key(key) for key in keys]
    if all(job is None or not job.running for job in jobs):
        st.rerun()
    for job, what in zip(jobs, labels):
        if job is not None and job.running:
            show_progress(job, what)


def running(jobs: Iterable[BackgroundJob | None]) -> bool:
    return any(job is not None and job.running for job in jobs)
