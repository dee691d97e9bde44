"""A run with a long history (100,000 steps) draws on the Train and Compare pages without error, its curves thinned
to a bounded number of points with every evaluation kept (altair refused more than 5,000 rows: issue 22 item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from apptest_support import assert_clean, open_page, plotly_figures

from app import run_picker, training_job
from app.thinning import MAX_DRAWN_POINTS

LONG_STEPS = 100_000
EVAL_EVERY_STEPS = 2_500


def write_long_run(shipped: Path, runs: Path) -> Path:
    """The fixture EC-on run with a history of LONG_STEPS noisy step records and an evaluation every 2,500 steps."""
    run_dir = runs / "long-run"
    shutil.copytree(shipped / "digits-ec-on", run_dir, ignore=shutil.ignore_patterns("film"))
    rng = np.random.default_rng(7)
    lines = []
    for step in range(1, LONG_STEPS + 1):
        loss = 10.0 / np.sqrt(step) + abs(rng.normal(0, 0.5))
        lines.append({"kind": "step", "step": step, "epoch": step // 28, "metric_loss": loss, "total_loss": loss + 0.1,
                      "energy": 1.0, "log_energy": float(rng.normal()), "row_norm": 0.2})
        if step % EVAL_EVERY_STEPS == 0:
            for split in ("seen_test", "unseen"):
                lines.append({"kind": "eval", "step": step, "split": split, "recall@1": step / (2 * LONG_STEPS),
                              "map@r": step / (3 * LONG_STEPS)})
    (run_dir / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run_dir / "status.json").write_text(json.dumps({"state": "completed", "step": LONG_STEPS,
                                                      "total_steps": LONG_STEPS}))
    return run_dir


def drawn_points(figure: dict) -> list[int]:
    return [len(trace.get("x", [])) for trace in figure["data"]]


def test_the_train_page_draws_a_100000_step_run_thinned_with_every_evaluation(app_environment, shipped_runs):
    run_dir = write_long_run(shipped_runs, app_environment)
    app = open_page("train", {training_job.OWN_JOB_KEY: str(run_dir)})
    assert_clean(app)
    figures = plotly_figures(app)
    assert len(figures) == 3, "two panels of curves and the evaluations"
    assert all(0 < count <= MAX_DRAWN_POINTS for figure in figures for count in drawn_points(figure))
    curves = next(figure for figure in figures if "Metric loss" in json.dumps(figure))
    assert max(max(trace["x"]) for trace in curves["data"]) == LONG_STEPS
    evaluations = figures[-1]
    assert sorted(len(trace["x"]) for trace in evaluations["data"]) == [LONG_STEPS // EVAL_EVERY_STEPS] * 2


def test_compare_draws_a_100000_step_run_beside_a_short_one(app_environment, shipped_runs):
    run_dir = write_long_run(shipped_runs, app_environment)
    app = open_page("compare", {run_picker.SELECTION_KEY: [str(shipped_runs / "digits-ec-off"), str(run_dir)]})
    assert_clean(app)
    figures = plotly_figures(app)
    assert len(figures) >= 2
    assert all(count <= MAX_DRAWN_POINTS for figure in figures for count in drawn_points(figure))
