"""Starting and resuming a run: the run folder's lock and config, the processes under torchrun, signals.

``train`` makes a new run directory (refusing a used one), ``resume`` continues one from its last
complete checkpoint; both hold the run's lock while they write and hand the loop to ``Trainer.run``.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ecaml.config import TrainConfig
from ecaml.runs import read_config, write_config
from ecaml.store.atomic import remove_stale_temp_files
from ecaml.store.run_files import HISTORY_FILE, LOCK_FILE, RunError, hold_run_lock
from ecaml.train import distributed
from ecaml.train.stopping import StopFlag, TrainingError, TrainResult, stop_on_signals
from ecaml.train.trainer import Trainer


def train(config: TrainConfig, run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None) -> TrainResult:
    """Train a new run into ``run_dir`` (which must be new or empty); under torchrun, one process of several."""
    run_dir = Path(run_dir)
    group = distributed.start(config.device)
    try:
        if group is not None and not group.is_main:
            _wait_for_main(group)
            return _run(Trainer(config, run_dir, group=group), progress, stop)
        with ExitStack() as held:
            with _announced_to_followers(group):
                _refuse_used_folder(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(hold_run_lock(run_dir))
                _refuse_used_folder(run_dir)  # again under the lock: another trainer may have started here meanwhile
                trainer = Trainer(config, run_dir, group=group)
                write_config(run_dir, trainer.config)
                (run_dir / HISTORY_FILE).touch()
                # A step-0 checkpoint makes the run loadable and resumable even if killed before its first epoch ends.
                trainer.save_checkpoint()
            return _run(trainer, progress, stop)
    finally:
        distributed.stop(group)


def _refuse_used_folder(run_dir: Path) -> None:
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists and is not empty; pick a new --out or use --resume {run_dir}")


def resume(run_dir: str | Path, progress: bool = True, stop: StopFlag | None = None, **overrides: Any) -> TrainResult:
    """Continue a run from its last complete checkpoint; ``overrides`` may extend epochs or max_steps."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory to resume")
    group = distributed.start(read_config(run_dir).device) if distributed.requested() else None
    try:
        if group is not None and not group.is_main:
            _wait_for_main(group)  # rank 0 has cleaned the folder and rewritten the config by now
            trainer = Trainer(_overridden(read_config(run_dir), overrides), run_dir, group=group)
            trainer.restore_checkpoint()
            return _run(trainer, progress, stop)
        with ExitStack() as held:
            with _announced_to_followers(group):
                held.enter_context(hold_run_lock(run_dir))
                remove_stale_temp_files(run_dir)  # left by a writer that was killed; safe, we hold the lock
                trainer = Trainer(_overridden(read_config(run_dir), overrides), run_dir, group=group)
                trainer.restore_checkpoint()
                write_config(run_dir, trainer.config)
            return _run(trainer, progress, stop)
    finally:
        distributed.stop(group)


def _overridden(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    return config


@contextmanager
def _announced_to_followers(group: distributed.ProcessGroup | None):
    """Rank 0 sets the run up, then tells the other processes whether it could (they wait for that word)."""
    if group is None:
        yield
        return
    try:
        yield
    except BaseException:
        distributed.main_succeeded(False, group.device)
        raise
    distributed.main_succeeded(True, group.device)


def _wait_for_main(group: distributed.ProcessGroup) -> None:
    if not distributed.main_succeeded(False, group.device):
        raise TrainingError("process 0 could not set the run up; its error says why")


def _run(trainer: Trainer, progress: bool, stop: StopFlag | None) -> TrainResult:
    stop = stop if stop is not None else StopFlag()
    with stop_on_signals(stop):
        return trainer.run(stop, progress)
