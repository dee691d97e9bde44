"""A training job's log (its stdout and stderr): where it lives, and what the job manager writes into it.

Because ``train`` insists on a new or empty run directory, the log starts as
``runs_root/.<name>.train.log`` and is moved into the run directory (the open
file moves with it) once the run has written its ``config.json``. The manager
notes in it who started the job and who asked it to stop, so every reader of the
run, in any session, can say so.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ecaml.store.run_files import CONFIG_FILE

LOG_NAME = "train.log"
STARTED_MARKER = "ecaml.serve.jobs: started by"
STOP_MARKER = "ecaml.serve.jobs: stop requested"
_STOPPED_BY = re.compile(re.escape(STOP_MARKER) + r" by (\S+)")
_STARTED_BY = re.compile(re.escape(STARTED_MARKER) + r" (\S+)")


def pending_log_path(run_dir: Path) -> Path:
    """Where a job's log lives until its run directory holds a config."""
    return Path(run_dir).parent / f".{Path(run_dir).name}.{LOG_NAME}"


def log_path(run_dir: Path) -> Path | None:
    for path in (Path(run_dir) / LOG_NAME, pending_log_path(run_dir)):
        if path.is_file():
            return path
    return None


def log_header(command: list[str], owner: str | None) -> bytes:
    started = f"{STARTED_MARKER} {owner}\n" if owner else ""
    return (started + "$ " + " ".join(command) + "\n").encode()


def adopt_log(run_dir: Path, alive: bool) -> None:
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


def note_stop(path: Path | None, by: str | None) -> None:
    """Write in the log that a stop was asked for, and by whom."""
    if path is None:
        return
    who = f" by {by}" if by else ""
    try:
        with open(path, "ab") as log:
            log.write(f"\n{STOP_MARKER}{who} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    except OSError:
        pass


def stop_was_requested(path: Path | None) -> bool:
    return STOP_MARKER in log_tail(path)


def stopped_by(path: Path | None) -> str | None:
    """Who asked the job to stop (the last such note), or None."""
    found = _STOPPED_BY.findall(log_tail(path))
    return found[-1] if found else None


def started_by(path: Path | None) -> str | None:
    found = _STARTED_BY.search(log_head(path))
    return found.group(1) if found else None


def last_error_line(path: Path | None) -> str | None:
    lines = [line.strip() for line in log_tail(path).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1][:300] if lines and not lines[-1].startswith(("$ ", STARTED_MARKER)) else None


def log_head(path: Path | None, size: int = 2048) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            return handle.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(path: Path | None, size: int = 8192) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
