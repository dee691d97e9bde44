"""The Compare page (default): final metrics, training curves, evaluations over training, pair-distance histograms.

Everything shown comes from the run folders (metrics.json, history.jsonl) or
from ``ecaml.serve.retrieval`` / ``ecaml.eval.metrics``; this page only tabulates and plots.
The first screen holds the tables and the training curves; the distance
histograms (which embed every unseen image the first time) are drawn only when
their expander is opened, so the page paints quickly.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import (
    charts, compare_charts, comparisons, distance_histograms, guided_path, layout, locations, run_catalog, run_picker,
)

BASELINE_KEY = "compare_baseline"
FIRST_CURVE = "log_energy"  # the term's signature: it falls with EC on and rises with EC off


def render() -> None:
    st.title("Compare runs")
    st.caption(
        "Train on seen classes, test on unseen ones: does the Energy Confusion term make the embedding "
        "generalise better? Pick runs (by default the shipped pair, EC off and EC on) and compare them."
    )
    if not run_catalog.photos_available():
        st.caption(run_catalog.PHOTOS_HINT)
    guided_path.show_guided_path()
    chosen = run_picker.choose_runs("compare")
    if not chosen:
        return
    baseline = choose_baseline(chosen)
    show_metrics(chosen, baseline)
    show_seed_spread(chosen)
    show_training_curves(chosen)
    compare_charts.show_evaluations(chosen)
    distance_histograms.show_distance_histograms(chosen)


def choose_baseline(chosen: list[run_catalog.RunEntry]) -> run_catalog.RunEntry:
    """The run every Δ is measured against: chosen by the user, by default the first EC-off run picked."""
    by_key = {entry.key: entry for entry in chosen}
    if st.session_state.get(BASELINE_KEY) not in by_key:  # first visit, or its run was unpicked
        st.session_state[BASELINE_KEY] = comparisons.default_baseline(chosen).key
    if len(chosen) == 1:
        return chosen[0]
    key = st.selectbox(
        "Baseline (each Δ is measured against it)",
        list(by_key),
        format_func=lambda key: by_key[key].label,
        key=BASELINE_KEY,
        help="Only runs with the same data set, class split and base loss as the baseline get a Δ.",
    )
    return by_key[key]


# ----------------------------------------------------------------------------- final metrics


def final_metrics(run) -> dict[str, float]:
    """metrics.json, or the last unseen evaluation of a run stopped before its final one."""
    if run.metrics:
        return run.metrics
    evaluations = run.eval_records("unseen")
    return {k: v for k, v in evaluations[-1].items() if k in charts.METRIC_NAMES} if evaluations else {}


def delta_column(name: str) -> str:
    return f"Δ {name}"


def metrics_table(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> pd.DataFrame:
    """Rows: metrics in percent; columns: the baseline, then each other run followed by its Δ against the baseline
    when they may be compared (same data, split and base loss), else against the reference among runs like it."""
    ordered = [baseline] + [entry for entry in chosen if entry is not baseline]
    table = pd.DataFrame({entry.name: final_metrics(entry.run) for entry in ordered}).mul(100)
    known = [key for key in charts.METRIC_NAMES if key in table.index]
    table = table.reindex(known + [key for key in table.index if key not in charts.METRIC_NAMES])
    columns = [baseline.name]
    for entry in ordered[1:]:
        if entry.name not in table:
            continue
        columns.append(entry.name)
        reference = comparisons.delta_reference(entry, baseline, chosen)
        if reference is not None and reference.name in table:
            table[delta_column(entry.name)] = table[entry.name] - table[reference.name]
            columns.append(delta_column(entry.name))
    table = table[[column for column in columns if column in table]]
    table.index = [charts.metric_name(key) for key in table.index]
    return table


def metrics_columns(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> dict:
    """Each Δ column is headed by a narrow "Δ" (its run is the column on its left), with a tooltip in full."""
    references = delta_pairs(chosen, baseline)
    return {
        delta_column(entry.name): st.column_config.Column(
            "Δ", width="small", help=f"Points gained or lost by {entry.name} against {reference.name}."
        )
        for entry, reference in references
    }


def delta_pairs(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> list[tuple]:
    """(run, the run its Δ is measured against) for every chosen run that gets a Δ."""
    pairs = [(entry, comparisons.delta_reference(entry, baseline, chosen)) for entry in chosen]
    return [(entry, reference) for entry, reference in pairs if reference is not None]


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
            "Energy Confusion": run_catalog.setting_summary(entry.run),
            "evaluated": f"every {layout.plural(config.eval_every, 'epoch')}" if config.eval_every else "at the end",
            "steps": f"{entry.run.step:,}",
            "seed": str(config.seed),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def show_metrics(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> None:
    st.subheader("Retrieval and clustering on unseen classes")
    table = metrics_table(chosen, baseline)
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
    st.dataframe(styled, key="metrics_table", column_config=metrics_columns(chosen, baseline), width="content")
    caption = "Percent, measured on classes held out of training (test classes)."
    if deltas:
        caption += (
            " Each **Δ** column: the points the run on its left gained (green) or lost (red) against the baseline "
            f"**{baseline.name}**, or, for a run unlike it, against the EC-off run like it (the Δ's tooltip names it)."
        )
    seeds = {entry.run.config.seed for entry in chosen}
    if len(seeds) == 1:
        caption += f" Every run here is one seed (seed {seeds.pop()}): a Δ of a point or two can be chance."
    st.caption(caption)
    show_missing_deltas(chosen, baseline)
    show_length_notes(chosen, baseline)
    with st.expander("How each run was trained: dataset, backbone, loss, Energy Confusion, evaluations, steps, seed"):
        st.dataframe(settings_table(chosen), key="settings_table")


def show_length_notes(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> None:
    """Flag the Δs between a stopped run, or runs of different length: the difference is not only λ."""
    notes = comparisons.length_notes(delta_pairs(chosen, baseline))
    if notes:
        st.warning(f"Read these Δs with care: {'; '.join(notes)}. A longer or cut-short run differs by more than "
                   "its λ.", icon=":material/straighten:")


def show_missing_deltas(chosen: list[run_catalog.RunEntry], baseline: run_catalog.RunEntry) -> None:
    """Name each run shown without any Δ, and why: a Δ across data, splits or losses would mislead."""
    references = {reference.key for _, reference in delta_pairs(chosen, baseline)}
    reasons = [
        f"**{entry.name}** ({reason})"
        for entry in chosen
        if entry is not baseline and entry.key not in references
        and comparisons.delta_reference(entry, baseline, chosen) is None
        and (reason := comparisons.mismatch(entry, baseline))
    ]
    if reasons:
        st.warning(
            f"No Δ for {'; '.join(reasons)}: a difference means something only between runs of the same data set, "
            f"class split and base loss as the baseline **{baseline.name}**. Pick another baseline to compare them.",
            icon=":material/block:",
        )


def show_seed_spread(chosen: list[run_catalog.RunEntry]) -> None:
    """Runs of one setting trained with several seeds: each metric's mean and spread over those seeds."""
    repeated = comparisons.repeated_settings(chosen)
    if not repeated:
        show_study_seed_spread(chosen)
        return
    st.markdown("**Settings picked with several seeds** (mean ± standard deviation over the seeds, percent)")
    columns = {}
    for runs in repeated:
        config = runs[0].run.config
        name = f"{config.dataset} · {config.loss} · {run_catalog.ec_summary(config.ec_weight)} · {seeds_label(runs)}"
        cells = {}
        for key in charts.METRIC_NAMES:
            values = [100 * final_metrics(entry.run)[key] for entry in runs if key in final_metrics(entry.run)]
            if values:
                mean, spread = comparisons.mean_and_spread(values)
                cells[charts.metric_name(key)] = f"{mean:.1f} ± {spread:.1f}"
        columns[name] = cells
    st.dataframe(pd.DataFrame(columns), key="seed_spread_table")


