"""Damaged, foreign and hostile run directories: each is unusable with its reason, the others stay usable.

Every case is checked three ways: ``load_run`` raises ``RunError`` with the
reason, ``scan_runs`` lists the run as unusable (with that reason) next to a
healthy run that stays usable, and ``python -m ecaml evaluate`` prints one line
and exits with status 2.
"""

from __future__ import annotations

import json
import os
import random
import resource
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from ecaml.runs import load_run, read_weights, scan_runs
from ecaml.store.run_files import HISTORY_FILE, METRICS_FILE, RunError, read_history

WEIGHTS = "model.safetensors"


# ----------------------------------------------------------------------------- how to damage a run


def write_bytes(name: str, data: bytes):
    return lambda run: (run / name).write_bytes(data)


def truncate(name: str, keep: float):
    """Keep the first ``keep`` of the file: a fraction, or a byte count when 1 or more."""

    def damage(run):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])

    return damage


def edit_config(**changes):
    def damage(run):
        record = json.loads((run / "config.json").read_text())
        record.update(changes)
        (run / "config.json").write_text(json.dumps(record))

    return damage


def edit_weights(change):
    def damage(run):
        state = load_file(str(run / WEIGHTS))
        change(state)
        save_file(state, str(run / WEIGHTS), metadata={"step": "16"})

    return damage


def weights_metadata(**metadata):
    def damage(run):
        save_file(load_file(str(run / WEIGHTS)), str(run / WEIGHTS), metadata=metadata)

    return damage


