"""The Compare page (default): final metrics, training curves, evaluations over training, pair-distance histograms.

Everything shown comes from the run folders (metrics.json, history.jsonl) or
from ``ecaml.retrieval`` / ``ecaml.metrics``; this page only tabulates and plots.
The first screen holds the tables and the training curves; the distance
histograms (which embed every unseen image the first time) are drawn only when
their expander is opened, so the page paints quickly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, embedding_jobs, errors, layout, locations, run_catalog, run_picker

DISTANCE_BINS = np.linspace(0.0, 2.0, 51)  # cosine distance 1 - cos lies in [0, 2]
MAX_PAIRS = 20000
DISTANCES_KEY = "distances_open"


def render() -> None:
    st.title("Compare runs")
    st.caption(
        "Train on seen classes, test on unseen ones: does the Energy Confusion term make the embedding "
        "generalise better? Pick runs (by default the shipped pair, EC off and EC on) and compare them."
    )
    chosen = run_picker.choose_runs("compare")
    if not chosen:
        return
    if len({entry.run.config.dataset for entry in chosen}) > 1:
        st.warning("These runs use different datasets, so their numbers are not comparable.")
    show_metrics(chosen)
    show_training_curves(chosen)
    show_evaluations(chosen)
    show_distance_histograms(chosen)


def series(chosen: list[run_catalog.RunEntry], records_of) -> list[charts.Series]:
    return [charts.Series(e.name, layout.colour_of(i), records_of(e.run)) for i, e in enumerate(chosen)]


# ----------------------------------------------------------------------------- final metrics


def final_metrics(run) -> dict[str, float]:
    """metrics.json, or the last unseen evaluation of a run stopped before its final one."""
    if run.metrics:
        return run.metrics
    evaluations = run.eval_records("unseen")
    return {k: v for k, v in evaluations[-1].items() if k in charts.METRIC_NAMES} if evaluations else {}


def delta_column(name: str) -> str:
    return f"Δ {name}"


def metrics_table(chosen: list[run_catalog.RunEntry]) -> pd.DataFrame:
    """Rows: metrics in percent; columns: the runs, each later one followed by its difference from the first."""
    table = pd.DataFrame({entry.name: final_metrics(entry.run) for entry in chosen}).mul(100)
    known = [key for key in charts.METRIC_NAMES if key in table.index]
    table = table.reindex(known + [key for key in table.index if key not in charts.METRIC_NAMES])
    reference = chosen[0].name
    columns = [reference]
    for entry in chosen[1:]:
        if entry.name in table:
            table[delta_column(entry.name)] = table[entry.name] - table[reference]
            columns += [entry.name, delta_column(entry.name)]
    table = table[[column for column in columns if column in table]]
    table.index = [charts.metric_name(key) for key in table.index]
    return table


def metrics_columns(chosen: list[run_catalog.RunEntry]) -> dict:
    """Each Δ column is headed by a narrow "Δ" (its run is the column on its left), with a tooltip in full."""
    reference = chosen[0].name
    return {
        delta_column(entry.name): st.column_config.Column(
            "Δ", width="small", help=f"Points gained or lost by {entry.name} against {reference}."
        )
        for entry in chosen[1:]
    }


def delta_style(value: float) -> str:
    """Green for a gain, red for a loss; differences under 0.05 points are left plain."""
    if pd.isna(value) or abs(value) < 0.05:
        return ""
    if value > 0:
        return "color: #0a7d4f; background-color: rgba(0,158,115,0.14); font-weight: 600"
    return "color: #b03a2e; background-color: rgba(213,94,0,0.14); font-weight: 600"


def settings_table(chosen: list[run_catalog.RunEntry]) -> pd.DataFrame:
    """One row per run (so more runs make it longer, never wider), short columns."""
    rows = {}
    for entry in chosen:
        config = entry.run.config
        rows[entry.name] = {
            "dataset": config.dataset,
            "backbone": f"{config.backbone}, {config.embedding_dim}-d",
            "loss": config.loss,
            "Energy Confusion": run_catalog.ec_summary(config.ec_weight),
            "evaluated": f"every {config.eval_every} epochs" if config.eval_every else "at the end",
            "steps": f"{entry.run.step:,}",
            "seed": str(config.seed),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def show_metrics(chosen: list[run_catalog.RunEntry]) -> None:
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
    # Full width, with the settings under it: run names are long, and a column cut off at the right edge hid the Δs.
    st.dataframe(styled, key="metrics_table", column_config=metrics_columns(chosen), width="content")
    st.caption(
        "Percent, measured on classes held out of training. Each **Δ** column: the points the run on its left gained "
        f"(green) or lost (red) against **{chosen[0].name}**, the first run picked."
    )
    with st.expander("How each run was trained: dataset, backbone, loss, Energy Confusion, evaluations, steps, seed"):
        st.dataframe(settings_table(chosen), key="settings_table")


# ----------------------------------------------------------------------------- training curves


def show_training_curves(chosen: list[run_catalog.RunEntry]) -> None:
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
    st.altair_chart(charts.curve_chart(lines, quantity, smoothing, log_scale), key="curve_chart", width="stretch")
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


def evaluated_metrics(chosen: list[run_catalog.RunEntry]) -> list[str]:
    found = (key for e in chosen for record in e.run.eval_records("unseen") for key in record)
    return [key for key in dict.fromkeys(found) if key in charts.METRIC_NAMES]


def show_evaluations(chosen: list[run_catalog.RunEntry]) -> None:
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
    st.altair_chart(charts.evaluation_chart(lines, metric), key="evaluation_chart", width="stretch")
    if any(len(line.records) > 1 for line in lines):
        st.caption(
            "Each point evaluates the embedding on classes never used for training; the last is the final metric."
        )
    gaps = evaluation_gaps(chosen, split)
    if gaps:
        st.caption(f"Only the final evaluation was recorded for {'; '.join(gaps)}.")


def epochs_trained(run) -> int:
    """Epochs the run's step records reach into (a stopped run's last, partial epoch counts)."""
    epochs = [record.get("epoch") for record in run.step_records()]
    return max((epoch for epoch in epochs if isinstance(epoch, int)), default=-1) + 1


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def evaluation_gaps(chosen: list[run_catalog.RunEntry], split: str) -> list[str]:
    """Why each run with at most one evaluation on ``split`` has no more, from its config and history."""
    without_interval, phrases = [], []
    for entry in chosen:
        records = entry.run.eval_records(split)
        if len(records) > 1:
            continue
        every, epochs = entry.run.config.eval_every, epochs_trained(entry.run)
        if not records:
            phrases.append(f"**{entry.name}**: none at all on these classes")
        elif every == 0:
            without_interval.append(f"**{entry.name}**")
        elif epochs <= every:
            comparison = "shorter than" if epochs < every else "as long as"
            phrases.append(
                f"**{entry.name}**: it trained for {plural(epochs, 'epoch')}, {comparison} its evaluation interval "
                f"of {plural(every, 'epoch')}"
            )
        else:
            phrases.append(f"**{entry.name}**: its history holds no evaluation before the final one")
    if without_interval:
        subject = "it was" if len(without_interval) == 1 else "they were"
        phrases.insert(0, f"{joined(without_interval)}: {subject} trained with --eval-every 0")
    return phrases


def joined(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# ----------------------------------------------------------------------------- pair distances


@st.cache_data(max_entries=32, show_spinner=False)
def distance_histograms(path: str, fingerprint: tuple, _run) -> dict:
    """Density histograms of same-class and different-class cosine distances on one run's unseen images."""
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title, controls and tables should paint before it.
    from ecaml.metrics import pair_distance_samples
    from ecaml.retrieval import cached_embeddings

    embeddings = cached_embeddings(_run, "unseen", cache_dir=locations.cache_dir())
    positive, negative = pair_distance_samples(embeddings.vectors, embeddings.labels, max_pairs=MAX_PAIRS, seed=0)
    return {
        "positive": np.histogram(positive, bins=DISTANCE_BINS, density=True)[0],
        "negative": np.histogram(negative, bins=DISTANCE_BINS, density=True)[0],
        "medians": (float(np.median(positive)), float(np.median(negative))),
    }


