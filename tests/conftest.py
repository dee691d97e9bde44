"""Shared fixtures: tiny real runs trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecaml.config import TrainConfig
from ecaml.train.launch import train


def train_tiny(run_dir, **overrides):
    """A real digits run of a few steps: enough to exercise every file of a run directory."""
    values = dict(dataset="digits", max_steps=6, eval_every=0, seed=0, ec_weight=0.13)
    values.update(overrides)
    return train(TrainConfig(**values), run_dir, progress=False)


def tiny_run_pair(tmp_path_factory) -> list[Path]:
    """Two real digits runs of 3 steps (EC on, seed 0; EC off, seed 1), trained once per session and shared."""
    root = tmp_path_factory.getbasetemp() / "tiny-digits-runs"
    dirs = []
    for name, seed, ec_weight in (("ec", 0, 0.13), ("base", 1, 0.0)):
        run_dir = root / name
        if not (run_dir / "metrics.json").is_file():
            train_tiny(run_dir, max_steps=3, seed=seed, ec_weight=ec_weight)
        dirs.append(run_dir)
    return dirs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny-ec").run_dir


@pytest.fixture(scope="session")
def tiny_baseline_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny-base", ec_weight=0.0).run_dir
