"""One training job per runs folder, for the app: a kernel lock held by the training processes themselves.

``JobManager.start`` launches ``python -m ecaml train ... --quiet`` as a detached
process (its own session), so it outlives Streamlit reruns and page reloads, and
the page never waits on it. A job may train several runs at once (the lesson's
pair). The job is found again through the folder alone, so two managers (two
browser tabs, an app restart, another process) on the same folder see the same job:

* ``runs_root/.train.lock`` is locked with ``flock`` (``ecaml.store.locks``). The
  starter takes the lock, launches the training processes with the locked
  descriptor inherited, and closes its own copy: from then on the training
  processes alone hold it, and the kernel releases it when the last of them
  exits, ``kill -9`` and out-of-memory included. So a second starter is refused
  for exactly as long as a job trains, with no pid or stale lock to judge.
* ``runs_root/.train.job.json`` (written by the starter while it holds the
  lock) names the job's runs, their pids (to signal a stop) and its owner; it
  is believed only while the lock is held.
* Each run directory (``status.json``, ``history.jsonl``, read through
  ``ecaml.runs``) says how far it got, and its own lock says whether its trainer
  still lives; ``progress`` turns a process that died without writing a final
  status into "failed". The job's output goes to its log (``ecaml.serve.job_logs``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecaml.config import TrainConfig
from ecaml.serve.job_command import (
    NAME_PATTERN,
    REPOSITORY_ROOT,
    JobError,
    checked_config,
    default_run_name,
    training_command,
)
from ecaml.serve.job_logs import (
    adopt_log,
    last_error_line,
    log_header,
    log_path,
    note_stop,
    pending_log_path,
    started_by,
    stop_was_requested,
    stopped_by,
)
from ecaml.store.atomic import atomic_write_json
from ecaml.store.locks import fcntl, is_locked, try_lock
from ecaml.store.run_files import METRICS_FILE, RunError, read_history, read_status, run_is_training

LOCK_NAME = ".train.lock"
RECORD_NAME = ".train.job.json"
FINAL_STATES = ("completed", "stopped", "failed")
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # who started or stopped a job, as written in its log

# Popen objects of the jobs this process started and that have not ended yet, keyed by pid. Each has a
# reaper thread that waits for it, so a finished job never lingers as a zombie, whether or not a page asks.
# Only these, our own children, are ever waited for.
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


@dataclass
class JobProgress:
    run_dir: Path
    state: str  # "running" | "completed" | "stopped" | "failed" | "starting"
    step: int
    total_steps: int
    message: str | None
    history: list[dict] = field(default_factory=list)
    log_path: Path | None = None  # the job's stdout/stderr, when there is one
    pid: int | None = None  # the training process while it runs
    owner: str | None = None  # who started it (as the starter named itself), when known
    stopped_by: str | None = None  # who asked it to stop, when someone did
    phase: str | None = None  # what a running trainer does past its steps (FINAL_EVALUATION), else None


@dataclass
class JobRecord:
    """What the runs folder's job trains: its runs (with their pids once launched) and who started it."""

    runs: list[Path]
    pids: list[int | None]
    owner: str | None
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [str(r) for r in self.runs], "pids": self.pids, "owner": self.owner, "started": self.started}

    def pid_of(self, run_dir: Path) -> int | None:
        return self.pids[self.runs.index(run_dir)] if run_dir in self.runs else None


