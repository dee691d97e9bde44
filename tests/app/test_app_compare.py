"""The Compare page: default pair, metrics table, curves and their controls, unusable and missing runs."""

from __future__ import annotations

import json

from apptest_support import assert_clean, open_page, plotly_specs, run_key


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
    assert len(plotly_specs(app)) == 4  # curves, recall over training, one distance histogram per run


def test_changing_the_runs_changes_the_table(shipped_runs):
    app = open_page("compare")
    app.multiselect(key="runs_compare").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert metrics_columns(app) == ["digits-ec-on"]
    app.multiselect(key="runs_compare").set_value([]).run()
    assert_clean(app)
    assert any("Choose at least one run" in info.value for info in app.info)


def curve_traces(app) -> list[dict]:
    return json.loads(plotly_specs(app)[0])["data"]


def test_smoothing_changes_the_plotted_curve():
    app = open_page("compare")
    smoothed = [trace["y"] for trace in curve_traces(app) if trace.get("showlegend") is not False]
    app.slider(key="curve_smoothing").set_value(0.0).run()
    assert_clean(app)
    raw = [trace["y"] for trace in curve_traces(app)]
    assert len(raw) == 2  # one line per run, no faint raw copy when not smoothing
    assert raw != smoothed


def test_energy_is_drawn_for_both_runs_and_log_scale_applies():
    app = open_page("compare")
    app.selectbox(key="curve_quantity").set_value("energy").run()
    app.toggle(key="curve_log").set_value(True).run()
    assert_clean(app)
    spec = json.loads(plotly_specs(app)[0])
    # The baseline logs the energy without training on it, so both curves are there to compare.
    assert {trace.get("name") for trace in spec["data"] if trace.get("name")} == {"digits-ec-off", "digits-ec-on"}
    assert spec["layout"]["yaxis"]["type"] == "log"
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
