"""Readers next to a live writer: never a broken history record, never a half-written JSON file."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ecaml.store.atomic import atomic_write_json
from ecaml.store.run_files import (
    HISTORY_FILE,
    RunError,
    append_jsonl,
    hold_run_lock,
    read_history,
    read_json_file,
    write_status,
)

RECORDS = 400


def slow_appender(path, stop: threading.Event) -> None:
    """Append records the way a kill or a slow disk can expose them: each line in two writes with a pause between."""
    for step in range(1, RECORDS + 1):
        line = f'{{"kind": "step", "step": {step}, "total_loss": {1 / step:.6f}, "padding": "{"x" * 200}"}}\n'.encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(descriptor, line[: len(line) // 2])
            time.sleep(0.002)
            os.write(descriptor, line[len(line) // 2 :])
        finally:
            os.close(descriptor)
    stop.set()


def read_until(stop: threading.Event, read) -> int:
    """Call ``read`` until the writer is done; returns how many reads ran (each must succeed)."""
    reads = 0
    while not stop.is_set():
        read()
        reads += 1
    read()
    return reads + 1


def test_history_readers_never_see_a_partial_record(tmp_path, fault_case):
    fault_case()
    path = tmp_path / HISTORY_FILE
    path.touch()
    stop, seen, partial = threading.Event(), [], []
    writer = threading.Thread(target=slow_appender, args=(path, stop))

    def read_once():
        raw = path.read_bytes()
        steps = [record["step"] for record in read_history(tmp_path)]
        assert steps == list(range(1, len(steps) + 1))  # complete records only, in order, none half-parsed
        seen.append(len(steps))
        partial.append(bool(raw) and not raw.endswith(b"\n"))

    writer.start()
    reads = read_until(stop, read_once)
    writer.join()
    assert seen[-1] == RECORDS
    assert reads > 10 and len(set(seen)) > 2, "the reader never overlapped the writer"
    assert any(partial), "no read ever met a half-written line, so the test proved nothing"


def test_library_appends_and_reads_from_two_threads(tmp_path, fault_case):
    fault_case()
    stop = threading.Event()

    def write():
        for step in range(1, RECORDS + 1):
            append_jsonl(tmp_path / HISTORY_FILE, {"kind": "step", "step": step})
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    read_until(stop, lambda: read_history(tmp_path))
    writer.join()
    assert [r["step"] for r in read_history(tmp_path)] == list(range(1, RECORDS + 1))


@pytest.mark.parametrize("name", ["status.json", "metrics.json"])
def test_json_files_are_replaced_whole(name, tmp_path, fault_case):
    """A large value rewritten over and over; every read gets one complete version."""
    fault_case()
    stop, versions = threading.Event(), set()

    def write():
        for version in range(150):
            payload = {f"metric{i}": float(version) for i in range(500)}
            if name == "status.json":
                write_status(tmp_path, "running", step=version, details=payload)
            else:
                atomic_write_json(tmp_path / name, payload)
        stop.set()

    def read():
        try:
            value = read_json_file(tmp_path / name, name)
        except RunError as error:
            assert "missing" in str(error)  # only before the first version exists
            return
        numbers = set((value.get("details") or value).values())
        assert len(numbers) == 1, "a read mixed two versions"
        versions.update(numbers)

    writer = threading.Thread(target=write)
    writer.start()
    read_until(stop, read)
    writer.join()
    assert 149.0 in versions
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_run_lock_is_exclusive_and_released(tmp_path, fault_case):
    fault_case()
    with hold_run_lock(tmp_path):
        with pytest.raises(RunError, match="another process is training this run right now"):
            with hold_run_lock(tmp_path):
                pass
    with hold_run_lock(tmp_path):  # released on exit
        pass
