"""One background training job per runs folder, for the app.

``JobManager.start`` launches ``python -m ecaml train ... --quiet`` as a
detached process (its own session), so it outlives Streamlit reruns and page
reloads, and the page never waits on it. The job is found again through the
folder alone, so two managers (two browser tabs, or an app restart) on the same
folder see the same job:

* ``runs_root/.train.lock`` (JSON: pid, run_dir, started, proc_start_time) says
  which job runs. It is created atomically and exclusively, and removed as soon
  as anyone sees it stale: its process is gone, a zombie (reaped when it is our
  child), a different process that reuses the pid (its start time in /proc
  differs), or done (its run has a final status and it is only exiting). A
  crashed job therefore never keeps the folder locked.
* The run directory itself (``status.json``, ``history.jsonl``, read through
  ``ecaml.runs``) says how far the job got; ``progress`` turns a process that
  died without writing a final status (kill -9, out of memory) into "failed".
* The job's stdout and stderr go to ``run_dir/train.log``. Because ``train``
  insists on a new or empty run directory, the log starts as
  ``runs_root/.<name>.train.log`` and is moved into the run directory (the open
  file moves with it) once the run has written its ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecaml.config import TrainConfig
from ecaml.runs import CONFIG_FILE, METRICS_FILE, RunError, atomic_write_json, read_history, read_status

LOCK_NAME = ".train.lock"
LOG_NAME = "train.log"
STOP_MARKER = "ecaml.jobs: stop requested"
FINAL_STATES = ("completed", "stopped", "failed")
# A lock file with unreadable content younger than this is taken to be still being written.
_LOCK_WRITE_GRACE_S = 10.0
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

# Popen objects of the jobs this process started and that have not ended yet, keyed by pid. Each has a
# reaper thread that waits for it, so a finished job never lingers as a zombie, whether or not a page asks.
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


class JobError(RuntimeError):
    """A job that cannot be started or read, with a one-line reason."""


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


@dataclass
class _Lock:
    pid: int
    run_dir: Path | None  # None: a lock whose content is still being written
    started: float
    proc_start_time: int | None
    raw: bytes


# A job shares the machine with the app's viewers: it runs at a lower CPU priority and with at most all cores
# but one for torch's threads, so the pages stay responsive while it trains.
JOB_NICENESS = 10


def job_thread_budget() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def _sharing_cores(config: TrainConfig) -> TrainConfig:
    """The config with torch's CPU threads bounded by the job's budget (an explicit smaller choice stays)."""
    if config.cpu_threads == 0 and config.backbone == "smallcnn":
        return config  # training already uses one thread for it (ecaml.train)
    budget = job_thread_budget()
    threads = min(config.cpu_threads, budget) if config.cpu_threads else budget
    return dataclasses.replace(config, cpu_threads=threads)


def _background_priority() -> dict[str, str]:
    """Environment of a job: lower priority (applied by ``python -m ecaml`` before torch starts its threads)."""
    threads = str(job_thread_budget())
    return {"ECAML_NICE": str(JOB_NICENESS), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def default_run_name(config: TrainConfig) -> str:
    """``<dataset>-<loss>-ec<weight>-seed<seed>-<YYYYmmdd-HHMMSS>``, with only ``[A-Za-z0-9._-]``."""
    raw = f"{config.dataset}-{config.loss}-ec{config.ec_weight:g}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "run"


class JobManager:
    """Starts, watches and stops the one training job of ``runs_root``."""

    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root).expanduser().resolve()
        self.lock_path = self.runs_root / LOCK_NAME

    # ------------------------------------------------------------------ start

    def start(self, config: TrainConfig, name: str | None = None) -> Path:
        """Launch a training job into ``runs_root/NAME`` and return that run directory at once.

        Refusals (an invalid config or name, an existing run of that name, a job
        already running) raise JobError and write nothing.
        """
        try:
            resolved = _with_absolute_paths(config).resolved()
        except (TypeError, ValueError) as error:
            raise JobError(str(error)) from None
        if resolved.dataset == "folder" and not resolved.data_root:
            raise JobError("dataset folder needs data_root: a folder with one sub-folder of images per class")
        if resolved.dataset == "folder" and not Path(resolved.data_root).is_dir():
            raise JobError(f"dataset folder {resolved.data_root} does not exist")
        if resolved.weights_path and not Path(resolved.weights_path).is_file():
            raise JobError(f"weights file {resolved.weights_path} does not exist")
        running = self.current()
        if running is not None:
            raise JobError(self._busy_message(running))
        run_dir = self._new_run_dir(resolved, name)
        self.runs_root.mkdir(parents=True, exist_ok=True)
        if not self._acquire(run_dir):
            running = self.current()
            raise JobError(self._busy_message(running) if running else "another training job is starting; wait a moment")
        log_path = pending_log_path(run_dir)
        try:
            command = [sys.executable, "-m", "ecaml", "train", *config_flags(_sharing_cores(resolved)),
                       f"--out={run_dir}", "--quiet"]
            environment = dict(os.environ, PYTHONUNBUFFERED="1", **_background_priority())
            environment["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_REPOSITORY_ROOT), environment.get("PYTHONPATH", "")) if p
            )
            with open(log_path, "wb") as log:
                log.write(("$ " + " ".join(command) + "\n").encode())
                log.flush()
                process = subprocess.Popen(
                    command, cwd=_REPOSITORY_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            _watch_child(process)
            record = {"pid": process.pid, "run_dir": str(run_dir), "started": time.time(),
                      "proc_start_time": _proc_start_time(process.pid)}
            atomic_write_json(self.lock_path, record)
        except BaseException as error:
            self.lock_path.unlink(missing_ok=True)
            log_path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise JobError(f"could not start training: {error}") from None
            raise
        return run_dir

    def _new_run_dir(self, config: TrainConfig, name: str | None) -> Path:
        if name is not None:
            if not _NAME_PATTERN.match(name):
                raise JobError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (not starting with . or -)")
            run_dir = self.runs_root / name
            if run_dir.exists() or pending_log_path(run_dir).exists():
                raise JobError(f"a run named {name} already exists in {self.runs_root}; pick another name")
            return run_dir
        base = default_run_name(config)
        for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
            run_dir = self.runs_root / (base + suffix)
            if not run_dir.exists() and not pending_log_path(run_dir).exists():
                return run_dir
        raise JobError(f"no free run name like {base} in {self.runs_root}")

    def _busy_message(self, run_dir: Path) -> str:
        progress = self.progress(run_dir)
        total = progress.total_steps or "?"
        return f"a training job is already running: {run_dir.name}, step {progress.step}/{total}; stop it or wait"

    def _acquire(self, run_dir: Path) -> bool:
        """Create the lock exclusively, naming this process until the child's pid is known; False if held."""
        record = {"pid": os.getpid(), "run_dir": str(run_dir), "started": time.time(),
                  "proc_start_time": _proc_start_time(os.getpid()), "launching": True}
        data = json.dumps(record).encode()
        descriptor, temporary = tempfile.mkstemp(dir=self.runs_root, prefix=f"{LOCK_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, self.lock_path)  # atomic, exclusive, and never seen half-written
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                return _create_exclusive(self.lock_path, data)
        finally:
            Path(temporary).unlink(missing_ok=True)

    # ------------------------------------------------------------------ watch

    def current(self) -> Path | None:
        """The running job's run directory, or None; a stale lock is removed on the way."""
        lock = self._live_lock()
        if lock is None or lock.run_dir is None:
            return None
        _adopt_log(lock.run_dir, alive=True)
        return lock.run_dir

    def _live_lock(self) -> _Lock | None:
        lock = _read_lock(self.lock_path)
        if lock is None:
            return None
        if lock.run_dir is None:  # still being written, or garbage
            if time.time() - _mtime(self.lock_path) < _LOCK_WRITE_GRACE_S:
                return lock
            _remove_if_unchanged(self.lock_path, lock.raw)
            return None
        if _process_alive(lock.pid, lock.proc_start_time) and not _has_final_status(lock.run_dir):
            return lock
        # Gone, a zombie, another process under a reused pid, or done (a final status written, only exiting left).
        _remove_if_unchanged(self.lock_path, lock.raw)
        _adopt_log(lock.run_dir, alive=False)
        return None

    def progress(self, run_dir: Path) -> JobProgress:
        """Where the job (or finished run) in ``run_dir`` stands, from its status, history and process."""
        run_dir = Path(run_dir).expanduser().resolve()
        lock = self._live_lock()
        pid = lock.pid if lock is not None and lock.run_dir == run_dir else None
        status = read_status(run_dir) if run_dir.is_dir() else None
        if pid is None and status is not None and status.get("state") == "running":
            pid = _status_process(status)
        alive = pid is not None
        _adopt_log(run_dir, alive)
        log_path = _log_path(run_dir)
        try:
            history = read_history(run_dir) if run_dir.is_dir() else []
        except (RunError, OSError):
            history = []
        steps = [r.get("step", 0) for r in history if r.get("kind") == "step" and isinstance(r.get("step"), int)]
        status_step = _int(status.get("step")) if status else 0
        step = max([status_step, *steps])
        total = _int(status.get("total_steps")) if status else 0
        state = status.get("state") if status else None

        if state in FINAL_STATES:
            message = status.get("message") if state == "failed" else None
            if state == "stopped":
                step = status_step  # what the checkpoint holds
            return JobProgress(run_dir, state, step, total, message, history, log_path, None)
        if alive:
            return JobProgress(run_dir, "running" if state == "running" else "starting", step, total, None, history,
                               log_path, pid)
        if lock is None and status is None and not run_dir.exists() and log_path is None:
            raise JobError(f"no run or training job at {run_dir}")
        if _stop_was_requested(log_path):
            return JobProgress(run_dir, "stopped", step, total, "stopped before training started" if not steps else None,
                               history, log_path, None)
        if state == "running":
            return JobProgress(run_dir, "failed", step, total, f"training process ended unexpectedly at step {step}",
                               history, log_path, None)
        if (run_dir / METRICS_FILE).is_file():
            return JobProgress(run_dir, "completed", step, total, None, history, log_path, None)
        message = _last_error_line(log_path) or "training process ended before training started"
        return JobProgress(run_dir, "failed", step, total, message, history, log_path, None)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Ask the running job to stop (SIGTERM): it finishes its step, checkpoints and reports "stopped"."""
        lock = self._live_lock()
        if lock is None or lock.run_dir is None or lock.pid == os.getpid():
            return  # nothing runs (or it is still being launched by this very process)
        log_path = _log_path(lock.run_dir)
        if log_path is not None:
            try:
                with open(log_path, "ab") as log:
                    log.write(f"\n{STOP_MARKER} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            except OSError:
                pass
        try:
            os.kill(lock.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- config -> command line


def config_flags(config: TrainConfig) -> list[str]:
    """``python -m ecaml train`` flags that rebuild ``config`` exactly (``--flag=value`` form)."""
    from ecaml.cli import TRAIN_FLAGS

    values = config.to_dict()
    flags = []
    for name in TRAIN_FLAGS:
        value = values[name]
        if value is None:
            continue
        if isinstance(value, list):  # eval_splits: comma-separated, "none" for an empty list
            text = ",".join(str(v) for v in value) or "none"
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        flags.append(f"--{name.replace('_', '-')}={text}")
    if values["pretrained"]:
        flags.append("--pretrained")
    if values["ec_gather"]:
        flags.append("--ec-gather")
    if values["preset"]:  # a record of where the settings came from; every value it set is passed explicitly too
        flags.append(f"--preset={values['preset']}")
        if not values["pretrained"]:
            flags.append("--no-pretrained")
    for key, value in values["loss_params"].items():
        flags.append(f"--loss-param={key}={json.dumps(value)}")
    flags.append("--recall-ks=" + ",".join(str(k) for k in values["recall_ks"]))
    if values["legacy_unseen_seed"] is not None:  # only old folder runs carry it; jobs start new runs
        raise JobError("cannot start a job from the config of a folder run made before the fixed split")
    covered = set(TRAIN_FLAGS) | {"pretrained", "loss_params", "recall_ks", "legacy_unseen_seed", "ec_gather", "preset"}
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in covered]
    if missing:  # a new config field without a flag would be silently dropped
        raise JobError(f"cannot pass config key(s) {', '.join(missing)} to the training command")
    return flags


def _with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with relative data and weight paths made absolute (the job runs from another folder)."""
    values: dict[str, Any] = {}
    for key in ("data_root", "weights_path"):
        value = getattr(config, key)
        if value:
            values[key] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **values)


