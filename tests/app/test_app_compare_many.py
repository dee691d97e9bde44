"""Compare with many runs (issue 22 item 6): pairwise Δ for like runs, stopped and unequal runs flagged, a relative
progress axis, and the evaluation chart opening on the split that has a history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from apptest_support import assert_clean, named_lines, open_page, plotly_figures

from app import run_picker


def rewrite_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def add_triplet_pair(root: Path) -> list[str]:
    """A copy of the fixture pair as if trained with the triplet loss: like each other, unlike the binomial pair."""
    for name in ("digits-ec-off", "digits-ec-on"):
        copy = root / name.replace("digits", "triplet")
        shutil.copytree(root / name, copy, ignore=shutil.ignore_patterns("film"))
        rewrite_json(copy / "config.json", loss="triplet")
    return [str(root / name) for name in ("digits-ec-off", "digits-ec-on", "triplet-ec-off", "triplet-ec-on")]


def test_like_runs_get_a_pairwise_delta_when_the_baseline_is_unlike_them(checkpoints_copy):
    app = open_page("compare", {run_picker.SELECTION_KEY: add_triplet_pair(checkpoints_copy)})
    assert_clean(app)
    assert list(app.dataframe[0].value.columns) == [
        "digits-ec-off", "digits-ec-on", "Δ digits-ec-on", "triplet-ec-off", "triplet-ec-on", "Δ triplet-ec-on"
    ]
    table = app.dataframe[0].value
    expected = table["triplet-ec-on"] - table["triplet-ec-off"]
    assert (table["Δ triplet-ec-on"] - expected).abs().max() < 1e-9
    assert not [w.value for w in app.warning if "No Δ" in w.value]


def test_a_stopped_run_and_runs_of_different_length_are_flagged(checkpoints_copy):
    rewrite_json(checkpoints_copy / "digits-ec-on" / "status.json", state="stopped")
    app = open_page("compare")
    assert_clean(app)
    (warning,) = [w.value for w in app.warning if "with care" in w.value]
    assert "**digits-ec-on** was stopped at step" in warning


def test_relative_progress_puts_every_run_on_zero_to_one(checkpoints_copy):
    app = open_page("compare")
    app.toggle(key="curve_relative").set_value(True).run()
    assert_clean(app)
    curves = plotly_figures(app)[0]
    assert "progress" in curves["layout"]["xaxis"]["title"]["text"]
    assert all(max(line["x"]) == 1.0 for line in named_lines(curves).values())


def test_the_evaluations_open_on_the_split_with_a_history(checkpoints_copy):
    history = checkpoints_copy / "digits-ec-on" / "history.jsonl"
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    final = next(record for record in lines if record.get("split") == "unseen")
    assert [r for r in lines if r.get("split") == "seen_test"], "the fixture's final evaluation covers seen_test"
    extra = [{**final, "step": step} for step in (5, 10)]  # unseen gets a history, seen_test keeps its final point
    history.write_text("".join(json.dumps(record) + "\n" for record in lines + extra))
    app = open_page("compare")
    assert_clean(app)
    assert app.radio(key="evaluation_split").value == "unseen"  # not seen_test's single final point


def test_the_evaluations_open_on_the_split_where_most_runs_have_a_history(checkpoints_copy):
    """The walk-through's Compare opened on seen_test, where 1 run had a history, while unseen had 3."""
    for name, splits in (("digits-ec-off", ("seen_test", "unseen")), ("digits-ec-on", ("unseen",))):
        history = checkpoints_copy / name / "history.jsonl"
        lines = [json.loads(line) for line in history.read_text().splitlines()]
        finals = {record["split"]: record for record in lines if record.get("kind") == "eval"}
        extra = [{**finals[split], "step": step} for split in splits for step in (5, 10)]
        history.write_text("".join(json.dumps(record) + "\n" for record in lines + extra))
    app = open_page("compare")
    assert_clean(app)
    assert app.radio(key="evaluation_split").value == "unseen"  # 2 runs' histories, not seen_test's 1


def test_the_evaluations_choose_their_split_again_when_other_runs_are_chosen(checkpoints_copy):
    runs = add_triplet_pair(checkpoints_copy)  # copies whose splits hold their final evaluation only
    history = checkpoints_copy / "digits-ec-on" / "history.jsonl"
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    final = next(record for record in lines if record.get("split") == "unseen")
    history.write_text("".join(json.dumps(r) + "\n" for r in lines + [{**final, "step": s} for s in (5, 10)]))
    app = open_page("compare", {run_picker.SELECTION_KEY: runs[2:]})
    assert_clean(app)
    without_history = app.radio(key="evaluation_split").value
    assert without_history != "unseen"  # no split has a history: the first one
    app.multiselect(key="runs_compare").set_value(runs[:2]).run()
    assert_clean(app)
    assert app.radio(key="evaluation_split").value == "unseen"  # the new runs' history, not the last visit's split


def history_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def write_history(run_dir: Path, records: list[dict]) -> None:
    (run_dir / "history.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_relative_progress_ends_at_the_last_recorded_step_when_the_history_outruns_the_weights(checkpoints_copy):
    # A run killed between checkpoints (or still training) has history past its saved weights' step: its progress
    # must still end at 100 %, not run past it (the walk-through saw an axis to about 190 %).
    run_dir = checkpoints_copy / "digits-ec-on"
    records = history_of(run_dir)
    last = max(record["step"] for record in records)
    later_step = next(r for r in records if r.get("kind") == "step")
    later_eval = next(r for r in records if r.get("split") == "unseen")
    write_history(run_dir, records + [{**later_step, "step": 2 * last}, {**later_eval, "step": 2 * last}])
    app = open_page("compare")
    app.toggle(key="curve_relative").set_value(True).run()
    assert_clean(app)
    curves, evaluations = plotly_figures(app)[:2]
    for figure in (curves, evaluations):
        lines = named_lines(figure)
        assert set(lines) == {"digits-ec-off", "digits-ec-on"}
        assert all(max(x for x in line["x"] if x is not None) == 1.0 for line in lines.values())


def test_a_run_without_evaluations_on_the_chosen_classes_is_still_named_in_the_legend(checkpoints_copy):
    # A stopped run evaluated only on some classes: the chart of the others names it too (marked), not leaves it out.
    run_dir = checkpoints_copy / "digits-ec-on"
    write_history(run_dir, [r for r in history_of(run_dir) if r.get("split") != "unseen"])
    history = checkpoints_copy / "digits-ec-off" / "history.jsonl"
    records = history_of(checkpoints_copy / "digits-ec-off")
    final = next(record for record in records if record.get("split") == "unseen")
    write_history(checkpoints_copy / "digits-ec-off", records + [{**final, "step": s} for s in (5, 10)])
    assert history.exists()
    app = open_page("compare")
    assert_clean(app)
    assert app.radio(key="evaluation_split").value == "unseen"
    evaluations = plotly_figures(app)[1]
    names = [trace.get("name", "") for trace in evaluations["data"] if trace.get("showlegend", True)]
    assert any(name.startswith("digits-ec-off") for name in names)
    (missing,) = [name for name in names if name.startswith("digits-ec-on")]
    assert "no evaluation" in missing
