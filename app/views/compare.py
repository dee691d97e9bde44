"""The Compare page (default): final metrics, training curves, evaluations over training, pair-distance histograms.

Everything shown comes from the run folders (metrics.json, history.jsonl) or
from ``ecaml.retrieval`` / ``ecaml.metrics``; this page only tabulates and plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, common

DISTANCE_BINS = np.linspace(0.0, 2.0, 51)  # cosine distance 1 - cos lies in [0, 2]
MAX_PAIRS = 20000


def render() -> None:
    st.title("Compare runs")
    st.caption(
        "Train on seen classes, test on unseen ones: does the Energy Confusion term make the embedding "
        "generalise better? Pick runs (by default the shipped pair, EC off and EC on) and compare them."
    )
    entries = common.scan_all_runs()
    common.require_runs(entries)
    chosen = common.pick_runs(entries, "compare")
    common.show_unusable(entries)
    if not chosen:
        st.info("Choose at least one run above.")
        return
    if len({entry.run.config.dataset for entry in chosen}) > 1:
        st.warning("These runs use different datasets, so their numbers are not comparable.")
    show_metrics(chosen)
    show_training_curves(chosen)
    show_evaluations(chosen)
    show_distance_histograms(chosen)


def series(chosen: list[common.RunEntry], records_of) -> list[charts.Series]:
    return [charts.Series(e.name, common.colour_of(i), records_of(e.run)) for i, e in enumerate(chosen)]


# ----------------------------------------------------------------------------- final metrics


def final_metrics(run) -> dict[str, float]:
    """metrics.json, or the last unseen evaluation of a run stopped before its final one."""
    if run.metrics:
        return run.metrics
    evaluations = run.eval_records("unseen")
    return {k: v for k, v in evaluations[-1].items() if k in charts.METRIC_NAMES} if evaluations else {}


def metrics_table(chosen: list[common.RunEntry]) -> pd.DataFrame:
    """Rows: metrics in percent; columns: the runs, then each later run's difference from the first."""
    table = pd.DataFrame({entry.name: final_metrics(entry.run) for entry in chosen}).mul(100)
    known = [key for key in charts.METRIC_NAMES if key in table.index]
    table = table.reindex(known + [key for key in table.index if key not in charts.METRIC_NAMES])
    reference = chosen[0].name
    for entry in chosen[1:]:
        table[f"Δ {entry.name}"] = table[entry.name] - table[reference]
    table.index = [charts.metric_name(key) for key in table.index]
    return table


def delta_style(value: float) -> str:
    """Green for a gain, red for a loss; differences under 0.05 points are left plain."""
    if pd.isna(value) or abs(value) < 0.05:
        return ""
    if value > 0:
        return "color: #0a7d4f; background-color: rgba(0,158,115,0.14); font-weight: 600"
    return "color: #b03a2e; background-color: rgba(213,94,0,0.14); font-weight: 600"


def settings_table(chosen: list[common.RunEntry]) -> pd.DataFrame:
    rows = {}
    for entry in chosen:
        config = entry.run.config
        rows[entry.name] = {
            "dataset": config.dataset,
            "backbone": f"{config.backbone}, {config.embedding_dim}-d",
            "loss": config.loss,
            "Energy Confusion": common.ec_summary(config.ec_weight),
            "steps": f"{entry.run.step:,}",
            "seed": str(config.seed),
        }
    return pd.DataFrame(rows)


def show_metrics(chosen: list[common.RunEntry]) -> None:
    st.subheader("Retrieval and clustering on unseen classes")
    table = metrics_table(chosen)
    if table.empty:
        st.info("None of these runs has final metrics yet.")
        return
    deltas = [column for column in table.columns if column.startswith("Δ ")]
    styled = (
        table.style.format("{:.1f}", na_rep="–")
        .format("{:+.1f}", subset=deltas, na_rep="–")
        .map(delta_style, subset=deltas)
    )
    # Two runs fit side by side with their settings; more runs need the full width for their columns.
    left, right = st.columns([3, 2], gap="large") if len(chosen) <= 2 else (st.container(), st.container())
    left.dataframe(styled, key="metrics_table")
    left.caption(
        "Percent, measured on classes held out of training. Δ columns: points gained (green) or lost (red) "
        f"against **{chosen[0].name}**, the first run picked."
    )
    right.dataframe(settings_table(chosen), key="settings_table")
    right.caption("How each run was trained.")


# ----------------------------------------------------------------------------- training curves


