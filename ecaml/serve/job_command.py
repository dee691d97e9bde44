"""The command line of a training job: ``python -m ecaml train`` flags rebuilding a config exactly, the job's name,
its environment (a lower CPU priority, a bounded thread count)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ecaml.config import TrainConfig
from ecaml.flags import TRAIN_FLAGS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # this file is ecaml/serve/job_command.py
# A job shares the machine with the app's viewers: it runs at a lower CPU priority and with at most all cores
# but one for torch's threads, so the pages stay responsive while it trains.
JOB_NICENESS = 10


class JobError(RuntimeError):
    """A job that cannot be started or read, with a one-line reason."""


def job_thread_budget() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def training_command(config: TrainConfig, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that train ``config`` into ``run_dir`` quietly, at the job's priority."""
    command = [sys.executable, "-m", "ecaml", "train", *config_flags(_sharing_cores(config)), f"--out={run_dir}",
               "--quiet"]
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **_background_priority())
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPOSITORY_ROOT), environment.get("PYTHONPATH", "")) if p
    )
    return command, environment


def _sharing_cores(config: TrainConfig) -> TrainConfig:
    """The config with torch's CPU threads bounded by the job's budget (an explicit smaller choice stays)."""
    if config.cpu_threads == 0 and config.backbone == "smallcnn":
        return config  # training already uses one thread for it (ecaml.train)
    budget = job_thread_budget()
    threads = min(config.cpu_threads, budget) if config.cpu_threads else budget
    return dataclasses.replace(config, cpu_threads=threads)


def _background_priority() -> dict[str, str]:
    """Environment of a job: lower priority (applied by ``python -m ecaml`` before torch starts its threads)."""
    threads = str(job_thread_budget())
    return {"ECAML_NICE": str(JOB_NICENESS), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def default_run_name(config: TrainConfig) -> str:
    """``<dataset>-<loss>-ec<weight>-seed<seed>-<YYYYmmdd-HHMMSS>``, with only ``[A-Za-z0-9._-]``."""
    raw = f"{config.dataset}-{config.loss}-ec{config.ec_weight:g}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "run"


def checked_config(config: TrainConfig) -> TrainConfig:
    """The config resolved, with absolute data and weight paths that exist; JobError (one line) otherwise."""
    try:
        resolved = with_absolute_paths(config).resolved()
    except (TypeError, ValueError) as error:
        raise JobError(str(error)) from None
    if resolved.dataset == "folder" and not resolved.data_root:
        raise JobError("dataset folder needs data_root: a folder with one sub-folder of images per class")
    if resolved.dataset == "folder" and not Path(resolved.data_root).is_dir():
        raise JobError(f"dataset folder {resolved.data_root} does not exist")
    if resolved.weights_path and not Path(resolved.weights_path).is_file():
        raise JobError(f"weights file {resolved.weights_path} does not exist")
    return resolved


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with relative data and weight paths made absolute (the job runs from another folder)."""
    values: dict[str, Any] = {}
    for key in ("data_root", "weights_path"):
        value = getattr(config, key)
        if value:
            values[key] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **values)


def config_flags(config: TrainConfig) -> list[str]:
    """``python -m ecaml train`` flags that rebuild ``config`` exactly (``--flag=value`` form)."""
    values = config.to_dict()
    flags = []
    for name in TRAIN_FLAGS:
        value = values[name]
        if value is None:
            continue
        if isinstance(value, list):  # eval_splits: comma-separated, "none" for an empty list
            text = ",".join(str(v) for v in value) or "none"
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        flags.append(f"--{name.replace('_', '-')}={text}")
    if values["pretrained"]:
        flags.append("--pretrained")
    if values["ec_gather"]:
        flags.append("--ec-gather")
    if values["keep_checkpoints"]:
        flags.append("--keep-checkpoints")
    if values["preset"]:  # a record of where the settings came from; every value it set is passed explicitly too
        flags.append(f"--preset={values['preset']}")
        if not values["pretrained"]:
            flags.append("--no-pretrained")
    for key, value in values["loss_params"].items():
        flags.append(f"--loss-param={key}={json.dumps(value)}")
    flags.append("--recall-ks=" + ",".join(str(k) for k in values["recall_ks"]))
    if values["legacy_unseen_seed"] is not None:  # only old folder runs carry it; jobs start new runs
        raise JobError("cannot start a job from the config of a folder run made before the fixed split")
    covered = set(TRAIN_FLAGS) | {"pretrained", "loss_params", "recall_ks", "legacy_unseen_seed", "ec_gather", "preset",
                                   "keep_checkpoints"}
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in covered]
    if missing:  # a new config field without a flag would be silently dropped
        raise JobError(f"cannot pass config key(s) {', '.join(missing)} to the training command")
    return flags
