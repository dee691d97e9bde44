"""Charts the pages share: training curves, evaluations over training, distance histograms (Vega-Lite, through
Altair), and 2-D projections (Plotly, for its lasso selection).

Charts take plain records and arrays (what the library wrote or returned) and
only draw them; the smoothing here is the display EMA of TensorBoard, not a statistic.
The Compare and Train pages use Vega-Lite only: Plotly's browser bundle (4.7 MB)
took about a second and a half to load and parse in a new tab, Vega-Lite's a
fraction of that, so those pages' first charts paint sooner.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
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
SAME_CLASS, DIFFERENT_CLASSES = ("same class", "#009E73"), ("different classes", "#D55E00")
# SVG rather than Streamlit's default canvas: crisp, and its text (legends, titles) is in the page.
SVG = {"embedOptions": {"renderer": "svg"}}
# At most three runs to a row: a longer one-row legend ran off the chart's right edge with many runs.
TOP_LEGEND = alt.Legend(
    orient="top", title=None, labelLimit=400, symbolStrokeWidth=3, symbolOpacity=1, columns=3, direction="horizontal"
)
STEP_AXIS = alt.X(
    "step:Q", title="training step", scale=alt.Scale(zero=False, nice=False), axis=alt.Axis(tickMinStep=1, format=",d")
)

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


def _line_frame(records: list[dict], column: str, name: str, smoothing: float, log_scale: bool) -> pd.DataFrame:
    """step, series, value (raw) and smoothed of one line; on a log axis, values <= 0 left out as they cannot show."""
    frame = pd.DataFrame(records)
    if column not in frame or "step" not in frame:
        return pd.DataFrame(columns=["step", "series", "value", "smoothed"])
    frame = frame.dropna(subset=[column])
    values = frame[column].astype(float).reset_index(drop=True)
    lines = pd.DataFrame(
        {"step": frame["step"].to_numpy(), "series": name, "value": values, "smoothed": smoothed(values, smoothing)}
    )
    return lines[(lines["value"] > 0) & (lines["smoothed"] > 0)] if log_scale else lines


def _lines_chart(
    frame: pd.DataFrame,
    colours: dict[str, str],
    smoothing: float,
    log_scale: bool,
    y_title: str | None,
    height: int,
) -> alt.LayerChart:
    """Bold smoothed lines (the raw values faint behind them when smoothing), and a rule at the hovered step whose
    tooltip gives every line's value there."""
    colour = alt.Color(
        "series:N", scale=alt.Scale(domain=list(colours), range=list(colours.values())), legend=TOP_LEGEND
    )
    y_scale = alt.Scale(type="log" if log_scale else "linear", zero=False)
    base = alt.Chart(frame).encode(x=STEP_AXIS, color=colour)
    layers = [base.mark_line(strokeWidth=2.5).encode(y=alt.Y("smoothed:Q", scale=y_scale, title=y_title))]
    if smoothing > 0:  # behind the smoothed lines (the legend draws its symbols opaque)
        raw = base.mark_line(strokeWidth=1, opacity=0.25).encode(y=alt.Y("value:Q", scale=y_scale, title=y_title))
        layers.insert(0, raw)
    layers.append(_hover_rule(frame, list(colours)))
    return alt.layer(*layers).properties(height=height, usermeta=SVG)


def _hover_rule(frame: pd.DataFrame, names: list[str]) -> alt.Chart:
    """An invisible rule per step that shows (with every line's value in its tooltip) when the pointer is nearest."""
    # One row per step, one column per line, under safe names: Vega reads dots in a field name as nesting.
    if frame.empty:
        return alt.Chart(pd.DataFrame({"step": []})).mark_rule().encode(x=STEP_AXIS)
    wide = frame.pivot_table(index="step", columns="series", values="smoothed", aggfunc="last")
    present = [name for name in names if name in wide.columns]
    wide = wide[present].set_axis([f"line{i}" for i in range(len(present))], axis=1).reset_index()
    hover = alt.selection_point(fields=["step"], nearest=True, on="pointerover", empty=False, clear="pointerout")
    tooltip = [alt.Tooltip("step:Q", title="step")] + [
        alt.Tooltip(f"line{i}:Q", title=name, format=".4g") for i, name in enumerate(present)
    ]
    return (
        alt.Chart(wide)
        .mark_rule(color="#888888", strokeWidth=1)
        .encode(x=STEP_AXIS, opacity=alt.condition(hover, alt.value(0.6), alt.value(0)), tooltip=tooltip)
        .add_params(hover)
    )