class JobManager:
    """Starts, watches and stops the one training job of ``runs_root``."""

    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root).expanduser().resolve()
        self.lock_path = self.runs_root / LOCK_NAME
        self.record_path = self.runs_root / RECORD_NAME

    # ------------------------------------------------------------------ start

    def start(self, config: TrainConfig, name: str | None = None, owner: str | None = None) -> Path:
        """Launch a training job into ``runs_root/NAME`` and return that run directory at once.

        Refusals (an invalid config or name, an existing run of that name, a job
        already running) raise JobError and write nothing.
        """
        return self.start_together([(config, name)], owner=owner)[0]

    def start_together(self, configs: list[tuple[TrainConfig, str | None]], owner: str | None = None) -> list[Path]:
        """One job training several runs at once (a process each), all holding the folder's lock; their folders."""
        if fcntl is None:
            raise JobError("background training needs a system with flock (Linux or macOS)")
        if owner is not None and not OWNER_PATTERN.match(owner):
            raise JobError(f"owner {owner!r} must be 1-64 letters, digits or ._:-")
        resolved = [checked_config(config) for config, _ in configs]
        names = [name for _, name in configs]
        self._new_run_dirs(resolved, names)  # refuse a bad or taken name before anything is written
        running = self.current()
        if running is not None:
            raise JobError(self._busy_message(running))
        self.runs_root.mkdir(parents=True, exist_ok=True)
        descriptor = try_lock(self.lock_path)
        if descriptor is None:
            running = self.current()
            raise JobError(self._busy_message(running) if running else "the last training job is still ending; "
                                                                         "try again in a moment")
        try:  # we hold the lock: nobody else can be choosing names or launching here now
            run_dirs = self._new_run_dirs(resolved, names)
            record = JobRecord(run_dirs, [None] * len(run_dirs), owner, time.time())
            atomic_write_json(self.record_path, record.to_dict())
            processes = []
            try:
                for config, run_dir in zip(resolved, run_dirs):
                    processes.append(_launch(config, run_dir, owner, descriptor))
            except BaseException as error:
                for process in processes:
                    process.kill()
                for run_dir in run_dirs:
                    pending_log_path(run_dir).unlink(missing_ok=True)
                if isinstance(error, OSError):
                    raise JobError(f"could not start training: {error}") from None
                raise
            record.pids = [process.pid for process in processes]
            atomic_write_json(self.record_path, record.to_dict())
        finally:
            os.close(descriptor)  # the training processes hold the lock now (or nobody, after a failure)
        return run_dirs

    def _new_run_dirs(self, configs: list[TrainConfig], names: list[str | None]) -> list[Path]:
        chosen: list[Path] = []
        for config, name in zip(configs, names):
            chosen.append(self._new_run_dir(config, name, taken=chosen))
        return chosen

    def _new_run_dir(self, config: TrainConfig, name: str | None, taken: list[Path]) -> Path:
        def free(run_dir: Path) -> bool:
            return not run_dir.exists() and not pending_log_path(run_dir).exists() and run_dir not in taken

        if name is not None:
            if not NAME_PATTERN.match(name):
                raise JobError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (not starting with . or -)")
            if not free(self.runs_root / name):
                raise JobError(f"a run named {name} already exists in {self.runs_root}; pick another name")
            return self.runs_root / name
        base = default_run_name(config)
        for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
            if free(self.runs_root / (base + suffix)):
                return self.runs_root / (base + suffix)
        raise JobError(f"no free run name like {base} in {self.runs_root}")

    def _busy_message(self, run_dir: Path) -> str:
        progress = self.progress(run_dir)
        total = progress.total_steps or "?"
        return f"a training job is already running: {run_dir.name}, step {progress.step}/{total}; stop it or wait"

    # ------------------------------------------------------------------ watch

    def current(self) -> Path | None:
        """The run directory the job trains now (the first of several still training), or None."""
        running = self.current_runs()
        return running[0] if running else None

    def current_runs(self) -> list[Path]:
        """The job's runs that have not ended yet (a run with a final status is only exiting)."""
        record = self.live_record()
        if record is None:
            return []
        running = [run_dir for run_dir in record.runs if not _has_final_status(run_dir)]
        for run_dir in running:
            adopt_log(run_dir, alive=True)
        return running

    def live_record(self) -> JobRecord | None:
        """The record of the job holding the folder's lock now, or None when no job runs."""
        if not is_locked(self.lock_path):
            return None
        return self.last_record() or JobRecord([], [], None, time.time())  # a starter is writing it

    def last_record(self) -> JobRecord | None:
        """The record of the latest job started here, running or not (it says who started it)."""
        try:
            raw = _read_json(self.record_path)
            runs = [Path(str(r)) for r in raw["runs"]]
            pids = [p if isinstance(p, int) and not isinstance(p, bool) and p > 0 else None for p in raw["pids"]]
            owner = raw.get("owner") if isinstance(raw.get("owner"), str) else None
            return JobRecord(runs, (pids + [None] * len(runs))[: len(runs)], owner, float(raw.get("started", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owner_of(self, run_dir: Path) -> str | None:
        """Who started the job of ``run_dir`` (from the first lines of its log: cheap enough for every refresh)."""
        return started_by(log_path(Path(run_dir).expanduser().resolve()))

    def progress(self, run_dir: Path) -> JobProgress:
        """Where the job (or finished run) in ``run_dir`` stands, from its status, history, log and locks."""
        run_dir = Path(run_dir).expanduser().resolve()
        record = self.live_record()
        in_job = record is not None and run_dir in record.runs
        status = read_status(run_dir) if run_dir.is_dir() else None
        training = run_dir.is_dir() and run_is_training(run_dir)  # its trainer holds the run's own lock
        alive = in_job or training
        pid = record.pid_of(run_dir) if in_job else None
        if pid is None and training and status is not None:
            pid = _int(status.get("pid")) or None
        adopt_log(run_dir, alive)
        log = log_path(run_dir)
        try:
            history = read_history(run_dir) if run_dir.is_dir() else []
        except (RunError, OSError):
            history = []
        steps = [r.get("step", 0) for r in history if r.get("kind") == "step" and isinstance(r.get("step"), int)]
        status_step = _int(status.get("step")) if status else 0
        step = max([status_step, *steps])
        total = _int(status.get("total_steps")) if status else 0
        state = status.get("state") if status else None

        def result(state: str, message: str | None = None, live: bool = False, at: int = step) -> JobProgress:
            return JobProgress(run_dir, state, at, total, message, history, log, pid if live else None,
                               started_by(log), stopped_by(log), status.get("phase") if status and live else None)

        if state in FINAL_STATES:
            message = status.get("message") if state == "failed" else None
            return result(state, message, at=status_step if state == "stopped" else step)  # stopped: the checkpoint's
        if alive:
            return result("running" if state == "running" else "starting", live=True)
        if status is None and not run_dir.exists() and log is None:
            raise JobError(f"no run or training job at {run_dir}")
        if stop_was_requested(log):
            return result("stopped", "stopped before training started" if not steps else None)
        if state == "running":
            return result("failed", f"training process ended unexpectedly at step {step}")
        if (run_dir / METRICS_FILE).is_file():
            return result("completed")
        return result("failed", last_error_line(log) or "training process ended before training started")

    # ------------------------------------------------------------------ stop

    def stop(self, by: str | None = None) -> None:
        """Ask the running job to stop (SIGTERM to each of its processes): each finishes its step, checkpoints and
        reports "stopped". ``by`` (who asks) is noted in each run's log, for every reader to show."""
        record = self.live_record()
        if record is None:
            return
        for run_dir, pid in zip(record.runs, record.pids):
            if pid is None or _has_final_status(run_dir):
                continue
            note_stop(log_path(run_dir), by if by is None or OWNER_PATTERN.match(by) else None)
            try:  # the lock is held, so this job's processes are alive: the pid is still theirs
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# ----------------------------------------------------------------------------- processes


def _launch(config: TrainConfig, run_dir: Path, owner: str | None, lock_descriptor: int) -> subprocess.Popen:
    """Start one training process that inherits (and so holds) the folder's lock; its output goes to its log."""
    command, environment = training_command(config, run_dir)
    pending_log_path(run_dir).write_bytes(log_header(command, owner))
    # Append mode (O_APPEND) for the child: a stop note written meanwhile by another session (note_stop) stays,
    # where a plain write offset would let the child's next lines overwrite it.
    with open(pending_log_path(run_dir), "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPOSITORY_ROOT, env=environment, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock_descriptor,),
        )
    _watch_child(process)
    return process


def _watch_child(process: subprocess.Popen) -> None:
    """Keep ``process`` and reap it the moment it exits, from a daemon thread.

    Pages poll a job only while someone looks at them (and a crashed page never polls again), so waiting must
    not depend on them: the thread's ``wait`` collects the exit status as soon as the job ends.
    """
    with _children_lock:
        _children[process.pid] = process

    def wait_then_forget() -> None:
        process.wait()
        with _children_lock:
            _children.pop(process.pid, None)

    threading.Thread(target=wait_then_forget, name=f"ecaml-reaper-{process.pid}", daemon=True).start()


def _has_final_status(run_dir: Path) -> bool:
    status = read_status(run_dir) if Path(run_dir).is_dir() else None
    return status is not None and status.get("state") in FINAL_STATES


def _read_json(path: Path) -> dict:
    value = json.loads(path.read_bytes())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