# ----------------------------------------------------------------------------- logs


def pending_log_path(run_dir: Path) -> Path:
    """Where a job's log lives until its run directory holds a config."""
    return Path(run_dir).parent / f".{Path(run_dir).name}.{LOG_NAME}"


def _log_path(run_dir: Path) -> Path | None:
    for path in (Path(run_dir) / LOG_NAME, pending_log_path(run_dir)):
        if path.is_file():
            return path
    return None


def _adopt_log(run_dir: Path, alive: bool) -> None:
    """Move the pending log into the run directory once ``train`` can no longer object to it."""
    pending = pending_log_path(run_dir)
    target = Path(run_dir) / LOG_NAME
    if not pending.is_file() or target.exists():
        return
    if (Path(run_dir) / CONFIG_FILE).is_file() or (not alive and Path(run_dir).is_dir()):
        try:
            os.rename(pending, target)
        except OSError:
            pass


def _has_final_status(run_dir: Path) -> bool:
    status = read_status(run_dir) if Path(run_dir).is_dir() else None
    return status is not None and status.get("state") in FINAL_STATES


def _stop_was_requested(log_path: Path | None) -> bool:
    return STOP_MARKER in _log_tail(log_path)


def _last_error_line(log_path: Path | None) -> str | None:
    lines = [line.strip() for line in _log_tail(log_path).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1][:300] if lines and not lines[-1].startswith("$ ") else None


