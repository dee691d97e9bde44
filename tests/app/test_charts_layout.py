"""The Compare charts' layout (issue 22's walk-through): a run evaluated once gets an axis from the start of training,
and a titled chart's legend sits under its axis title on charts of any height."""

from __future__ import annotations

import pytest

from app import charts


def one_evaluation(step: int) -> charts.Series:
    return charts.Series("run", "#333333", [{"kind": "eval", "step": step, "recall@1": 0.5}])


@pytest.mark.parametrize("step", [1, 699, 100_000])
def test_a_single_final_evaluation_is_drawn_on_an_axis_from_step_zero(step):
    figure = charts.evaluation_chart([one_evaluation(step)], "recall@1", title="Recall@1 on unseen")
    low, high = figure.layout.xaxis.range
    assert low == 0 and step < high <= step * 1.05  # not a step or two around the point ("698, 699, 699, 700")


def test_a_run_without_points_leaves_the_axis_alone():
    figure = charts.evaluation_chart([charts.Series("empty", "#333333", [])], "recall@1", title="Recall@1")
    assert figure.layout.xaxis.range is None


@pytest.mark.parametrize("height", [300, 340, 600])
def test_the_bottom_legend_sits_the_same_pixels_under_the_plot_at_any_height(height):
    figure = charts.evaluation_chart([one_evaluation(10), one_evaluation(20)], "recall@1", height=height,
                                     title="Recall@1")
    margin = figure.layout.margin
    plot_pixels = height - margin.t - margin.b
    assert -figure.layout.legend.y * plot_pixels == pytest.approx(charts.LEGEND_GAP_PX)
    assert charts.LEGEND_GAP_PX >= 60  # past tick labels and the axis title
