"""Shared pieces of the fault-injection suite: the case counter, CLI results, file checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

# digits with nothing held out (--seen-test-per-class 0): 5 seen classes of ~180 images, batches of 5 x 12 -> 15 steps
# an epoch, a checkpoint at each epoch end.
STEPS_PER_EPOCH = 15
FINISHED_STEPS = 16  # the shared finished run has checkpoints at 0, 15 and 16


class FaultCounter:
    """How many fault cases the suite injected; one instance, so every test adds to one total."""

    def __init__(self) -> None:
        self.count = 0

    def tried(self, cases: int = 1) -> None:
        self.count += cases


COUNTER = FaultCounter()


class CliResult:
    """Exit code and output of one in-process ``python -m ecaml`` call."""

    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def one_error_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one line on stderr, got: {self.err!r}"
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]


def temp_files(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes."""
    return sorted(Path(folder).glob(".*.tmp"))


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file in ``folder``, to prove files were left untouched."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}
