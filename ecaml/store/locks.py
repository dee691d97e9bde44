"""Kernel locks (``flock``) on files: held by a process, released by the kernel when it exits, ``kill -9`` included.

A lock file is only ever locked, never removed or rewritten: removing it would
let a second process lock a new file of the same name while the first still
holds the old one. Readers ask whether a lock is held with a shared probe that
they drop at once; a locker retries through such a probe for a moment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; nothing is locked there
    fcntl = None

PROBE_PATIENCE_S = 1.0  # a reader's probe holds a lock for microseconds; a locker waits through one this long


def try_lock(path: Path, patience_s: float = PROBE_PATIENCE_S) -> int | None:
    """A descriptor of ``path`` (created when missing) holding its exclusive lock, or None when another process holds it.

    Close the descriptor to release the lock. It is not inherited by child processes unless passed explicitly
    (``subprocess.Popen(pass_fds=...)``); a child that is passed it holds the lock too, until both have closed it.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    if fcntl is None:
        return descriptor
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                return None
            time.sleep(0.01)
        except BaseException:
            os.close(descriptor)
            raise


def is_locked(path: Path) -> bool:
    """Whether some process holds ``path``'s lock now (False when the file does not exist)."""
    if fcntl is None:
        return False
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # drops the probe's shared lock, if it got one
