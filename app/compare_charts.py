"""The Compare page's charts over training: the runs as coloured series, and each split's metrics at every
evaluated step (with what is missing); the curves and these share the relative-progress switch.
"""

from __future__ import annotations

import streamlit as st

from app import charts, layout, run_catalog

RELATIVE_KEY = "curve_relative"  # both charts over training: steps, or each run's fraction of its own length
# The evaluation splits a history may hold, best for reading a curve first; any other name is shown as it is.
SPLIT_LABELS = {
    "val": "validation classes (held-out seen classes: for model selection)",
    "seen_test": "seen classes, held-out images",
    "unseen": "test classes — not for model selection",
    "train": "training images",
}


def series(chosen: list[run_catalog.RunEntry], records_of) -> list[charts.Series]:
    return [charts.Series(e.name, layout.colour_of(i), records_of(e.run), run_length(e.run))
            for i, e in enumerate(chosen)]


def run_length(run) -> int:
    """The last step a run reached: its history can outrun its saved weights (killed between checkpoints, or still
    training), and a progress axis must end at the run's last record, not past it."""
    recorded = (record.get("step") for record in run.history)
    return max([run.step, *(step for step in recorded if isinstance(step, int))])


def runs_signature(entries: list[run_catalog.RunEntry]) -> tuple:
    """What a chart of these runs depends on: each run's folder and the stamps of its files."""
    return tuple((entry.key, run_catalog.run_fingerprint(entry.path)) for entry in entries)


def evaluation_splits(chosen: list[run_catalog.RunEntry]) -> list[str]:
    """The splits any chosen run evaluated on: the known ones in SPLIT_LABELS order (validation first), then others."""
    found = {record.get("split") for e in chosen for record in e.run.history if record.get("kind") == "eval"}
    found = {split for split in found if isinstance(split, str)}
    return [split for split in SPLIT_LABELS if split in found] + sorted(found - set(SPLIT_LABELS))


SPLIT_RUNS_KEY = "evaluation_split_runs"  # the runs the evaluation split was chosen for


def split_label(split: str) -> str:
    return f"{split}: {SPLIT_LABELS[split]}" if split in SPLIT_LABELS else split


def evaluated_metrics(chosen: list[run_catalog.RunEntry], split: str) -> list[str]:
    found = (key for e in chosen for record in e.run.eval_records(split) for key in record)
    return [key for key in dict.fromkeys(found) if key in charts.METRIC_NAMES]


def show_evaluations(chosen: list[run_catalog.RunEntry]) -> None:
    st.subheader("Retrieval quality during training")
    splits = [split for split in evaluation_splits(chosen) if evaluated_metrics(chosen, split)]
    if not splits:
        st.info("These runs recorded no evaluations.")
        return
    # Validation classes first: a curve to choose epochs or λ by must not be read on the test classes; and a split
    # with a history (more than the final point) before one without. Chosen again whenever other runs are chosen
    # (a split picked for the last set of runs says nothing about these); kept while the runs stay the same.
    runs_now = [entry.name for entry in chosen]
    if st.session_state.get(SPLIT_RUNS_KEY) != runs_now or st.session_state.get("evaluation_split") not in splits:
        st.session_state["evaluation_split"] = opening_split(chosen, splits)
        st.session_state[SPLIT_RUNS_KEY] = runs_now
    controls = st.columns([2, 5])
    split = controls[1].radio(
        "Classes",
        splits,
        format_func=split_label,
        key="evaluation_split",
        help="val: seen classes held out for tuning (when the run has them); unseen: the test classes, whose numbers "
        "report a result but must never pick a setting.",
    )
    metrics = evaluated_metrics(chosen, split)
    metric = controls[0].selectbox("Metric", metrics, format_func=charts.metric_name, key="evaluation_metric")
    relative = bool(st.session_state.get(RELATIVE_KEY))
    st.plotly_chart(evaluation_figure(chosen, split, metric, relative), key="evaluation_chart", width="stretch")
    if split == "unseen":
        st.caption(
            "**Test classes — not for model selection.** These points show how the embedding generalises as it "
            "trains; picking an epoch or λ by them would report an optimistic number. Use validation classes to "
            "choose."
        )
    elif split == "val":
        st.caption("Validation classes: seen classes held out of training, the fair place to choose epochs and λ.")
    gaps = evaluation_gaps(chosen, split)
    if gaps:
        st.caption(f"Only the final evaluation was recorded for {'; '.join(gaps)}.")


def evaluation_figure(chosen: list[run_catalog.RunEntry], split: str, metric: str, relative: bool = False):
    """``metric`` on ``split`` over training, one line per run, built once per set of runs and options."""
    lines = series(chosen, lambda run: run.eval_records(split))
    title = f"{charts.metric_name(metric)} on {split_label(split)}"
    signature = ("compare evaluations", runs_signature(chosen), split, metric, relative)
    return charts.cached_figure(signature, lambda: charts.evaluation_chart(lines, metric, title=title,
                                                                           relative=relative))


def opening_split(chosen: list[run_catalog.RunEntry], splits: list[str]) -> str:
    """Validation when some run has a history there (the place to choose by), else the split where the most runs
    evaluated more than once (the first, in SPLIT_LABELS order, among equals), else the first."""
    histories = {split: sum(len(e.run.eval_records(split)) > 1 for e in chosen) for split in splits}
    if histories.get("val"):
        return "val"
    return max(splits, key=lambda split: histories[split])  # max keeps the first of equals


def epochs_trained(run) -> int:
    """Epochs the run's step records reach into (a stopped run's last, partial epoch counts)."""
    epochs = [record.get("epoch") for record in run.step_records()]
    return max((epoch for epoch in epochs if isinstance(epoch, int)), default=-1) + 1


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
                f"**{entry.name}**: it trained for {layout.plural(epochs, 'epoch')}, {comparison} its evaluation "
                f"interval of {layout.plural(every, 'epoch')}"
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
