"""The runs folder's one training job, as the pages see it: its state, its progress, whose it is, the sidebar bar.

The folder has one job at a time, shared by every browser session. A job belongs to the browser session that
started it, across reloads: each session has an owner token, kept in the page's address (``?owner=...``, so a
reload or a bookmark keeps it), and the job manager writes it into the job's log. The owner can stop its job;
others watch it read-only (stopping it takes a confirmation), and a stop is noted with who asked for it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from app.deployment import READ_ONLY_TRAINING_MESSAGE, read_only
from app.errors import LOG, USER_ERRORS
from app.locations import runs_dir
from app.run_catalog import LIVE_STATES
from ecaml.serve.job_command import JobError
from ecaml.serve.jobs import OWNER_PATTERN, JobManager
from ecaml.store.run_files import FINAL_EVALUATION

OWN_JOB_KEY = "own_training_job"  # the run directory of the last job this session started
OWNER_KEY = "job_owner_token"  # this browser session's owner token ...
OWNER_PARAM = "owner"  # ... and the query parameter that keeps it across reloads
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


def current_runs() -> list[Path]:
    """Every run the job trains now (the lesson trains two), or [] (always [] in read-only mode)."""
    if read_only():
        return []
    return _quietly(lambda: job_manager().current_runs()) or []


def job_progress(run_dir: Path):
    if read_only():
        return None
    try:
        return job_manager().progress(run_dir)
    except USER_ERRORS as error:
        LOG.warning("cannot read the progress of %s: %s", run_dir, error)
        return None


def session_owner() -> str:
    """This browser session's owner token: the one in the address when it has one (a reload), else a new one, which
    is put into the address so that a reload finds it again."""
    token = st.session_state.get(OWNER_KEY)
    if token is None:
        given = st.query_params.get(OWNER_PARAM)
        token = given if isinstance(given, str) and OWNER_PATTERN.match(given) else secrets.token_hex(4)
        st.session_state[OWNER_KEY] = token
    if st.query_params.get(OWNER_PARAM) != token:
        st.query_params[OWNER_PARAM] = token
    return token


def own_job() -> Path | None:
    """The run directory of the last job this session started, if any (after a reload: the folder's last job, when
    this session's owner token started it)."""
    own = st.session_state.get(OWN_JOB_KEY)
    if own:
        return Path(own)
    runs = own_last_job()
    return runs[0] if len(runs) == 1 else None


def own_last_job() -> list[Path]:
    """The runs of the folder's last job when this session started it (found again after a reload), else []."""
    record = None if read_only() else _quietly(lambda: job_manager().last_record())
    return record.runs if record is not None and record.owner == session_owner() else []


def started_by_this_session(run_dir: Path) -> bool:
    """Whether this session's owner token started the job that trained ``run_dir`` (its log names the starter)."""
    return not read_only() and _quietly(lambda: job_manager().owner_of(run_dir)) == session_owner()


def _quietly(read):
    try:
        return read()
    except USER_ERRORS as error:
        LOG.warning("cannot read the training job: %s", error)
        return None


def remember_own_job(run_dir: Path) -> None:
    st.session_state[OWN_JOB_KEY] = str(run_dir)


def started_here(run_dir: Path) -> bool:
    """Whether this session started the job in ``run_dir`` (its owner token is the one in the job's log)."""
    return own_job() == Path(run_dir) or owner_of(run_dir) == session_owner()


def owner_of(run_dir: Path) -> str | None:
    return None if read_only() else _quietly(lambda: job_manager().owner_of(run_dir))


def who(token: str | None) -> str:
    """A job's owner or stopper in words: "you" (this session), "session 3f2a9c01", or someone outside the app."""
    if token is None:
        return "someone outside this app (a signal, or the command line)"
    return "you" if token == session_owner() else f"session {token}"


def stopped_text(progress) -> str:
    """"was stopped at step N by ...": the same words on every page and in every session."""
    return f"was stopped at step {progress.step:,} by {who(progress.stopped_by)}"


def start(config, name: str | None) -> Path:
    """Start a job owned by this session (JobError when refused)."""
    return job_manager().start(config, name=name, owner=session_owner())


def stop() -> None:
    """Ask the job to stop, noting in its log that this session asked."""
    job_manager().stop(by=session_owner())


def show_last_stop() -> None:
    """When the folder's last job was stopped: which run, at which step, by whom (for every session to see)."""
    record = None if read_only() else _quietly(lambda: job_manager().last_record())
    for run_dir in record.runs if record is not None else []:
        progress = job_progress(run_dir)
        if progress is not None and progress.state == "stopped":
            st.info(f"Run **{run_dir.name}** {stopped_text(progress)}.", icon=":material/stop_circle:")


def job_title(run_dir: Path) -> str:
    """"Training X" for this session's job, "Session S is training X" for one started elsewhere."""
    name = Path(run_dir).name
    if started_here(run_dir):
        return f"Training {name}"
    owner = owner_of(run_dir)
    return f"Session {owner} is training {name}" if owner else f"Another session is training {name}"


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
    steps = f"step {progress.step:,} of {progress.total_steps:,}"
    if progress.phase == FINAL_EVALUATION:
        return f"{steps}: training done, evaluating on held-out and unseen classes…"
    return steps
