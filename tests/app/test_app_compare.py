"""The Compare page: default pair, metrics table, curves and their controls, unusable and missing runs."""

from __future__ import annotations

import json

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