def seeds_label(runs: list[run_catalog.RunEntry]) -> str:
    """"3 seeds", or, when runs repeat a seed, "2 runs of 1 seed (seed 0 repeated)": runs of one seed differ only by
    the machine's non-determinism, so their spread is not a spread over seeds."""
    seeds = [entry.run.config.seed for entry in runs]
    if len(set(seeds)) == len(seeds):
        return layout.plural(len(seeds), "seed")
    repeated = ", ".join(f"seed {seed}" for seed in sorted(set(seeds)) if seeds.count(seed) > 1)
    return f"{len(seeds)} runs of {layout.plural(len(set(seeds)), 'seed')} ({repeated} repeated)"


def show_study_seed_spread(chosen: list[run_catalog.RunEntry]) -> None:
    """Only seed 0 of each setting ships: the spread over the study's seeds, from results/study.json."""
    try:
        study = json.loads((locations.REPO_ROOT / "results" / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    spread = comparisons.study_seed_spread(chosen, study)
    if not spread:
        return
    st.markdown("**Over the study's seeds** (mean ± standard deviation, percent; `results/study.json`: only seed 0 "
                "of each setting ships)")
    columns = {
        f"{name} · {next(iter(metrics.values()))[2]} seeds": {
            charts.metric_name(key): f"{100 * mean:.1f} ± {100 * std:.1f}" for key, (mean, std, _) in metrics.items()
            if key in charts.METRIC_NAMES
        }
        for name, metrics in spread.items()
    }
    st.dataframe(pd.DataFrame(columns), key="seed_spread_table")


# ----------------------------------------------------------------------------- training curves


def show_training_curves(chosen: list[run_catalog.RunEntry]) -> None:
    st.subheader("Training curves")
    controls = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
    quantity = controls[0].selectbox(
        "Quantity",
        list(charts.CURVES),
        index=list(charts.CURVES).index(FIRST_CURVE),
        format_func=charts.CURVES.get,
        key="curve_quantity",
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
    relative = controls[3].toggle(
        "Relative progress", key=compare_charts.RELATIVE_KEY,
        help="Each run's steps as a fraction of its own length, so a short run is not squashed against a long one.",
    )
    colours = {entry.key: layout.colour_of(i) for i, entry in enumerate(chosen)}
    by_loss = loss_panels(chosen)
    if len(by_loss) > 1:
        st.caption(
            "One chart per base loss: losses have scales of their own (a binomial loss near 14, a triplet loss near "
            "0.1), so one axis would flatten some runs' curves."
        )
    for panel, (loss, entries) in zip(layout.panels(len(by_loss), per_row=2), by_loss.items()):
        title = f"{loss} loss" if len(by_loss) > 1 else None
        figure = curve_figure(entries, colours, quantity, smoothing, log_scale, title, relative)
        panel.plotly_chart(figure, key="curve_chart" if len(by_loss) == 1 else f"curve_chart_{loss}", width="stretch")
    lines = compare_charts.series(chosen, lambda run: run.step_records())
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


def loss_panels(chosen: list[run_catalog.RunEntry]) -> dict[str, list[run_catalog.RunEntry]]:
    """The chosen runs by base loss, losses in the order their first run was picked."""
    panels: dict[str, list[run_catalog.RunEntry]] = {}
    for entry in chosen:
        panels.setdefault(entry.run.config.loss, []).append(entry)
    return panels


def curve_figure(entries, colours: dict, quantity: str, smoothing: float, log_scale: bool, title: str | None,
                 relative: bool = False):
    """The training curves of ``entries``, built once per set of runs and options (``charts.cached_figure``)."""
    lines = [charts.Series(e.name, colours[e.key], e.run.step_records(), compare_charts.run_length(e.run))
             for e in entries]
    signature = ("compare curves", compare_charts.runs_signature(entries), tuple(colours.items()), quantity, smoothing,
                 log_scale, title, relative)
    return charts.cached_figure(signature, lambda: charts.curve_chart(lines, quantity, smoothing, log_scale,
                                                                      title=title, relative=relative))


# ----------------------------------------------------------------------------- evaluations over training


# ----------------------------------------------------------------------------- pair distances


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
