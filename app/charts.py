"""Charts the pages share, in Plotly: training curves, evaluations over training, distance histograms.

Charts take plain records and arrays (what the library wrote or returned) and only draw them; the smoothing here
is the display EMA of TensorBoard, not a statistic. A long history is thinned before drawing (``app.thinning``):
each line keeps at most ``MAX_DRAWN_POINTS`` points, with the min/max band of the steps pooled into each, and
every evaluation is drawn. ``cached_figure`` builds a figure once for every session that shows the same runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
import streamlit as st

from app.thinning import thin

CURVES = {
    "metric_loss": "Metric loss",
    "total_loss": "Total loss (metric + λ·log E + R(W))",
    "energy": "Energy E",
    "log_energy": "log E",
    "row_norm": "Row-norm penalty R(W)",
}
EC_ONLY_CURVES = ("energy", "log_energy", "row_norm")
METRIC_NAMES = {
    "recall@1": "Recall@1",
    "recall@2": "Recall@2",
    "recall@4": "Recall@4",
    "recall@8": "Recall@8",
    "nmi": "NMI",
    "map@r": "MAP@R",
    "r_precision": "R-Precision",
}
SAME_CLASS, DIFFERENT_CLASSES = ("same class", "#009E73"), ("different classes", "#D55E00")
STEP_TITLE, PROGRESS_TITLE = "training step", "progress (fraction of the run's steps)"
# The legend above the plot, wrapping to as many rows as the runs need: every run is named, none is cut.
TOP_LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0, "title": None}
# A chart with a title keeps its legend under the plot: above it, a legend of several runs ran into the title.
BOTTOM_LEGEND = {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0, "title": None}
MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
LEGEND_GAP_PX = 64  # tick labels (about 20 px) and the axis title (about 20 px) under the plot, and a gap


@dataclass
class Series:
    """One run's line on a chart; ``length``: the run's last step, for a progress axis (default: its last record;
    never shorter than it, so that no line runs past 100 %)."""

    name: str
    colour: str
    records: list[dict]
    length: int | None = None


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key, key)


def smoothed(values: pd.Series, smoothing: float) -> pd.Series:
    """Debiased exponential moving average, as TensorBoard draws it (smoothing 0: the raw values)."""
    return values.ewm(alpha=1.0 - smoothing).mean()


def has_values(records: list[dict], quantity: str) -> bool:
    return any(record.get(quantity) is not None for record in records)


@st.cache_data(max_entries=256, show_spinner=False)
def cached_figure(signature: tuple, _build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``_build`` makes, built once per ``signature`` (what it draws: chart kind, runs and their file
    stamps or record counts, options) for every session: a long history costs its thinning once, not per rerun."""
    return _build()


