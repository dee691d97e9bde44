"""Fixtures of the fault-injection suite, and the count of fault cases it tried.

Every test calls ``fault_case()`` once per bad input or fault it injected; the
total is printed at the end of the pytest run ("robustness: N fault cases tried").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from robustness_helpers import COUNTER, FINISHED_STEPS, CliResult

from ecaml.cli import main
from ecaml.config import TrainConfig
from ecaml.train.launch import train


def pytest_terminal_summary(terminalreporter):
    if COUNTER.count:
        terminalreporter.write_line(f"robustness: {COUNTER.count} fault cases tried")


@pytest.fixture
def fault_case():
    return COUNTER.tried


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A completed tiny digits run: every file of a run directory, made once; tests work on copies."""
    run_dir = tmp_path_factory.mktemp("robustness") / "finished"
    train(TrainConfig(dataset="digits", max_steps=FINISHED_STEPS, eval_every=0, seen_test_per_class=0), run_dir,
          progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, to damage at will."""
    copy = tmp_path / "runs" / "victim"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture
def cli(capsys):
    """``python -m ecaml ...`` in this process (the same ``main``), returning exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
