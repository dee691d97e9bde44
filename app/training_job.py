"""The runs folder's one training job, as the pages see it: its state, its progress, whose it is, the sidebar bar.

The folder has one job at a time, shared by every browser session; each session remembers the run it started
(``OWN_JOB_KEY``), so that its messages name its own job and a job started from another tab is called that.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.deployment import READ_ONLY_TRAINING_MESSAGE, read_only
from app.errors import LOG, USER_ERRORS
from app.locations import runs_dir
from app.run_catalog import LIVE_STATES
from ecaml.jobs import JobError, JobManager

OWN_JOB_KEY = "own_training_job"  # the run directory of the last job this session started
OWN_JOB_REFRESH_S = 1.0  # the sidebar progress of a job this session started
OTHER_JOB_REFRESH_S = 5.0  # ... and of a job another session started


def job_manager() -> JobManager:
    """The manager of the runs folder's one training job; it keeps its state in that folder, so any instance will do.

    In read-only mode there is no manager at all (it would write its lock under runs/): asking for one raises
    the JobError that pages show as their one-sentence refusal.
    """
    if read_only():
        raise JobError(READ_ONLY_TRAINING_MESSAGE)
    return JobManager(runs_dir())


def current_job() -> Path | None:
    """The run directory of the job training now, or None (always None in read-only mode)."""
    if read_only():
        return None
    try:
        return job_manager().current()
    except USER_ERRORS as error:
        LOG.warning("cannot read the training job: %s", error)
        return None


def job_progress(run_dir: Path):
    if read_only():
        return None
    try:
        return job_manager().progress(run_dir)
    except USER_ERRORS as error:
        LOG.warning("cannot read the progress of %s: %s", run_dir, error)
        return None


def own_job() -> Path | None:
    """The run directory of the last job this session started, if any."""
    own = st.session_state.get(OWN_JOB_KEY)
    return Path(own) if own else None


def remember_own_job(run_dir: Path) -> None:
    st.session_state[OWN_JOB_KEY] = str(run_dir)


def started_here(run_dir: Path) -> bool:
    return own_job() == Path(run_dir)


def job_title(run_dir: Path) -> str:
    """"Training X" for this session's job, "Another session is training X" for one started elsewhere."""
    name = Path(run_dir).name
    return f"Training {name}" if started_here(run_dir) else f"Another session is training {name}"


def show_training_in_sidebar() -> None:
    """A small progress bar in the sidebar while a job trains: refreshed every second for this session's own job,
    every few seconds for another session's (each refresh is a rerun on the server for every open tab, and a room
    of viewers should not pay a second-by-second progress bar they did not ask for)."""
    run_dir = current_job()
    progress = job_progress(run_dir) if run_dir else None
    if progress is None or progress.state not in LIVE_STATES:
        return
    refresh = OWN_JOB_REFRESH_S if started_here(run_dir) else OTHER_JOB_REFRESH_S
    with st.sidebar:
        st.fragment(run_every=refresh)(_sidebar_progress)(str(run_dir))


def _sidebar_progress(run_dir: str) -> None:
    progress = job_progress(Path(run_dir))
    if progress is None or progress.state not in LIVE_STATES:
        st.rerun()  # the job ended: redraw the whole page once, without this refresher
    st.caption(job_title(Path(run_dir)).replace(Path(run_dir).name, f"**{Path(run_dir).name}**"))
    st.progress(progress_fraction(progress), text=progress_text(progress))


def progress_fraction(progress) -> float:
    total = progress.total_steps or 0
    return min(1.0, progress.step / total) if total else 0.0


def progress_text(progress) -> str:
    if progress.state == "starting" or not progress.total_steps:
        return "starting: loading the libraries and the data…"
    return f"step {progress.step:,} of {progress.total_steps:,}"
