"""The Compare page: default pair, metrics table, curves and their controls, unusable and missing runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from apptest_support import assert_clean, open_page, plotly_specs, run_key, vega_charts
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
    assert len(vega_charts(app)) == 2
    assert not plotly_specs(app)  # Vega-Lite only: Plotly's browser bundle would slow the first paint
    assert [expander.label.split(":")[0].split(",")[0] for expander in app.expander] == [
        "How each run was trained",
        "Same-class against different-class distances",
    ]


def test_the_distance_histograms_are_drawn_once_their_expander_is_open():
    app = open_ready(open_page, "compare", {"distances_open": True})  # the embeddings come from background jobs
    assert_clean(app)
    charts = vega_charts(app)
    assert len(charts) == 4  # curves, recall over training, one distance histogram per run
    assert [chart.title for chart in charts[2:]] == ["digits-ec-off", "digits-ec-on"]
    bars = charts[2].data(0)
    assert set(bars["kind"]) == {"same class", "different classes"}
    for kind, group in bars.groupby("kind"):  # densities: each histogram integrates to 1
        assert abs(float(((group["right"] - group["left"]) * group["density"]).sum()) - 1) < 1e-6, kind
    # One x range fitted to the data (not the whole 0-2 of cosine distances) and one y scale, shared by the panels.
    encodings = [chart.layers[0]["encoding"] for chart in charts[2:]]
    domains = [(encoding["x"]["scale"]["domain"], encoding["y"]["scale"]["domain"]) for encoding in encodings]
    assert domains[0] == domains[1]
    (low, high), (bottom, top) = domains[0]
    every_bar = [chart.data(0) for chart in charts[2:]]
    assert low == min(b["left"].min() for b in every_bar) and high == max(b["right"].max() for b in every_bar)
    assert high - low < 1.5, "fitted to the data"
    assert bottom == 0 and top == max(b["density"].max() for b in every_bar)
    medians = charts[2].data(1)
    assert list(medians["kind"]) == ["same class", "different classes"]
    assert medians["median"].iloc[0] < medians["median"].iloc[1]  # same-class pairs are closer


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


def curve_marks(app) -> list[tuple[str, str]]:
    """(mark, y field) of each layer of the training-curve chart."""
    chart = vega_charts(app)[0]
    return [(layer["mark"]["type"], layer["encoding"].get("y", {}).get("field")) for layer in chart.layers]


def test_smoothing_changes_the_plotted_curve():
    app = open_page("compare")
    # The raw values faint behind the smoothed lines, and the hover rule.
    assert curve_marks(app) == [("line", "value"), ("line", "smoothed"), ("rule", None)]
    smoothed = vega_charts(app)[0].data(1)
    assert sorted(set(smoothed["series"])) == ["digits-ec-off", "digits-ec-on"]
    assert not np.allclose(smoothed["smoothed"], smoothed["value"])
    app.slider(key="curve_smoothing").set_value(0.0).run()
    assert_clean(app)
    assert curve_marks(app) == [("line", "smoothed"), ("rule", None)]  # no faint raw copy when not smoothing
    raw = vega_charts(app)[0].data(0)
    assert np.allclose(raw["smoothed"], raw["value"])
    # The hover rule's tooltip names every run, with its value at the hovered step.
    rule = vega_charts(app)[0].layers[1]
    assert [tip.get("title") for tip in rule["encoding"]["tooltip"]] == ["step", "digits-ec-off", "digits-ec-on"]


def test_energy_is_drawn_for_both_runs_and_log_scale_applies():
    app = open_page("compare")
    app.selectbox(key="curve_quantity").set_value("energy").run()
    app.toggle(key="curve_log").set_value(True).run()
    assert_clean(app)
    chart = vega_charts(app)[0]
    # The baseline logs the energy without training on it, so both curves are there to compare.
    assert set(chart.data(1)["series"]) == {"digits-ec-off", "digits-ec-on"}
    assert chart.layers[1]["encoding"]["y"]["scale"]["type"] == "log"
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
    every_value = vega_charts(app)[0].data(1)
    app.toggle(key="curve_log").set_value(True).run()
    assert_clean(app)
    shown = vega_charts(app)[0].data(1)
    assert (shown["value"] > 0).all() and (shown["smoothed"] > 0).all()
    assert len(shown) == int(((every_value["value"] > 0) & (every_value["smoothed"] > 0)).sum())
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
    assert [chart.title for chart in vega_charts(app)[:2]] == ["binomial loss", "triplet loss"]
    assert [set(chart.data(1)["series"]) for chart in vega_charts(app)[:2]] == [{"digits-ec-off"}, {"digits-ec-on"}]


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
    assert "test classes — not for model selection" in vega_charts(app)[1].title
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
