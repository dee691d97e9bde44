"""Plotly figures the pages share: training curves, evaluations over training, distance histograms, projections.

Figures take plain records and arrays (what the library wrote or returned) and
only draw them; the smoothing here is the display EMA of TensorBoard, not a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

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
CLASS_COLOURS = plotly.colors.qualitative.D3 + plotly.colors.qualitative.Dark24 + plotly.colors.qualitative.Light24
MAX_CLASSES_IN_LEGEND = 15
TOP_LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}


@dataclass
class Series:
    """One run's line on a chart."""

    name: str
    colour: str
    records: list[dict]


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key, key)


def smoothed(values: pd.Series, smoothing: float) -> pd.Series:
    """Debiased exponential moving average, as TensorBoard draws it (smoothing 0: the raw values)."""
    return values.ewm(alpha=1.0 - smoothing).mean()


def has_values(records: list[dict], quantity: str) -> bool:
    return any(record.get(quantity) is not None for record in records)


def _add_line(figure: go.Figure, frame: pd.DataFrame, column: str, name: str, colour: str, smoothing: float) -> None:
    """One smoothed line in bold, with the raw values faint behind it when smoothing."""
    if smoothing > 0:
        figure.add_scatter(
            x=frame["step"],
            y=frame[column],
            mode="lines",
            line={"color": colour, "width": 1},
            opacity=0.25,
            legendgroup=name,
            showlegend=False,
            hoverinfo="skip",
        )
    figure.add_scatter(
        x=frame["step"],
        y=smoothed(frame[column], smoothing),
        mode="lines",
        name=name,
        line={"color": colour, "width": 2.5},
        legendgroup=name,
    )


def _curve_layout(figure: go.Figure, height: int, yaxis_title: str | None) -> go.Figure:
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis_title="training step",
        yaxis_title=yaxis_title,
        legend=TOP_LEGEND,
        hovermode="x unified",
        showlegend=True,
    )
    return figure


def curve_figure(
    lines: list[Series], quantity: str, smoothing: float = 0.0, log_scale: bool = False, height: int = 380
) -> go.Figure:
    """``quantity`` of each run's step records against the step, one line per run."""
    figure = go.Figure()
    for line in lines:
        frame = pd.DataFrame(line.records)
        if quantity in frame:
            _add_line(figure, frame.dropna(subset=[quantity]), quantity, line.name, line.colour, smoothing)
    figure.update_yaxes(type="log" if log_scale else "linear")
    return _curve_layout(figure, height, CURVES.get(quantity, quantity))


def quantities_figure(records: list[dict], quantities: list[str], colours: list[str], smoothing: float, height: int):
    """Several quantities of one run's step records against the step, one line per quantity."""
    figure = go.Figure()
    frame = pd.DataFrame(records)
    for quantity, colour in zip(quantities, colours):
        if quantity in frame:
            _add_line(figure, frame.dropna(subset=[quantity]), quantity, CURVES[quantity], colour, smoothing)
    return _curve_layout(figure, height, None)


def evaluation_figure(lines: list[Series], metric: str, height: int = 340) -> go.Figure:
    """``metric`` (in percent) of each run's evaluation records against the step."""
    figure = go.Figure()
    for line in lines:
        records = [record for record in line.records if metric in record]
        if records:
            figure.add_scatter(
                x=[r["step"] for r in records],
                y=[100 * r[metric] for r in records],
                mode="lines+markers",
                name=line.name,
                line={"color": line.colour, "width": 2.5},
                marker={"size": 8},
            )
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis_title="training step",
        yaxis_title=f"{metric_name(metric)} (%)",
        legend=TOP_LEGEND,
        showlegend=True,
    )
    return figure


def distance_figure(
    bins: np.ndarray, positive: np.ndarray, negative: np.ndarray, medians: tuple[float, float], title: str
) -> go.Figure:
    """Overlaid density histograms (already binned) of same-class and different-class pair distances."""
    centres = (bins[:-1] + bins[1:]) / 2
    figure = go.Figure()
    kinds = ((positive, medians[0], "#009E73", "same class"), (negative, medians[1], "#D55E00", "different classes"))
    for density, median, colour, name in kinds:
        figure.add_bar(x=centres, y=density, name=name, marker_color=colour, opacity=0.6, width=bins[1] - bins[0])
        figure.add_vline(x=median, line={"color": colour, "dash": "dot", "width": 1.5})
    figure.update_layout(
        title={"text": title, "font": {"size": 15}},
        barmode="overlay",
        bargap=0,
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"title": "cosine distance 1 − cos", "range": [bins[0], bins[-1]]},
        yaxis_title="density",
        # Inside the top right corner, where distances near 2 (opposite directions) leave the plot empty.
        legend={"x": 0.99, "y": 0.98, "xanchor": "right", "yanchor": "top", "bgcolor": "rgba(255,255,255,0.7)"},
    )
    return figure


def class_colour(position: int) -> str:
    return CLASS_COLOURS[position % len(CLASS_COLOURS)]


def projection_figure(
    coords: np.ndarray, labels: np.ndarray, indices: np.ndarray, class_names: list[str], title: str
) -> go.Figure:
    """2-D projection coloured by class; each point carries its dataset index (customdata) for hover and selection."""
    figure = go.Figure()
    classes = sorted({int(label) for label in labels})
    for position, label in enumerate(classes):
        rows = labels == label
        name = class_names[label]
        figure.add_scatter(
            x=coords[rows, 0],
            y=coords[rows, 1],
            mode="markers",
            name=name,
            marker={"size": 6, "color": class_colour(position), "opacity": 0.8, "line": {"width": 0}},
            customdata=indices[rows],
            hovertemplate=f"<b>class {name}</b><br>image #%{{customdata}}<extra></extra>",
        )
    figure.update_layout(
        title={"text": title, "font": {"size": 15}},
        height=460,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=len(classes) <= MAX_CLASSES_IN_LEGEND,
        legend={"title": "class", "itemsizing": "constant"},
        dragmode="lasso",
    )
    # Projection axes have no units: only the relative positions mean anything.
    figure.update_xaxes(showticklabels=False, showgrid=False, title=None, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, title=None, zeroline=False, scaleanchor="x", scaleratio=1)
    return figure