def curve_chart(
    lines: list[Series], quantity: str, smoothing: float = 0.0, log_scale: bool = False, height: int = 380
) -> alt.LayerChart:
    """``quantity`` of each run's step records against the step, one line per run."""
    frame = pd.concat(
        [_line_frame(line.records, quantity, line.name, smoothing, log_scale) for line in lines], ignore_index=True
    )
    colours = {line.name: line.colour for line in lines}
    return _lines_chart(frame, colours, smoothing, log_scale, CURVES.get(quantity, quantity), height)


def quantities_chart(
    records: list[dict], quantities: list[str], colours: list[str], smoothing: float, height: int
) -> alt.LayerChart:
    """Several quantities of one run's step records against the step, one line per quantity."""
    frame = pd.concat(
        [_line_frame(records, quantity, CURVES[quantity], smoothing, False) for quantity in quantities],
        ignore_index=True,
    )
    return _lines_chart(frame, {CURVES[q]: c for q, c in zip(quantities, colours)}, smoothing, False, None, height)


def evaluation_chart(lines: list[Series], metric: str, height: int = 340) -> alt.LayerChart:
    """``metric`` (in percent) of each run's evaluation records against the step, one line with markers per run."""
    rows = [
        {"step": record["step"], "series": line.name, "value": 100 * record[metric]}
        for line in lines
        for record in line.records
        if metric in record and "step" in record
    ]
    frame = pd.DataFrame(rows, columns=["step", "series", "value"])
    colours = {line.name: line.colour for line in lines}
    title = f"{metric_name(metric)} (%)"
    return (
        alt.Chart(frame)
        .mark_line(strokeWidth=2.5, point=alt.OverlayMarkDef(size=70, filled=True))
        .encode(
            x=STEP_AXIS,
            y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".1f")),
            color=alt.Color(
                "series:N", scale=alt.Scale(domain=list(colours), range=list(colours.values())), legend=TOP_LEGEND
            ),
            tooltip=[
                alt.Tooltip("series:N", title="run"),
                alt.Tooltip("step:Q", title="step"),
                alt.Tooltip("value:Q", title=title, format=".2f"),
            ],
        )
        .properties(height=height, usermeta=SVG)
    )


def distance_chart(
    bins: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    medians: tuple[float, float],
    title: str,
    density_max: float | None = None,
) -> alt.LayerChart:
    """Overlaid density histograms (already binned) of same-class and different-class pair distances, medians dotted.

    The x axis spans ``bins``; ``density_max`` fixes the top of the y axis, so that panels side by side share it.
    """
    kinds = ((SAME_CLASS, positive, medians[0]), (DIFFERENT_CLASSES, negative, medians[1]))
    bars = pd.concat(
        [
            pd.DataFrame({"kind": name, "left": bins[:-1], "right": bins[1:], "density": np.asarray(density, float)})
            for (name, _), density, _ in kinds
        ],
        ignore_index=True,
    )
    rules = pd.DataFrame({"kind": [name for (name, _), _, _ in kinds], "median": [median for _, _, median in kinds]})
    colour = alt.Color(
        "kind:N",
        scale=alt.Scale(domain=[name for (name, _), _, _ in kinds], range=[c for (_, c), _, _ in kinds]),
        legend=alt.Legend(orient="top", title=None),
    )
    x_scale = alt.Scale(domain=[float(bins[0]), float(bins[-1])], nice=False)
    histogram = (
        alt.Chart(bars)
        .mark_rect(opacity=0.6)
        .encode(
            x=alt.X("left:Q", title="cosine distance 1 − cos", scale=x_scale),
            x2="right:Q",
            y=alt.Y(
                "density:Q",
                title="density",
                scale=alt.Scale(domain=[0, density_max]) if density_max else alt.Undefined,
            ),
            y2=alt.datum(0),
            color=colour,
            tooltip=[
                alt.Tooltip("kind:N", title="pairs"),
                alt.Tooltip("left:Q", title="from", format=".2f"),
                alt.Tooltip("right:Q", title="to", format=".2f"),
                alt.Tooltip("density:Q", format=".3f"),
            ],
        )
    )
    median_rules = (
        alt.Chart(rules)
        .mark_rule(strokeDash=[3, 3], strokeWidth=1.5)
        .encode(x=alt.X("median:Q", scale=x_scale), color=colour, tooltip=[alt.Tooltip("median:Q", format=".3f")])
    )
    return alt.layer(histogram, median_rules).properties(
        title=alt.Title(title, anchor="start", fontSize=15), height=300, usermeta=SVG
    )


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
        # Zoom on drag: Streamlit then selects a clicked point; with dragmode lasso it ignores clicks. The lasso and
        # the box are one click away in the toolbar.
        dragmode="zoom",
    )
    # Projection axes have no units: only the relative positions mean anything.
    figure.update_xaxes(showticklabels=False, showgrid=False, title=None, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, title=None, zeroline=False, scaleanchor="x", scaleratio=1)
    return figure
