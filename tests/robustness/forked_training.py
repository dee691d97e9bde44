"""What the kill tests' training processes run: ``python -m ecaml``'s ``main``, in a forked child.

The children come from a multiprocessing forkserver that imported this module
once, so each starts in milliseconds instead of re-importing torch for seconds;
they are still whole processes, killed with a real SIGKILL or dying through
``os._exit`` with no cleanup at all, exactly like ``kill -9``. Importing this
module warms the digits data for the same reason.
"""

from __future__ import annotations

import os
import sys

import ecaml.train.launch  # noqa: F401 - imported by `train` at its first call; torchvision alone takes seconds
from ecaml.cli import main
from ecaml.data import load_digits

DIED = 86  # the exit status of a child stopped by an injected crash point
load_digits()


def run_cli(argv: list[str], log_path: str) -> None:
    """``python -m ecaml *argv`` with its output in ``log_path``; exits with main's status."""
    _log_to(log_path)
    _exit(main(argv))


def run_cli_dying_at(argv: list[str], log_path: str, operation: str, nth: int) -> None:
    """As ``run_cli``, but the process vanishes at the ``nth`` call of ``os.<operation>`` on a file.

    ``write`` dies half-way through its bytes (a torn write); ``replace`` and
    ``unlink`` die just before the call, the moment a checkpoint is not yet committed.
    """
    _log_to(log_path)
    real = getattr(os, operation)
    calls = 0

    def dying(*args, **kwargs):
        nonlocal calls
        if operation == "write" and args[0] <= 2:  # our own log output is not a run file
            return real(*args, **kwargs)
        calls += 1
        if calls == nth:
            if operation == "write":
                real(args[0], bytes(args[1])[: len(args[1]) // 2])
            os._exit(DIED)
        return real(*args, **kwargs)

    setattr(os, operation, dying)
    _exit(main(argv))


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _log_to(log_path: str) -> None:
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
