"""Tests for ecaml.serve.jobs: real background training jobs, the kernel lock, stop, crashes and forced interleavings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_table import child_states

from ecaml.cli import _flag_values, build_parser
from ecaml.config import TrainConfig
from ecaml.runs import load_run
from ecaml.serve import jobs
from ecaml.serve.job_command import JobError, config_flags, default_run_name
from ecaml.serve.jobs import JobManager
from ecaml.store.locks import is_locked

QUICK = dict(dataset="digits", max_steps=3, eval_every=0)
LONG = dict(dataset="digits", max_steps=100_000, eval_every=0)  # minutes of work: only ever stopped or killed


def wait_for(manager: JobManager, run_dir: Path, done, timeout: float = 90.0):
    """Poll progress (as the app does) until ``done(progress)``; fail with the last progress after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        progress = manager.progress(run_dir)
        if done(progress):
            return progress
        if time.monotonic() > deadline:
            log = progress.log_path.read_text()[-3000:] if progress.log_path else "(no log)"
            pytest.fail(f"timed out: state {progress.state}, step {progress.step}/{progress.total_steps}, "
                        f"message {progress.message!r}; log:\n{log}")
        time.sleep(0.1)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def root(tmp_path):
    """A runs folder whose job, if a test leaves one running, is killed afterwards."""
    runs_root = tmp_path / "runs"
    yield runs_root
    record = JobManager(runs_root).live_record()
    for pid in record.pids if record else []:
        try:
            os.kill(pid, signal.SIGKILL)
        except (OSError, TypeError):
            pass


def lock_held(root: Path) -> bool:
    return is_locked(root / jobs.LOCK_NAME)


def released(root: Path, timeout: float = 20.0) -> bool:
    """Whether the folder's lock is free within ``timeout`` (a run with its final status may still be exiting)."""
    deadline = time.monotonic() + timeout
    while lock_held(root):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_job_runs_to_completion_and_leaves_a_loadable_run(root):
    manager, other_tab = JobManager(root), JobManager(root)
    config = TrainConfig(**QUICK, seed=3)
    run_dir = manager.start(config, name="quick")
    assert run_dir == root.resolve() / "quick"
    # A second manager on the same folder (another tab) sees the same job while it runs.
    assert other_tab.current() == run_dir
    progress = wait_for(manager, run_dir, lambda p: p.state in jobs.FINAL_STATES)
    assert progress.state == "completed", progress
    assert progress.step == progress.total_steps == 3
    assert [r["step"] for r in progress.history if r["kind"] == "step"] == [1, 2, 3]
    run = load_run(run_dir)
    assert run.config == config.resolved() and run.step == 3 and run.metrics is not None
    log = (run_dir / "train.log").read_text()
    assert "--quiet" in log and "3 steps" in log
    assert not jobs.pending_log_path(run_dir).exists()
    assert manager.current() is None and other_tab.current() is None
    assert released(root)


def test_one_job_at_a_time_and_a_killed_job_is_reported_failed(root):
    manager = JobManager(root)
    run_dir = manager.start(TrainConfig(**LONG), name="long")
    progress = wait_for(manager, run_dir, lambda p: p.state == "running" and p.step >= 2)
    assert progress.pid is not None and progress.total_steps == 100_000
    other_tab = JobManager(root)
    assert other_tab.current() == run_dir
    before = tree(root)
    with pytest.raises(JobError, match=r"a training job is already running: long, step \d+/100000; stop it or wait"):
        other_tab.start(TrainConfig(**QUICK), name="second")
    with pytest.raises(JobError, match="already running"):
        manager.start(TrainConfig(**QUICK))
    assert {p for p in tree(root) if not p.startswith("long/")} == {p for p in before if not p.startswith("long/")}

    os.kill(progress.pid, signal.SIGKILL)  # no chance to write a final status
    progress = wait_for(manager, run_dir, lambda p: p.state != "running")
    assert progress.state == "failed"
    last_step = max(r["step"] for r in progress.history if r["kind"] == "step")
    assert progress.message == f"training process ended unexpectedly at step {last_step}"
    assert other_tab.current() is None and released(root)
    load_run(run_dir)  # the last checkpoint is still a usable run

    # The folder is free again. A job stopped while it is still starting up ends as "stopped".
    next_dir = manager.start(TrainConfig(**LONG), name="next")
    assert next_dir == root.resolve() / "next" and manager.current() == next_dir
    manager.stop()
    progress = wait_for(manager, next_dir, lambda p: p.state not in ("starting", "running"))
    assert progress.state == "stopped", progress
    assert manager.current() is None


def test_stop_finishes_the_step_checkpoints_and_reports_stopped(root):
    manager = JobManager(root)
    run_dir = manager.start(TrainConfig(**LONG), name="stopping")
    wait_for(manager, run_dir, lambda p: p.state == "running" and p.step >= 2)
    JobManager(root).stop(by="session-5e31c08b")  # any tab may stop the job, and says who it is
    progress = wait_for(manager, run_dir, lambda p: p.state in jobs.FINAL_STATES, timeout=20)
    assert progress.state == "stopped" and progress.message is None
    run = load_run(run_dir)
    assert run.step == progress.step >= 2  # the checkpoint holds the step it stopped at
    log = (run_dir / "train.log").read_text()
    assert "stopped at step" in log
    # The stop note survives the training process's own last lines (both append to the log), so every reader,
    # a fresh manager included, can say who stopped it.
    assert progress.stopped_by == "session-5e31c08b", log
    assert JobManager(root).progress(run_dir).stopped_by == "session-5e31c08b"
    assert manager.current() is None