def show_distance_histograms(chosen: list[run_catalog.RunEntry]) -> None:
    st.subheader("Distances between unseen images")
    # Drawn only once opened (the expander reruns the page when toggled): the first paint stays light, and the
    # first time these embed every unseen image.
    expander = st.expander(
        "Same-class against different-class distances, one histogram per run",
        key=DISTANCES_KEY,
        on_change="rerun",
        icon=":material/bar_chart:",
    )
    if not expander.open:
        st.caption("Open to see how far apart the embedding puts images of one class and of different classes.")
        return
    with expander:
        chosen = embedding_jobs.ensure_embedded(chosen, "unseen")  # a background job with progress, never inline
        with st.spinner("Reading the unseen images' embeddings…"):
            for panel, entry in zip(layout.panels(len(chosen)), chosen):
                histograms = errors.attempt(
                    f"embed the unseen images of {entry.name}",
                    distance_histograms,
                    entry.key,
                    run_catalog.run_fingerprint(entry.path),
                    entry.run,
                )
                if histograms is not None:
                    chart = charts.distance_chart(
                        DISTANCE_BINS, histograms["positive"], histograms["negative"], histograms["medians"], entry.name
                    )
                    panel.altair_chart(chart, key=f"distances_{entry.key}", width="stretch")
        st.caption(
            f"Cosine distances of up to {MAX_PAIRS:,} random pairs of unseen-class images: two images of the same "
            "class (green) and of different classes (orange); dotted lines mark the medians. The less the two "
            "overlap, the better nearest-neighbour retrieval works on classes the network never saw."
        )


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
