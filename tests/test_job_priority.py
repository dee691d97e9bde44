"""A training job started by the app yields the CPU to the pages: lower priority and bounded torch threads."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ecaml.config import TrainConfig
from ecaml.serve.job_command import JOB_NICENESS, config_flags, job_thread_budget
from ecaml.serve.job_command import _sharing_cores  # the rule itself; the process test below checks it is applied
from ecaml.serve.jobs import JobManager

DEADLINE_S = 60


def niceness_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[16])  # field 19 of stat; [0] here is field 3 (state)


def test_a_job_runs_at_lower_priority_than_the_app(tmp_path):
    # Relative to the app's own niceness (the tests may themselves run under nice), capped at 19.
    expected = min(19, os.nice(0) + JOB_NICENESS)
    manager = JobManager(tmp_path)
    run_dir = manager.start(TrainConfig(dataset="digits", max_steps=5000, eval_every=0), name="nice-job")
    pid = manager.progress(run_dir).pid
    try:
        deadline = time.monotonic() + DEADLINE_S
        seen = None
        while time.monotonic() < deadline:
            seen = niceness_of(pid)
            if seen == expected or seen is None:
                break
            time.sleep(0.05)
        assert seen == expected
    finally:
        manager.stop()
        while manager.current() is not None and time.monotonic() < deadline + DEADLINE_S:
            time.sleep(0.2)


def test_torch_threads_are_bounded_by_the_budget():
    budget = job_thread_budget()
    assert 1 <= budget
    for backbone, asked in (("resnet18", 0), ("resnet18", 64), ("googlenet", 0)):
        shared = _sharing_cores(TrainConfig(dataset="digits", backbone=backbone, cpu_threads=asked).resolved())
        assert 1 <= shared.cpu_threads <= budget
        assert f"--cpu-threads={shared.cpu_threads}" in config_flags(shared)
    assert _sharing_cores(TrainConfig(dataset="digits", backbone="resnet18", cpu_threads=1)).cpu_threads == 1