def _log_tail(log_path: Path | None, size: int = 8192) -> str:
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the lock and processes


def _read_lock(path: Path) -> _Lock | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return _Lock(0, None, 0.0, None, b"")
    try:
        record = json.loads(raw)
        pid = record["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError("bad pid")
        start = record.get("proc_start_time")
        return _Lock(pid, Path(str(record["run_dir"])), float(record.get("started", 0)),
                     start if isinstance(start, int) else None, raw)
    except (ValueError, KeyError, TypeError):
        return _Lock(0, None, 0.0, None, raw)


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return True


def _remove_if_unchanged(path: Path, seen: bytes) -> None:
    """Remove a stale lock, unless it was replaced by a fresh one since it was read."""
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    try:
        if aside.read_bytes() != seen:  # someone took the lock meanwhile: give it back
            try:
                os.link(aside, path)
            except OSError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) from /proc/PID/stat, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _proc_start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


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


def _reap(pid: int) -> None:
    """Collect the exit status of our own finished child, so it does not linger as a zombie."""
    with _children_lock:
        process = _children.get(pid)
    if process is not None:
        if process.poll() is not None:
            with _children_lock:
                _children.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def _process_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` is a live, non-zombie process that started at ``start_time`` (when known)."""
    if pid == os.getpid():
        return start_time is None or _proc_start_time(pid) in (None, start_time)
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc (not Linux): only existence can be checked
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    if state in ("Z", "X", "x"):
        return False
    return start_time is None or started == start_time


def _status_process(status: dict) -> int | None:
    """The pid in a "running" status.json, if that process still runs and began before the status was written."""
    pid, updated = status.get("pid"), status.get("updated")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(updated, (int, float)):
        return None
    if not _process_alive(pid, None):
        return None
    began = _process_began(pid)
    if began is not None and began > updated + 2.0:  # the pid now belongs to a newer process
        return None
    return pid


def _process_began(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (Linux only)."""
    ticks = _proc_start_time(pid)
    if ticks is None:
        return None
    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