# ----------------------------------------------------------------------------- refusals (no process started)


def test_invalid_configs_and_names_are_refused_without_writing(root):
    manager = JobManager(root)
    with pytest.raises(JobError, match="lr must be a positive number"):
        manager.start(TrainConfig(dataset="digits", lr=-1.0))
    with pytest.raises(JobError, match="dataset must be one of"):
        manager.start(TrainConfig(dataset="imagenet"))
    with pytest.raises(JobError, match="dataset folder needs data_root"):
        manager.start(TrainConfig(dataset="folder"))
    with pytest.raises(JobError, match="dataset folder .* does not exist"):
        manager.start(TrainConfig(dataset="folder", data_root=str(root / "nowhere")))
    for bad_name in ("../escape", "a/b", ".hidden", "", "x" * 300, "sp ace"):
        with pytest.raises(JobError, match="run name"):
            manager.start(TrainConfig(**QUICK), name=bad_name)
    assert not root.exists()
    (root / "taken").mkdir(parents=True)
    with pytest.raises(JobError, match="a run named taken already exists"):
        manager.start(TrainConfig(**QUICK), name="taken")
    assert tree(root) == {"taken"}
    with pytest.raises(JobError, match="no run or training job"):
        manager.progress(root / "never")


# ----------------------------------------------------------------------------- the lock: the kernel's, held by the job


class Sleepers:
    """``subprocess.Popen`` for ecaml.serve.jobs that launches a sleeper in place of training (same kwargs, inherited
    descriptors included), so a job "runs" for ``seconds`` without any training; each is killed afterwards."""

    def __init__(self, seconds: float):
        self.seconds, self.started, self.real_popen = seconds, [], subprocess.Popen

    def __call__(self, command, **options):
        process = self.real_popen([sys.executable, "-c", f"import time; time.sleep({self.seconds})"], **options)
        self.started.append(process)
        return process

    def alive(self) -> list[subprocess.Popen]:
        return [process for process in self.started if process.poll() is None]

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()
            process.wait()


class InterleavingOs:
    """The ``os`` module, except that before each of the lock's file operations (open, rename, link, replace) another
    tab runs a whole ``start`` in between: a forced interleaving of starters at every point the lock is touched."""

    def __init__(self, real, between, times: int):
        self.real, self.between, self.left, self.inside = real, between, times, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def _interleaved(self, name):
        def call(*args, **kwargs):
            if self.left > 0 and not self.inside:
                self.left -= 1
                self.inside = True
                try:
                    self.between()
                finally:
                    self.inside = False
            return getattr(self.real, name)(*args, **kwargs)

        return call

    open = property(lambda self: self._interleaved("open"))
    rename = property(lambda self: self._interleaved("rename"))
    link = property(lambda self: self._interleaved("link"))
    replace = property(lambda self: self._interleaved("replace"))


def test_forced_interleavings_of_starters_never_run_two_jobs(root, monkeypatch):
    """A job ended (it left its lock file behind); then a tab starts a job, and at each of its touches of the lock
    another tab starts one in between. At most one of all these starts may succeed: one job in the folder."""
    sleepers = Sleepers(60)
    monkeypatch.setattr(jobs.subprocess, "Popen", sleepers)
    try:
        JobManager(root).start(TrainConfig(**QUICK), name="ended")
        sleepers.started[0].kill()  # a job gone without a word (nothing has looked at the folder since)
        sleepers.started[0].wait()

        outcomes = []

        def start_from_another_tab():
            try:
                outcomes.append(JobManager(root).start(TrainConfig(**QUICK)))
            except JobError as error:
                outcomes.append(error)

        interleaving = InterleavingOs(os, start_from_another_tab, times=3)
        for module in {jobs, sys.modules.get("ecaml.store.locks")} - {None}:
            monkeypatch.setattr(module, "os", interleaving)
        start_from_another_tab()
        monkeypatch.undo()

        started = [outcome for outcome in outcomes if isinstance(outcome, Path)]
        assert interleaving.left < 3, "no interleaving was forced"
        assert len(started) == 1, outcomes
        assert [str(e) for e in outcomes if isinstance(e, JobError)] and all(
            "already running" in str(e) for e in outcomes if isinstance(e, JobError))
        assert len(sleepers.alive()) == 1
        assert JobManager(root).current() == started[0]
    finally:
        sleepers.kill_all()


