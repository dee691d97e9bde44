"""``kill -9`` at any moment, a checkpoint write included, leaves a run that loads and resumes.

Two halves: a real training process SIGKILLed after seeded random delays, many
times over, each time resumed from where the last kill left it; and crash points
placed deterministically on every commit step of a checkpoint (before each
rename, before each delete, half-way through writes), so the rare moments a
random kill seldom hits are covered too.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import random
import subprocess
import sys
import time
import types
from pathlib import Path

import forked_training
import pytest
from robustness_helpers import temp_files

from ecaml.runs import load_run
from ecaml.store.run_files import RunError, read_history

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KILLS = 20
SEED = 20190127
FIRST_TRAIN = ["train", "--dataset", "digits", "--seen-test-per-class", "0", "--max-steps", "400", "--checkpoint-every", "1", "--eval-every", "0", "--quiet"]
# Nothing held out of the seen digits: 900 images, 15 steps an epoch (the write sequence below counts on it).
SHORT_TRAIN = ["train", "--dataset", "digits", "--max-steps", "16", "--eval-every", "0", "--seen-test-per-class", "0",
               "--quiet"]


@pytest.fixture(scope="module")
def forkserver():
    """A multiprocessing context whose server has ecaml, torch and the digits already loaded.

    The server finds ``forked_training`` through PYTHONPATH: Python 3.11's
    forkserver ignores the sys.path it is handed, and silently skips a preload
    it cannot import (each child would then spend seconds importing torch).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["forked_training"])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(REPO), saved]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return context


def start(context, target, *args):
    process = context.Process(target=target, args=args, daemon=True)
    # Streamlit's AppTest (tests/app, run earlier in the same session) leaves the app's
    # script registered as __main__; a forkserver child would re-run it. Start the child
    # with a bare __main__ instead.
    real_main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = real_main
    return process


def wait_for(path: Path, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.is_alive(), f"training ended before writing {path.name}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def step_numbers(run_dir: Path) -> list[int]:
    return [record["step"] for record in read_history(run_dir) if record["kind"] == "step"]


def assert_loadable_at_a_logged_step(run_dir: Path) -> int:
    """The run loads, its history is steps 1..k without gaps, and the checkpoint is one of them (or step 0)."""
    run = load_run(run_dir)
    steps = step_numbers(run_dir)
    assert steps == list(range(1, len(steps) + 1))
    assert run.step <= len(steps)
    return run.step


def test_sigkill_at_random_moments_then_resume(forkserver, tmp_path, fault_case):
    rng = random.Random(SEED)
    run_dir, log = tmp_path / "run", str(tmp_path / "train.log")
    kills_mid_write = 0
    checkpoints_seen = set()
    for kill in range(KILLS):
        argv = FIRST_TRAIN + ["--out", str(run_dir)] if kill == 0 else ["train", "--resume", str(run_dir), "--quiet"]
        process = start(forkserver, forked_training.run_cli, argv, log)
        if kill == 0:
            wait_for(run_dir / "model.safetensors", process)  # before step 0's checkpoint there is no run to keep
        time.sleep(rng.uniform(0.0, 1.2))
        process.kill()
        process.join()
        fault_case()
        assert process.exitcode in (-9, 0), Path(log).read_text()[-2000:]
        kills_mid_write += bool(temp_files(run_dir))
        checkpoints_seen.add(assert_loadable_at_a_logged_step(run_dir))

    finished = subprocess.run([sys.executable, "-m", "ecaml", "train", "--resume", str(run_dir), "--quiet"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "400 steps" in finished.stdout
    assert assert_loadable_at_a_logged_step(run_dir) == 400 and step_numbers(run_dir)[-1] == 400
    assert temp_files(run_dir) == []
    assert len(checkpoints_seen) > 3, f"the kills never let training advance: {sorted(checkpoints_seen)}"
    print(f"{KILLS} kills, {kills_mid_write} during a file write, checkpoints seen: {sorted(checkpoints_seen)}")


# Fresh 16-step runs write, in order: config, step-0 checkpoint, status, history lines 1-15 (buffered: one
# write, flushed before the step-15 checkpoint commits), the step-15 checkpoint, status, line 16, the step-16
# checkpoint, status (final evaluation), two evaluation lines, metrics, status.
RENAMES, DELETES = 12, 2  # every os.replace (a commit) and every removal of an older trainer state
CRASH_POINTS = [("replace", n) for n in range(1, RENAMES + 1)] + [("unlink", n) for n in range(1, DELETES + 1)] + [
    ("write", n) for n in (1, 2, 3, 4, 6, 7, 10, 13, 14)
]


@pytest.mark.parametrize("operation, nth", CRASH_POINTS, ids=[f"{op}-{n}" for op, n in CRASH_POINTS])
def test_crash_at_each_commit_point(operation, nth, forkserver, tmp_path, cli, fault_case):
    fault_case()
    run_dir, log = tmp_path / "run", str(tmp_path / "train.log")
    process = start(forkserver, forked_training.run_cli_dying_at, SHORT_TRAIN + ["--out", str(run_dir)], log, operation, nth)
    process.join(timeout=120)
    assert process.exitcode == forked_training.DIED, Path(log).read_text()[-2000:]

    if not (run_dir / "model.safetensors").exists():  # died before the first checkpoint was committed
        with pytest.raises(RunError, match="missing (config.json|model.safetensors)"):
            load_run(run_dir)
        return
    assert_loadable_at_a_logged_step(run_dir)
    resumed = cli("train", "--resume", run_dir, "--quiet")
    assert resumed.code == 0, resumed.err
    assert assert_loadable_at_a_logged_step(run_dir) == 16 and step_numbers(run_dir)[-1] == 16
    assert temp_files(run_dir) == []


def test_crash_points_cover_every_rename_and_delete(forkserver, tmp_path):
    """One crash point past the last: the run completes, so the list above missed no commit step."""
    for operation, past_the_last in (("replace", RENAMES + 1), ("unlink", DELETES + 1)):
        run_dir, log = tmp_path / operation, str(tmp_path / f"{operation}.log")
        process = start(forkserver, forked_training.run_cli_dying_at, SHORT_TRAIN + ["--out", str(run_dir)], log,
                        operation, past_the_last)
        process.join(timeout=120)
        assert process.exitcode == 0, f"a 16-step run now does more than {past_the_last - 1} {operation} calls"
