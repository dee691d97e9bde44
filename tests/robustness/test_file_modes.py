"""Run and cache files are created with the umask's mode, as ``open`` would: an app served as another user can read
the runs a trainer wrote (0644 under the usual umask 022), and a private umask keeps them private."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import pytest

from ecaml.cli import main
from ecaml.store.atomic import append_jsonl_records, atomic_write_bytes, write_cache_file


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_and_appends_follow_the_umask(tmp_path, mask, expected, fault_case):
    fault_case()
    with umask(mask):
        atomic_write_bytes(tmp_path / "new.json", b"{}")
        atomic_write_bytes(tmp_path / "new.json", b"[]")  # a replaced file too: the new inode gets the umask's mode
        write_cache_file(tmp_path / "cache" / "vectors.npy", b"\x93NUMPY")
        append_jsonl_records(tmp_path / "history.jsonl", [{"step": 1}])
    assert {name: mode(tmp_path / name) for name in ("new.json", "cache/vectors.npy", "history.jsonl")} == {
        "new.json": expected, "cache/vectors.npy": expected, "history.jsonl": expected}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "history.jsonl", "new.json"]  # no temporary left


def test_a_trained_run_is_readable_by_others_under_umask_022(tmp_path, fault_case):
    fault_case()
    run_dir = tmp_path / "run"
    with umask(0o022):
        assert main(["train", "--dataset=digits", "--max-steps=2", "--eval-every=0", "--quiet", f"--out={run_dir}"]) == 0
    modes = {path.name: mode(path) for path in run_dir.iterdir() if path.is_file()}
    assert {"config.json", "model.safetensors", "status.json", "metrics.json", "history.jsonl"} <= set(modes)
    assert {name: m for name, m in modes.items() if m != 0o644} == {}