def show_training_curves(chosen: list[common.RunEntry]) -> None:
    st.subheader("Training curves")
    controls = st.columns([2, 2, 1], vertical_alignment="bottom")
    quantity = controls[0].selectbox(
        "Quantity", list(charts.CURVES), format_func=charts.CURVES.get, key="curve_quantity"
    )
    smoothing = controls[1].slider(
        "Smoothing",
        0.0,
        0.99,
        0.6,
        0.01,
        key="curve_smoothing",
        help="Exponential moving average of the per-step values; the raw values stay faint behind.",
    )
    log_scale = controls[2].toggle("Log scale", key="curve_log")
    lines = series(chosen, lambda run: run.step_records())
    st.plotly_chart(charts.curve_figure(lines, quantity, smoothing, log_scale), key="curve_chart")
    missing = [line.name for line in lines if not charts.has_values(line.records, quantity)]
    if missing and quantity in charts.EC_ONLY_CURVES:
        st.caption(f"Not drawn: {', '.join(missing)} (trained before baselines logged E, log E and R(W)).")
    elif missing:
        st.caption(f"No step records for {', '.join(missing)}.")
    if log_scale and quantity == "log_energy":
        st.caption("log E can be zero or negative; such values are not drawn on a log axis.")
    st.caption(
        "The metric loss trains the backbone and the embedding head; λ·log E and R(W) train the head only. "
        "With EC on, a falling log E means the head pulls different classes together, as the method intends; "
        "EC-off runs log the same energy without training on it, so the two can be compared directly."
    )


# ----------------------------------------------------------------------------- evaluations over training


def evaluated_metrics(chosen: list[common.RunEntry]) -> list[str]:
    found = (key for e in chosen for record in e.run.eval_records("unseen") for key in record)
    return [key for key in dict.fromkeys(found) if key in charts.METRIC_NAMES]


def show_evaluations(chosen: list[common.RunEntry]) -> None:
    st.subheader("Retrieval quality during training")
    metrics = evaluated_metrics(chosen)
    if not metrics:
        st.info("These runs recorded no evaluations.")
        return
    splits = ["unseen"] + (["val"] if any(e.run.eval_records("val") for e in chosen) else [])
    controls = st.columns([2, 2, 3])
    metric = controls[0].selectbox("Metric", metrics, format_func=charts.metric_name, key="evaluation_metric")
    split = controls[1].radio(
        "Classes",
        splits,
        horizontal=True,
        key="evaluation_split",
        help="unseen: the test classes; val: seen classes held out for tuning (when the run has them).",
    )
    lines = series(chosen, lambda run: run.eval_records(split))
    st.plotly_chart(charts.evaluation_figure(lines, metric), key="evaluation_chart")
    only_final = all(len(line.records) <= 1 for line in lines)
    st.caption(
        "Only the final evaluation was recorded (the runs were trained with --eval-every 0)."
        if only_final
        else "Each point evaluates the embedding on classes never used for training; the last is the final metric."
    )


# ----------------------------------------------------------------------------- pair distances


@st.cache_data(max_entries=32, show_spinner=False)
def distance_histograms(path: str, fingerprint: tuple, _run) -> dict:
    """Density histograms of same-class and different-class cosine distances on one run's unseen images."""
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title, controls and tables should paint before it.
    from ecaml.metrics import pair_distance_samples
    from ecaml.retrieval import cached_embeddings

    embeddings = cached_embeddings(_run, "unseen", cache_dir=common.cache_dir())
    positive, negative = pair_distance_samples(embeddings.vectors, embeddings.labels, max_pairs=MAX_PAIRS, seed=0)
    return {
        "positive": np.histogram(positive, bins=DISTANCE_BINS, density=True)[0],
        "negative": np.histogram(negative, bins=DISTANCE_BINS, density=True)[0],
        "medians": (float(np.median(positive)), float(np.median(negative))),
    }


def show_distance_histograms(chosen: list[common.RunEntry]) -> None:
    st.subheader("Distances between unseen images")
    with st.spinner("Embedding the unseen images (cached after the first time)…"):
        for panel, entry in zip(common.panels(len(chosen)), chosen):
            histograms = common.attempt(
                f"embed the unseen images of {entry.name}",
                distance_histograms,
                entry.key,
                common.run_fingerprint(entry.path),
                entry.run,
            )
            if histograms is not None:
                figure = charts.distance_figure(
                    DISTANCE_BINS, histograms["positive"], histograms["negative"], histograms["medians"], entry.name
                )
                panel.plotly_chart(figure, key=f"distances_{entry.key}")
    st.caption(
        f"Cosine distances of up to {MAX_PAIRS:,} random pairs of unseen-class images: two images of the same class "
        "(green) and of different classes (orange); dotted lines mark the medians. The less the two overlap, the "
        "better nearest-neighbour retrieval works on classes the network never saw."
    )


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