def test_the_lock_is_held_by_the_training_process_not_by_its_starter(root, tmp_path):
    """A server that started a job and then exited leaves the folder locked while the job trains; once the job is
    killed (kill -9: no chance to clean anything) the kernel has released the lock and a new job starts at once."""
    starter = (
        "import sys; from ecaml.serve.jobs import JobManager; from ecaml.config import TrainConfig;"
        f"print(JobManager(sys.argv[1]).start(TrainConfig(dataset='digits', max_steps=100000, eval_every=0)))"
    )
    result = subprocess.run([sys.executable, "-c", starter, str(root)], capture_output=True, text=True, timeout=60,
                            cwd=Path(jobs.__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip())
    manager = JobManager(root)
    assert lock_held(root) and manager.current() == run_dir
    with pytest.raises(JobError, match="already running"):
        manager.start(TrainConfig(**QUICK), name="mine")
    progress = wait_for(manager, run_dir, lambda p: p.pid is not None and p.state == "running")
    os.kill(progress.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while lock_held(root):  # the orphan is reaped by init, then the kernel drops its lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert manager.progress(run_dir).state == "failed"
    next_dir = manager.start(TrainConfig(**QUICK), name="next")
    wait_for(manager, next_dir, lambda p: p.state in jobs.FINAL_STATES)


def test_a_left_behind_or_garbage_record_never_blocks_and_a_held_lock_always_does(root):
    root.mkdir(parents=True)
    (root / jobs.RECORD_NAME).write_text('{"runs": ["/elsewhere/ghost"], "pids": [1], "owner": null}')
    assert JobManager(root).current() is None  # nobody holds the lock: the record is history
    (root / jobs.RECORD_NAME).write_text("{half a record")
    assert JobManager(root).current() is None
    # Whoever holds the lock (here a process that inherited it), the folder is busy, whatever the record says.
    descriptor = os.open(root / jobs.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, fcntl, time; fcntl.flock(int(sys.argv[1]), "
                               "fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(descriptor)],
                              stdout=subprocess.PIPE, text=True, pass_fds=(descriptor,))
    os.close(descriptor)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobError, match="still ending|already running"):
            JobManager(root).start(TrainConfig(**QUICK), name="mine")
        assert not (root / "mine").exists() and not jobs.pending_log_path(root / "mine").exists()
    finally:
        holder.kill()
        holder.wait()
    assert JobManager(root).current() is None


def test_the_manager_never_waits_for_a_process_it_did_not_start(root):
    """A status naming another child of this process (say the app's own ``Popen``) must not have its exit status
    taken: only that ``Popen`` may collect it, and it gets the real one."""
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    deadline = time.monotonic() + 20
    while child_states(os.getpid()).get(other.pid) != "Z":  # ended, not yet waited for
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run_dir = root / "claimed"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": other.pid, "updated": time.time(),
                                                     "step": 0, "total_steps": 10}))
    manager = JobManager(root)
    assert manager.progress(run_dir).state == "failed"
    assert manager.current() is None
    assert other.wait(timeout=5) == 7


# ----------------------------------------------------------------------------- names and flags


def test_default_run_name_is_descriptive_and_filesystem_safe():
    name = default_run_name(TrainConfig(dataset="digits", loss="binomial", ec_weight=0.13, seed=0))
    assert name.startswith("digits-binomial-ec0.13-seed0-")
    assert len(name.rsplit("-", 2)[-2]) == 8 and len(name.rsplit("-", 1)[-1]) == 6  # YYYYmmdd-HHMMSS
    odd = default_run_name(TrainConfig(dataset="glyphs", loss="pml:MultiSimilarityLoss", ec_weight=0.0, seed=7))
    assert odd.startswith("glyphs-pml-MultiSimilarityLoss-ec0-seed7-")
    assert jobs.NAME_PATTERN.match(odd)


def test_config_flags_rebuild_the_config_exactly():
    config = TrainConfig(
        dataset="folder", data_root="/data/birds with spaces", val_classes=0.25, backbone="resnet18", pretrained=True,
        loss="pml:MultiSimilarityLoss", loss_params={"alpha": 2.0, "beta": 40, "name": "x=y"}, ec_weight=1e-5,
        ec_pairs="dense", ec_route="full", epochs=3, lr=3e-4, head_lr_mult=10.0, recall_ks=[1, 5], device="cpu",
    ).resolved()
    args = build_parser().parse_args(["train", *config_flags(config), "--out=x"])
    assert TrainConfig.from_dict(_flag_values(args)).resolved() == config


def children_of_this_process() -> dict[int, str]:
    """pid -> state letter of every process whose parent is this one."""
    return child_states(os.getpid())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_finished_jobs_are_reaped_without_anyone_polling(root):
    """Several jobs end while no page asks about them: none is left as a defunct child of the server."""
    manager = JobManager(root)
    for seed in range(2):
        run_dir = manager.start(TrainConfig(**QUICK, seed=seed), name=f"reaped-{seed}")
        pid = manager.live_record().pids[0]
        assert pid in children_of_this_process()
        deadline = time.monotonic() + 90
        # Only the run folder is read while the job runs: no manager call that could reap it on the way.
        while pid in children_of_this_process():
            assert time.monotonic() < deadline, f"job {seed} still a child: {children_of_this_process()}"
            time.sleep(0.1)
        assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert "Z" not in children_of_this_process().values()
