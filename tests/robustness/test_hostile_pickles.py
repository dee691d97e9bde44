"""Pickles that run code when unpickled, planted under every name a run directory has: nothing ever runs them.

The payload's ``__reduce__`` asks for ``os.system("touch MARKER")``; after every
entry point that reads runs (load_run, scan_runs, evaluate, compare, resume,
--pretrained --weights-path) the marker file must still not exist.
"""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from ecaml.runs import load_run, scan_runs
from ecaml.store.run_files import RunError

STATE_NAME = "trainer_state_00000016.safetensors"  # the state the finished run resumes from
RUN_FILE_NAMES = ["model.safetensors", "model.pt", STATE_NAME, "config.json", "history.jsonl", "metrics.json", "status.json"]


class Payload:
    """Unpickling this runs a shell command: exactly what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def raw_pickle(marker) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)}, protocol=pickle.HIGHEST_PROTOCOL)


def text_pickle(marker) -> bytes:
    """Protocol 0 has no binary prefix to recognise; it must be refused all the same."""
    return pickle.dumps(Payload(marker), protocol=0)


def torch_save_zip(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"head.weight": Payload(marker)}, buffer)
    return buffer.getvalue()


FORMATS = {"pickle": raw_pickle, "pickle-protocol-0": text_pickle, "torch.save": torch_save_zip}


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Guard against a harmless payload making every other test here pass vacuously."""
    marker = tmp_path / "MARKER"
    pickle.loads(raw_pickle(marker))
    assert marker.exists()


@pytest.mark.parametrize("file_format", list(FORMATS))
@pytest.mark.parametrize("name", RUN_FILE_NAMES)
def test_planted_pickle_never_runs(name, file_format, run_copy, tmp_path, cli, fault_case):
    marker = tmp_path / "MARKER"
    (run_copy / name).write_bytes(FORMATS[file_format](marker))
    fault_case()

    try:
        load_run(run_copy)
    except RunError as error:
        assert "\n" not in str(error)
    scan_runs(run_copy.parent)
    results = [cli("evaluate", run_copy, "--json"), cli("compare", run_copy, run_copy)]
    if name in ("model.safetensors", STATE_NAME, "config.json", "history.jsonl"):  # the files a resume reads
        results.append(cli("train", "--resume", run_copy, "--quiet"))

    assert not marker.exists()
    for result in results:
        assert result.code in (0, 2), result.err
        if result.code:
            result.one_error_line()


@pytest.mark.parametrize("name", ["model.safetensors", STATE_NAME])
def test_pickled_checkpoint_is_named_for_what_it_is(name, run_copy, tmp_path, cli, fault_case):
    fault_case()
    (run_copy / name).write_bytes(raw_pickle(tmp_path / "MARKER"))
    result = cli("train", "--resume", run_copy, "--quiet")
    assert result.code == 2
    assert f"victim: {name} is a Python pickle, not safetensors; refused (ecaml never unpickles)" in result.one_error_line()
    assert not (tmp_path / "MARKER").exists()


def test_pickled_pretrained_weights_never_run(tmp_path, cli, fault_case):
    """--weights-path goes through torch.load(weights_only=True), which refuses the payload."""
    fault_case()
    marker = tmp_path / "MARKER"
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(torch_save_zip(marker))
    result = cli("train", "--backbone", "resnet18", "--pretrained", "--weights-path", weights,
                 "--max-steps", "1", "--quiet", "--out", tmp_path / "run")
    assert result.code == 2
    assert "cannot read weights file" in result.one_error_line()
    assert not marker.exists()
