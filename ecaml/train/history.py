"""The history a run writes as it trains: one JSON line per logged step, buffered and appended in few writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ecaml.store.atomic import append_jsonl_records


# Loss terms in the order of a history line; total_loss is the one checked for NaN.
TERM_NAMES = ("metric_loss", "energy", "log_energy", "row_norm", "total_loss")


# The longest history lines wait in memory before they are appended (they are always appended before a checkpoint).
HISTORY_FLUSH_SECONDS = 2.0


class HistoryBuffer:
    """Step lines of the history, appended in one write per flush instead of one per step."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.pending: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.pending.append(record)

    def flush(self, force: bool = False) -> None:
        if not self.pending or not (force or time.monotonic() - self.flushed_at >= HISTORY_FLUSH_SECONDS):
            return
        append_jsonl_records(self.path, self.pending)
        self.pending = []
        self.flushed_at = time.monotonic()
