"""The shipped checkpoints: loadable, complete, small, paired, and their metrics.json reproducible.

Every run directory under ``checkpoints/`` (made by ``scripts/study.py``) must:

* load with ``ecaml.runs.load_run`` (config, weights checked key by key, history, metrics, status);
* hold config.json, model.safetensors, history.jsonl, metrics.json and status.json
  (status "completed"), and no trainer state (left out to save space);
* be under 5 MB, with all of ``checkpoints/`` under 40 MB;
* be named after its config: ``{dataset}-{loss}-ec{weight:g}-seed{seed}``;
* re-evaluate to its metrics.json (unseen classes) to 1e-4, through the library
  (the same calls as ``python -m ecaml evaluate RUN --json``) for every run, and
  through the CLI itself for one run.

And for each dataset (digits, glyphs) and base loss (binomial, triplet, npair)
there must be an EC-off run (ec_weight 0) and an EC-on run of the same seed.

``ECAML_CHECKPOINTS`` points the tests at another folder (to check a fresh copy).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecaml.data import load_split
from ecaml.eval.evaluate import embed_part, score
from ecaml.runs import input_channels, load_run

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = Path(os.environ.get("ECAML_CHECKPOINTS", ROOT / "checkpoints"))
RUNS = sorted(p for p in CHECKPOINTS.iterdir() if p.is_dir() and (p / "config.json").exists()) if CHECKPOINTS.is_dir() else []
REQUIRED = ("config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json")
MAX_RUN_BYTES = 5 * 1024 * 1024
MAX_TOTAL_BYTES = 40 * 1024 * 1024
DATASETS = ("digits", "glyphs")
LOSSES = ("binomial", "triplet", "npair")
TOLERANCE = 1e-4


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@functools.lru_cache(maxsize=None)
def _loaded(run_dir: Path):
    return load_run(run_dir)


@functools.lru_cache(maxsize=None)
def _split(dataset: str, data_root, val_classes: float, split_seed: int):
    """The class split of a run (ecaml.eval.evaluate.split_for), built once per dataset for all the runs."""
    return load_split(dataset, data_root, val_classes, split_seed)


def test_checkpoints_exist():
    assert RUNS, f"no run directories under {CHECKPOINTS}; run python scripts/study.py --out results/"


def test_total_size():
    total = _size(CHECKPOINTS)
    assert total < MAX_TOTAL_BYTES, f"{CHECKPOINTS} holds {total / 1e6:.1f} MB, over 40 MiB"


def test_readme_lists_every_run():
    readme = (CHECKPOINTS / "README.md").read_text()
    for run_dir in RUNS:
        assert f"`{run_dir.name}`" in readme, f"checkpoints/README.md does not list {run_dir.name}"
        assert f"--out checkpoints/{run_dir.name}" in readme, f"no command re-makes {run_dir.name} in the README"


@pytest.mark.parametrize("run_dir", RUNS, ids=[p.name for p in RUNS])
def test_run_is_complete_and_small(run_dir: Path):
    run = _loaded(run_dir)
    for name in REQUIRED:
        assert (run_dir / name).is_file(), f"{run_dir.name} lacks {name}"
    assert not list(run_dir.glob("trainer_state_*.safetensors")), "trainer states should not be shipped"
    assert _size(run_dir) < MAX_RUN_BYTES, f"{run_dir.name} is {_size(run_dir) / 1e6:.2f} MB, over 5 MiB"
    assert run.status and run.status.get("state") == "completed"
    assert run.metrics is not None
    config = run.config
    assert run_dir.name == f"{config.dataset}-{config.loss}-ec{config.ec_weight:g}-seed{config.seed}"
    assert config.val_classes == 0, "shipped runs are trained on all seen classes"
    steps = run.step_records()
    assert steps and steps[-1]["step"] == run.step, "the weights are not those of the last logged step"
    # The end-of-training evaluation is in the history: held-out images of the seen classes, and unseen classes.
    assert run.eval_records("seen_test"), "no evaluation of held-out seen-class images in the history"
    assert config.seen_test_per_class > 0, "shipped runs hold images of the seen classes out of training"
    last_unseen = run.eval_records("unseen")[-1]
    for key, value in run.metrics.items():
        assert last_unseen[key] == pytest.approx(value, abs=1e-12)


def test_every_dataset_and_loss_has_ec_off_and_on():
    pairs: dict[tuple[str, str, int], set[bool]] = {}
    for run_dir in RUNS:
        config = _loaded(run_dir).config
        pairs.setdefault((config.dataset, config.loss, config.seed), set()).add(config.ec_weight > 0)
    for dataset in DATASETS:
        for loss in LOSSES:
            seeds_with_both = [k for k, v in pairs.items() if k[:2] == (dataset, loss) and v == {False, True}]
            assert seeds_with_both, f"no EC-off/EC-on pair of the same seed for {dataset}/{loss}"


@pytest.mark.parametrize("run_dir", RUNS, ids=[p.name for p in RUNS])
def test_metrics_reproduce(run_dir: Path):
    """What `python -m ecaml evaluate RUN --json` computes (ecaml.cli.evaluate_run), with the split cached."""
    run = _loaded(run_dir)
    config = run.config
    if config.dataset == "fashion-mnist":  # its photos are installed apart (CI installs them)
        from test_fashion import real_files_or_skip

        real_files_or_skip()
    split = _split(config.dataset, config.data_root, config.val_classes, config.split_seed)
    embeddings = embed_part(run.model.cpu(), split, "unseen", config, input_channels(config), torch.device("cpu"))
    metrics = score(embeddings, config.recall_ks)
    assert set(metrics) == set(run.metrics)
    for key, value in run.metrics.items():
        assert math.isclose(metrics[key], value, abs_tol=TOLERANCE), f"{run_dir.name} {key}: {metrics[key]} vs {value}"


def test_cli_evaluate_reproduces_metrics_json():
    """The CLI itself, on the smallest run (one subprocess)."""
    run_dir = min(RUNS, key=lambda p: (_loaded(p).config.dataset != "digits", p.name))
    result = subprocess.run(
        [sys.executable, "-m", "ecaml", "evaluate", str(run_dir), "--json", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert set(printed) == set(stored)
    for key, value in stored.items():
        assert math.isclose(printed[key], value, abs_tol=TOLERANCE), f"{key}: {printed[key]} vs {value}"
