"""How training ends: a clean stop asked for by a signal or a caller, the result, and the error the user must see."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (NaN loss, bad data...)."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    state: str  # "completed" or "stopped"
    metrics: dict[str, float] | None


class StopFlag:
    """Set by Ctrl-C / SIGTERM or by a caller; the loop finishes its step, checkpoints and returns."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_: Any) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


@contextmanager
def stop_on_signals(flag: StopFlag):
    """Ctrl-C and SIGTERM ask for a clean stop instead of killing mid-write (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, flag.set) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
