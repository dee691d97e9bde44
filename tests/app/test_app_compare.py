"""The Compare page: default pair, metrics table, curves and their controls, unusable and missing runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from apptest_support import assert_clean, figure_title, named_lines, open_page, plotly_figures, run_key
from map_support import open_ready


def metrics_columns(app) -> list[str]:
    return list(app.dataframe[0].value.columns)


def test_opens_on_the_shipped_pair_with_a_delta_column(shipped_runs):
    app = open_page("compare")
    assert_clean(app)
    assert app.title[0].value == "Compare runs"
    picker = app.multiselect(key="runs_compare")
    assert picker.value == [run_key(shipped_runs, "digits-ec-off"), run_key(shipped_runs, "digits-ec-on")]
    assert metrics_columns(app) == ["digits-ec-off", "digits-ec-on", "Δ digits-ec-on"]
    assert "Recall@1" in list(app.dataframe[0].value.index)
    # The first screen: curves and recall over training; the distance histograms wait in a closed expander.
    assert len(plotly_figures(app)) == 2
    assert [expander.label.split(":")[0].split(",")[0] for expander in app.expander] == [
        "How each run was trained",
        "Same-class against different-class distances",
    ]


def test_the_distance_histograms_are_drawn_once_their_expander_is_open():
    app = open_ready(open_page, "compare", {"distances_open": True})  # the embeddings come from background jobs
    assert_clean(app)
    charts = plotly_figures(app)
    assert len(charts) == 4  # curves, recall over training, one distance histogram per run
    assert [figure_title(chart) for chart in charts[2:]] == ["digits-ec-off", "digits-ec-on"]
    bars = named_lines(charts[2])
    assert set(bars) == {"same class", "different classes"}
    for kind, bar in bars.items():  # densities: each histogram integrates to 1
        assert abs(float(np.sum(np.asarray(bar["width"]) * np.asarray(bar["y"]))) - 1) < 1e-6, kind
    # One x range fitted to the data (not the whole 0-2 of cosine distances) and one y scale, shared by the panels.
    ranges = [(chart["layout"]["xaxis"]["range"], chart["layout"]["yaxis"]["range"]) for chart in charts[2:]]
    assert ranges[0] == ranges[1]
    (low, high), (bottom, top) = ranges[0]
    every_bar = [bar for chart in charts[2:] for bar in named_lines(chart).values()]
    assert low == pytest.approx(min(b["x"][0] - b["width"][0] / 2 for b in every_bar))
    assert high == pytest.approx(max(b["x"][-1] + b["width"][-1] / 2 for b in every_bar))
    assert high - low < 1.5, "fitted to the data"
    assert bottom == 0 and top == max(max(b["y"]) for b in every_bar)
    medians = [shape["x0"] for shape in charts[2]["layout"]["shapes"]]
    assert len(medians) == 2 and medians[0] < medians[1]  # same-class pairs are closer


def test_the_settings_table_has_one_row_per_run(shipped_runs):
    app = open_page("compare")
    settings = app.dataframe[1].value
    assert list(settings.index) == ["digits-ec-off", "digits-ec-on"]
    assert list(settings.columns) == ["dataset", "backbone", "loss", "Energy Confusion", "evaluated", "steps", "seed"]
    assert list(settings["Energy Confusion"]) == ["EC off", "EC λ=0.13"]
    assert list(settings["evaluated"]) == ["at the end", "at the end"]  # trained with --eval-every 0


def evaluation_captions(app) -> list[str]:
    return [caption.value for caption in app.caption if "final evaluation" in caption.value]


def test_the_single_evaluation_is_explained_by_each_runs_settings(checkpoints_copy):
    app = open_page("compare")
    assert evaluation_captions(app) == [
        "Only the final evaluation was recorded for **digits-ec-off** and **digits-ec-on**: "
        "they were trained with --eval-every 0."
    ]
    # A run that evaluates every 5 epochs but trained for fewer: not blamed on --eval-every 0.
    config_path = checkpoints_copy / "digits-ec-on" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "eval_every": 5}))
    app.run()
    assert_clean(app)
    (caption,) = evaluation_captions(app)
    assert caption.startswith("Only the final evaluation was recorded for **digits-ec-off**: it was trained with "
                              "--eval-every 0; **digits-ec-on**: it trained for ")
    assert caption.endswith(", shorter than its evaluation interval of 5 epochs.")
    assert "every 5 epochs" in list(app.dataframe[1].value["evaluated"])


def test_changing_the_runs_changes_the_table(shipped_runs):
    app = open_page("compare")
    app.multiselect(key="runs_compare").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert metrics_columns(app) == ["digits-ec-on"]
    app.multiselect(key="runs_compare").set_value([]).run()
    assert_clean(app)
    assert any("Choose at least one run" in info.value for info in app.info)


def curve_traces(app) -> list[tuple[str, float]]:
    """(name or "" for an unnamed trace, line width) of each trace of the training-curve chart."""
    chart = plotly_figures(app)[0]
    return [(trace.get("name", "") if trace.get("showlegend", True) else "", trace["line"]["width"])
            for trace in chart["data"]]


def test_smoothing_changes_the_plotted_curve():
    app = open_page("compare")
    # Each run's raw values faint behind its smoothed line.
    assert curve_traces(app) == [("", 1), ("digits-ec-off", 2.5), ("", 1), ("digits-ec-on", 2.5)]
    traces = plotly_figures(app)[0]["data"]
    assert not np.allclose(traces[0]["y"], traces[1]["y"])
    app.slider(key="curve_smoothing").set_value(0.0).run()
    assert_clean(app)
    assert curve_traces(app) == [("digits-ec-off", 2.5), ("digits-ec-on", 2.5)]  # no faint raw copy
    # Hovering a step lists every run's value there.
    assert plotly_figures(app)[0]["layout"]["hovermode"] == "x unified"


def test_energy_is_drawn_for_both_runs_and_log_scale_applies():
    app = open_page("compare")
    app.selectbox(key="curve_quantity").set_value("energy").run()
    app.toggle(key="curve_log").set_value(True).run()
    assert_clean(app)
    chart = plotly_figures(app)[0]
    # The baseline logs the energy without training on it, so both curves are there to compare.
    assert set(named_lines(chart)) == {"digits-ec-off", "digits-ec-on"}
    assert chart["layout"]["yaxis"]["type"] == "log"
    assert not any("Not drawn" in caption.value for caption in app.caption)


def test_unusable_runs_are_listed_and_the_others_still_work(checkpoints_copy):
    broken = checkpoints_copy / "broken-run"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    app = open_page("compare")
    assert_clean(app)
    assert "cannot be used" in app.expander[0].label
    assert any("broken-run" in markdown.value and "not valid JSON" in markdown.value for markdown in app.markdown)
    assert metrics_columns(app) == ["digits-ec-off", "digits-ec-on", "Δ digits-ec-on"]


def test_a_new_run_appears_without_restarting(checkpoints_copy):
    app = open_page("compare")
    assert len(app.multiselect(key="runs_compare").options) == 2
    (checkpoints_copy / "digits-ec-on").rename(checkpoints_copy / "digits-ec-on-renamed")
    app.run()
    assert_clean(app)
    options = app.multiselect(key="runs_compare").options
    assert any("digits-ec-on-renamed" in option for option in options)


def test_on_a_log_axis_values_that_cannot_show_are_left_out():
    app = open_page("compare")
    app.selectbox(key="curve_quantity").set_value("log_energy").run()
    every_value = named_lines(plotly_figures(app)[0])
    app.toggle(key="curve_log").set_value(True).run()
    assert_clean(app)
    shown = named_lines(plotly_figures(app)[0])
    for name, line in shown.items():
        assert all(value > 0 for value in line["y"])
        assert 0 < len(line["y"]) < len(every_value[name]["y"]), name
    assert any("not drawn on a log axis" in caption.value for caption in app.caption)


def rewrite_config(run: Path, **changes) -> None:
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_cross_loss_pair_shows_no_delta_says_why_and_gets_a_chart_per_loss(checkpoints_copy):
    rewrite_config(checkpoints_copy / "digits-ec-on", loss="triplet")
    app = open_page("compare")
    assert_clean(app)
    assert metrics_columns(app) == ["digits-ec-off", "digits-ec-on"]  # side by side, no Δ
    (warning,) = [w.value for w in app.warning if "No Δ" in w.value]
    assert "**digits-ec-on** (base loss triplet, not binomial)" in warning
    figures = plotly_figures(app)[:2]
    assert [figure_title(figure) for figure in figures] == ["binomial loss", "triplet loss"]
    assert [set(named_lines(figure)) for figure in figures] == [{"digits-ec-off"}, {"digits-ec-on"}]


def test_runs_of_other_data_or_splits_get_no_delta_either(checkpoints_copy):
    for changes, words in (({"dataset": "glyphs"}, "data set glyphs, not digits"),
                           ({"val_seed": 3, "split_seed": 3}, "validation classes 3, not 0"),
                           ({"seen_test_per_class": 0}, "held-out seen images 0, not 10")):
        rewrite_config(checkpoints_copy / "digits-ec-on", **changes)
        app = open_page("compare")
        assert not app.exception
        assert metrics_columns(app) == ["digits-ec-off", "digits-ec-on"]
        assert any(words in w.value for w in app.warning), [w.value for w in app.warning]
        rewrite_config(checkpoints_copy / "digits-ec-on", dataset="digits", val_seed=0, split_seed=0,
                       seen_test_per_class=10)


def test_the_baseline_is_chosen_and_every_delta_is_against_it(shipped_runs):
    app = open_page("compare")
    table = app.dataframe[0].value
    assert app.selectbox(key="compare_baseline").value == run_key(shipped_runs, "digits-ec-off")  # EC off by default
    app.selectbox(key="compare_baseline").set_value(run_key(shipped_runs, "digits-ec-on")).run()
    assert_clean(app)
    swapped = app.dataframe[0].value
    assert list(swapped.columns) == ["digits-ec-on", "digits-ec-off", "Δ digits-ec-off"]
    assert np.allclose(swapped["Δ digits-ec-off"], -table["Δ digits-ec-on"])


def test_the_baseline_defaults_to_the_first_ec_off_run_whatever_the_order(shipped_runs):
    keys = [run_key(shipped_runs, "digits-ec-on"), run_key(shipped_runs, "digits-ec-off")]
    app = open_page("compare", {"selected_run_paths": keys})
    assert_clean(app)
    assert metrics_columns(app) == ["digits-ec-off", "digits-ec-on", "Δ digits-ec-on"]


def test_evaluation_splits_are_labelled_validation_first_and_unknown_ones_kept(checkpoints_copy):
    history = checkpoints_copy / "digits-ec-on" / "history.jsonl"
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    final = next(record for record in lines if record.get("split") == "unseen")
    extra = [{**final, "split": split, "step": step} for split in ("val", "seen_test", "mystery") for step in (5, 20)]
    history.write_text("".join(json.dumps(record) + "\n" for record in lines + extra))
    app = open_page("compare")
    assert_clean(app)
    radio = app.radio(key="evaluation_split")
    assert radio.options[:3] == [
        "val: validation classes (held-out seen classes: for model selection)",
        "seen_test: seen classes, held-out images",
        "unseen: test classes — not for model selection",
    ]
    assert radio.options[-1] == "mystery" and radio.value == "val"  # validation curves preferred
    radio.set_value("unseen").run()
    assert_clean(app)
    assert "test classes — not for model selection" in figure_title(plotly_figures(app)[1])
    assert any("**Test classes — not for model selection.**" in c.value for c in app.caption)


def test_runs_of_one_setting_with_several_seeds_show_mean_and_spread(checkpoints_copy, shipped_runs):
    import shutil

    shutil.copytree(checkpoints_copy / "digits-ec-off", checkpoints_copy / "digits-ec-off-seed1")
    rewrite_config(checkpoints_copy / "digits-ec-off-seed1", seed=1)
    metrics_path = checkpoints_copy / "digits-ec-off-seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "recall@1": metrics["recall@1"] - 0.1}))
    keys = [str(checkpoints_copy / name) for name in ("digits-ec-off", "digits-ec-off-seed1", "digits-ec-on")]
    app = open_page("compare", {"selected_run_paths": keys})
    assert_clean(app)
    spread = next(frame.value for frame in app.dataframe if any("2 seeds" in str(c) for c in frame.value.columns))
    (column,) = spread.columns
    assert column == "digits · binomial · EC off · 2 seeds"
    values = [100 * metrics["recall@1"], 100 * (metrics["recall@1"] - 0.1)]
    assert spread.loc["Recall@1", column] == f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def test_a_stopped_run_is_no_seed_of_its_setting(checkpoints_copy):
    import shutil

    for seed in (1, 2):
        shutil.copytree(checkpoints_copy / "digits-ec-off", checkpoints_copy / f"digits-ec-off-seed{seed}")
        rewrite_config(checkpoints_copy / f"digits-ec-off-seed{seed}", seed=seed)
    status = checkpoints_copy / "digits-ec-off-seed2" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "state": "stopped"}))
    keys = [str(checkpoints_copy / name) for name in ("digits-ec-off", "digits-ec-off-seed1", "digits-ec-off-seed2")]
    app = open_page("compare", {"selected_run_paths": keys})
    assert_clean(app)
    columns = [str(c) for frame in app.dataframe for c in frame.value.columns if "seeds" in str(c)]
    assert columns == ["digits · binomial · EC off · 2 seeds"]  # seeds 0 and 1; the stopped seed 2 is left out


def test_runs_that_repeat_a_seed_are_not_counted_as_several_seeds(checkpoints_copy):
    import shutil

    # issue 22: two seed-0 runs of one setting were tabulated as "2 seeds"
    shutil.copytree(checkpoints_copy / "digits-ec-off", checkpoints_copy / "digits-ec-off-again")
    keys = [str(checkpoints_copy / name) for name in ("digits-ec-off", "digits-ec-off-again")]
    app = open_page("compare", {"selected_run_paths": keys})
    assert_clean(app)
    columns = [str(c) for frame in app.dataframe for c in frame.value.columns if " · " in str(c)]
    assert columns == ["digits · binomial · EC off · 2 runs of 1 seed (seed 0 repeated)"]