def random_bytes(count: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(count)


def header_claiming(length: int) -> bytes:
    return struct.pack("<Q", length) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' + bytes(64)


def set_nan(state):
    state["head.weight"][0, 0] = float("nan")


def foreign_architecture(state):
    state.clear()
    state.update({"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})


def narrower_head(state):
    state["head.weight"] = state["head.weight"][:16].clone()
    state["head.bias"] = state["head.bias"][:16].clone()


def remove(name: str):
    return lambda run: (run / name).unlink()


def make_fifo(name: str):
    def damage(run):
        (run / name).unlink()
        os.mkfifo(run / name)  # reading it would block forever

    return damage


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BROKEN_RUNS = {
    # weights
    "weights-empty": (write_bytes(WEIGHTS, b""), "model.safetensors is empty"),
    "weights-4-bytes": (truncate(WEIGHTS, 4), "model.safetensors is truncated (4 bytes)"),
    "weights-half": (truncate(WEIGHTS, 0.5), "model.safetensors is truncated (its header needs"),
    "weights-header-only": (truncate(WEIGHTS, 0.01), "model.safetensors is truncated"),
    "weights-random": (write_bytes(WEIGHTS, random_bytes(4096, 1)), "-byte header; refused"),
    "weights-random-small-header": (write_bytes(WEIGHTS, struct.pack("<Q", 100) + random_bytes(200, 2)),
                                    "model.safetensors is not a valid safetensors file"),
    "weights-huge-header-claim": (write_bytes(WEIGHTS, header_claiming(4 * 1024**3)),
                                  "claims a 4,294,967,296-byte header; refused"),
    "weights-header-over-our-limit": (write_bytes(WEIGHTS, header_claiming(50 * 1024**2)), "-byte header; refused"),
    "weights-wrong-architecture": (edit_weights(foreign_architecture), "weights do not fit a smallcnn/32-d model"),
    "weights-wrong-dimension": (edit_weights(narrower_head),
                                "head.weight has shape (16, 128), expected (32, 128)"),
    "config-wrong-dimension": (edit_config(embedding_dim=64), "head.weight has shape (32, 128), expected (64, 128)"),
    "weights-nan": (edit_weights(set_nan), "weights contain NaN or infinite values (head.weight)"),
    "weights-bad-step": (weights_metadata(step="twelve"), "invalid step in its metadata ('twelve')"),
    "weights-missing": (remove(WEIGHTS), "missing model.safetensors"),
    "weights-fifo": (make_fifo(WEIGHTS), "missing model.safetensors"),
    # config.json
    "config-missing": (remove("config.json"), "missing config.json"),
    "config-not-json": (write_bytes("config.json", b"{not json"), "config.json is not valid JSON"),
    "config-binary": (write_bytes("config.json", random_bytes(300, 3)), "config.json is not valid JSON"),
    "config-list": (write_bytes("config.json", b"[1, 2]"), "config.json is not a JSON object"),
    "config-no-version": (edit_config(format_version=None), "has no valid format_version"),
    "config-future-version": (edit_config(format_version=99), "run format 99 is newer than this ecaml understands (1)"),
    "config-unknown-key": (edit_config(learning_rate=0.1), "unknown config key(s): learning_rate"),
    "config-wrong-type": (edit_config(lr="fast"), "invalid config.json"),
    "config-wrong-type-device": (edit_config(device=5), "invalid config.json"),
    "config-bad-backbone": (edit_config(backbone="vit_h"), "backbone must be one of"),
    "config-huge-embedding": (edit_config(embedding_dim=10**9), "embedding_dim must be between 2 and 65536"),
    "config-huge-images": (edit_config(image_size=10**6), "image_size must be between 4 and 4096"),
    "config-deeply-nested": (write_bytes("config.json", nested_json(100_000)), "config.json is not valid JSON"),
    "config-oversized": (write_bytes("config.json", b" " * (17 * 1024**2)), "config.json is too large"),
    "config-fifo": (make_fifo("config.json"), "missing config.json"),
    # history.jsonl
    "history-missing": (remove(HISTORY_FILE), "missing history.jsonl"),
    "history-broken-line": (write_bytes(HISTORY_FILE, b'{"kind": "step", "step": 1}\n{"kind": "st\n{"step": 3}\n'),
                            "history.jsonl line 2 is not valid JSON"),
    "history-not-objects": (write_bytes(HISTORY_FILE, b"[1]\n"), "history.jsonl line 1 is not a JSON object"),
    # metrics.json
    "metrics-not-json": (write_bytes(METRICS_FILE, b"recall: high"), "metrics.json is not valid JSON"),
    "metrics-nan": (write_bytes(METRICS_FILE, b'{"recall@1": NaN}'), "must map metric names to finite numbers"),
    "metrics-strings": (write_bytes(METRICS_FILE, b'{"recall@1": "0.9"}'), "must map metric names to finite numbers"),
    "metrics-list": (write_bytes(METRICS_FILE, b"[0.9]"), "must map metric names to finite numbers"),
}


@pytest.mark.parametrize("case", list(BROKEN_RUNS))
def test_broken_run_is_unusable_with_its_reason(case, run_copy, finished_run, cli, fault_case):
    damage, reason = BROKEN_RUNS[case]
    damage(run_copy)
    fault_case()

    with pytest.raises(RunError) as raised:
        load_run(run_copy)
    assert reason in str(raised.value) and "\n" not in str(raised.value)

    healthy = run_copy.parent / "healthy"
    healthy.symlink_to(finished_run, target_is_directory=True)
    listed = {path.name: (run, problem) for path, run, problem in scan_runs(run_copy.parent)}
    assert listed["healthy"][0] is not None and listed["healthy"][1] is None
    assert listed["victim"][0] is None and reason in listed["victim"][1]

    result = cli("evaluate", run_copy)
    assert result.code == 2
    assert reason in result.one_error_line()


def test_huge_header_claim_allocates_nothing(tmp_path, run_copy, fault_case):
    """A header length of 4 GiB (and one just under safetensors' own 100 MB cap) is refused before any read."""
    fault_case(2)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for claim in (4 * 1024**3, 99 * 1024**2):
        (run_copy / WEIGHTS).write_bytes(header_claiming(claim))
        with pytest.raises(RunError, match="byte header; refused"):
            load_run(run_copy)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert growth_kib < 64 * 1024


def test_partial_last_history_line_is_skipped_not_fatal(run_copy, fault_case):
    """What a kill during an append leaves: the run loads, the half record is ignored."""
    fault_case()
    complete = len(read_history(run_copy))
    with open(run_copy / HISTORY_FILE, "ab") as handle:
        handle.write(b'{"kind": "step", "step": 17, "total_lo')
    run = load_run(run_copy)
    assert len(run.history) == complete and run.step == 16


def test_missing_metrics_is_a_run_still_in_progress(run_copy, fault_case):
    """metrics.json appears only when training completes, so its absence is not a fault."""
    fault_case()
    (run_copy / METRICS_FILE).unlink()
    assert load_run(run_copy).metrics is None


def test_weights_without_config_are_listed_not_hidden(run_copy, fault_case):
    fault_case()
    (run_copy / "config.json").unlink()
    [(path, run, problem)] = scan_runs(run_copy.parent)
    assert path == run_copy and run is None and problem == "victim: missing config.json"


def test_a_header_length_that_looks_like_a_pickle_opcode_still_loads(tmp_path, fault_case):
    """A safetensors file whose length bytes read 0x80 0x03 (a pickle's opening) is not mistaken for a pickle."""
    fault_case()
    path = tmp_path / WEIGHTS
    for padding in range(2000):
        save_file({"w": torch.ones(2)}, str(path), metadata={"step": "3", "padding": "x" * padding})
        if path.read_bytes()[:2] == b"\x80\x03":
            break
    else:
        pytest.fail("no padding gave a header length starting with a pickle opcode")
    state, metadata = read_weights(tmp_path)
    assert metadata["step"] == "3" and torch.equal(state["w"], torch.ones(2))