def _points(records: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and float values of the records that have both."""
    pairs = [(r["step"], r[column]) for r in records if r.get(column) is not None and r.get("step") is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, float), np.asarray(values, float)


def _x(steps: np.ndarray, line: Series, relative: bool) -> np.ndarray:
    if not relative:
        return steps
    last_recorded = float(steps.max()) if steps.size else 1.0
    return steps / max(line.length or 0, last_recorded, 1)


def _add_line(figure: go.Figure, line: Series, column: str, smoothing: float, log_scale: bool, relative: bool) -> None:
    """One bold smoothed line; behind it, its raw values faint, or (thinned) the min/max band of the pooled steps."""
    steps, values = _points(line.records, column)
    smooth = smoothed(pd.Series(values), smoothing).to_numpy() if values.size else values
    if log_scale:  # values <= 0 cannot show on a log axis
        keep = (values > 0) & (smooth > 0)
        steps, values, smooth = steps[keep], values[keep], smooth[keep]
    drawn, raw = thin(steps, smooth), thin(steps, values)
    x = _x(drawn.steps, line, relative)
    group = {"legendgroup": line.name, "showlegend": False, "hoverinfo": "skip"}
    if raw.pooled:
        figure.add_scatter(x=x, y=raw.low, mode="lines", line={"width": 0, "color": line.colour}, **group)
        figure.add_scatter(x=x, y=raw.high, mode="lines", line={"width": 0, "color": line.colour}, fill="tonexty",
                           opacity=0.25, **group)
    elif smoothing > 0:
        figure.add_scatter(x=x, y=raw.values, mode="lines", line={"width": 1, "color": line.colour}, opacity=0.25,
                           **group)
    figure.add_scatter(x=x, y=drawn.values, mode="lines", name=line.name, legendgroup=line.name,
                       line={"width": 2.5, "color": line.colour}, hovertemplate="%{y:.4g}")


def _add_legend_only(figure: go.Figure, name: str, colour: str) -> None:
    """A legend entry, greyed, for a run with nothing to draw here."""
    figure.add_scatter(x=[None], y=[None], mode="lines", name=name, line={"color": colour}, visible="legendonly")


def _laid_out(figure: go.Figure, height: int, y_title: str | None, relative: bool, title: str | None = None,
              log_scale: bool = False) -> go.Figure:
    top, bottom = (50, 90) if title else (30, MARGIN["b"])
    figure.update_layout(
        height=height,
        margin={**MARGIN, "t": top, "b": bottom},
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}} if title else None,
        legend=_below_axis_title(height - top - bottom) if title else TOP_LEGEND,
        hovermode="x unified",
        showlegend=True,
    )
    figure.update_xaxes(title=PROGRESS_TITLE if relative else STEP_TITLE, tickformat=".0%" if relative else ",d")
    figure.update_yaxes(title=y_title, type="log" if log_scale else "linear")
    return figure


def _below_axis_title(plot_pixels: int) -> dict:
    """The bottom legend placed a fixed number of pixels under the plot, past the tick labels and the axis title:
    a fixed fraction of the plot's height ran into "training step" on short charts."""
    return {**BOTTOM_LEGEND, "y": -LEGEND_GAP_PX / max(plot_pixels, 1)}


def curve_chart(lines: list[Series], quantity: str, smoothing: float = 0.0, log_scale: bool = False,
                height: int = 380, relative: bool = False, title: str | None = None) -> go.Figure:
    """``quantity`` of each run's step records against the step (or the fraction of its run), one line per run."""
    figure = go.Figure()
    for line in lines:
        if has_values(line.records, quantity):
            _add_line(figure, line, quantity, smoothing, log_scale, relative)
    return _laid_out(figure, height, CURVES.get(quantity, quantity), relative, title, log_scale)


def quantities_chart(records: list[dict], quantities: list[str], colours: list[str], smoothing: float,
                     height: int) -> go.Figure:
    """Several quantities of one run's step records against the step, one line per quantity."""
    figure = go.Figure()
    for quantity, colour in zip(quantities, colours):
        _add_line(figure, Series(CURVES[quantity], colour, records), quantity, smoothing, False, False)
    return _laid_out(figure, height, None, False)


def evaluation_chart(lines: list[Series], metric: str, height: int = 340, relative: bool = False,
                     title: str | None = None) -> go.Figure:
    """``metric`` (in percent) of each run's evaluation records against the step, a line with a marker at every
    evaluation (never thinned: evaluations are few, and each is a measurement)."""
    figure = go.Figure()
    for line in lines:
        steps, values = _points(line.records, metric)
        if not steps.size:  # named all the same: Plotly leaves a trace without points out of the legend
            _add_legend_only(figure, f"{line.name} (no evaluation on these classes)", line.colour)
            continue
        figure.add_scatter(x=_x(steps, line, relative), y=100 * values, mode="lines+markers", name=line.name,
                           line={"width": 2.5, "color": line.colour}, marker={"size": 8},
                           hovertemplate="%{y:.2f}%")
    figure = _laid_out(figure, height, f"{metric_name(metric)} (%)", relative, title)
    figure.update_yaxes(tickformat=".1f")
    # From the start of training: runs evaluated only at their end would otherwise get an axis of a step or two
    # around that point, ticked "698, 699, 699, 700".
    last = _largest_x(figure)
    if last > 0:
        figure.update_xaxes(range=[0, last * 1.04])
    return figure


def _largest_x(figure: go.Figure) -> float:
    """The largest x any trace draws (0 when none draws a point; legend-only traces hold None)."""
    xs = [x for trace in figure.data for x in (trace.x if trace.x is not None else ()) if x is not None]
    return float(max(xs, default=0.0))


def distance_chart(bins: np.ndarray, positive: np.ndarray, negative: np.ndarray, medians: tuple[float, float],
                   title: str, density_max: float | None = None) -> go.Figure:
    """Overlaid density histograms (already binned) of same-class and different-class pair distances, medians dotted.

    The x axis spans ``bins``; ``density_max`` fixes the top of the y axis, so that panels side by side share it.
    """
    figure = go.Figure()
    centres, widths = (bins[:-1] + bins[1:]) / 2, np.diff(bins)
    for (name, colour), density, median in ((SAME_CLASS, positive, medians[0]), (DIFFERENT_CLASSES, negative,
                                                                                  medians[1])):
        figure.add_bar(x=centres, y=np.asarray(density, float), width=widths, name=name, marker_color=colour,
                       opacity=0.6, hovertemplate=f"{name}<br>%{{x:.2f}}: density %{{y:.3f}}<extra></extra>")
        figure.add_vline(x=median, line={"dash": "dot", "width": 1.5, "color": colour})
    figure.update_layout(barmode="overlay", bargap=0, height=300, legend=TOP_LEGEND, margin={**MARGIN, "t": 60},
                         title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}})
    figure.update_xaxes(title="cosine distance 1 − cos", range=[float(bins[0]), float(bins[-1])])
    figure.update_yaxes(title="density", range=[0, density_max] if density_max else None)
    return figure



def frames_chart(frames: list[np.ndarray], labels: np.ndarray, titles: list[str], height: int = 380) -> go.Figure:
    """2-D frames side by side (one per run, axes hidden: only neighbourhoods matter), points coloured by class."""
    figure = make_subplots(rows=1, cols=len(frames), subplot_titles=titles, horizontal_spacing=0.04)
    palette = qualitative.Dark24
    colours = [palette[int(label) % len(palette)] for label in labels]
    for column, coords in enumerate(frames, start=1):
        figure.add_scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", showlegend=False,
                             marker={"size": 4, "color": colours, "opacity": 0.8}, customdata=labels,
                             hovertemplate="class %{customdata}<extra></extra>", row=1, col=column)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(height=height, margin={**MARGIN, "t": 40})
    figure.update_annotations(font_size=13)
    return figure
