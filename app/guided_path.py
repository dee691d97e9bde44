"""The guided path on the first screen: what Energy Confusion does, what to look at on each page, and the
featured pair's multi-seed effect next to the one seed the table shows.

The numbers come from ``checkpoints/featured.json`` (which pair, and its "why": how it was chosen), the pair's
own ``metrics.json`` (the seed shown) and ``results/study.json`` (the same setting over several seeds, with its 95% interval); nothing is hard-coded, and
a missing or foreign file only leaves the numbers out. The guide can be hidden, for the rest of the session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app import layout, locations, run_catalog, run_picker
from ecaml.runs import read_config
from ecaml.store.run_files import RunError, read_metrics

HIDDEN_KEY = "guided_path_hidden"
STUDY_FILE = locations.REPO_ROOT / "results" / "study.json"
EFFECT_METRICS = {"recall@1": "Recall@1", "map@r": "MAP@R", "nmi": "NMI"}

WHAT_IT_DOES = (
    "A metric loss trains a network to put images of one class close together, and it tends to over-fit the "
    "classes it trains on. **Energy Confusion** adds an adversary on the embedding head that pulls *different* "
    "classes together, so the backbone has to learn features that also separate classes it has never seen."
)
STEPS = (
    ("The table below", "Recall@K, NMI and MAP@R on classes held out of training: does the EC-on run gain (green Δ)?",
     None),
    ("The log E curve below", ("with EC on, log E falls (the head pulls classes together); with EC off it rises as "
                               "the metric loss pushes them apart — the term's signature."), None),
    ("The map", "unseen classes in 2-D, one panel per run: are the clusters tighter and better apart with EC on?",
     "views/embeddings.py"),
    ("Retrieval", "one unseen query and its nearest neighbours in each run: where do the runs disagree?",
     "views/retrieval.py"),
)


@dataclass(frozen=True)
class Effect:
    """One metric's EC-on minus EC-off difference: over the study's seeds (mean, 95% interval) and in the shown pair."""

    metric: str
    study_mean: float
    study_interval: tuple[float, float]
    seeds: int
    shown: float | None  # the featured pair's own difference, None when a metrics file is missing


@dataclass(frozen=True)
class FeaturedPair:
    off: str
    on: str
    seed: int
    setting: str  # e.g. "digits, triplet, λ = 0.6, 4 epochs"
    effects: list[Effect]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def featured_pair() -> FeaturedPair | None:
    """The featured EC-off / EC-on pair and the study's multi-seed effect for its setting; None if either is missing."""
    names = run_catalog.featured_run_names()
    study = _read_json(STUDY_FILE)
    if len(names) < 2 or not isinstance(study, dict):
        return None
    try:
        configs = {name: read_config(locations.checkpoints_dir() / name) for name in names[:2]}
        metrics = {name: read_metrics(locations.checkpoints_dir() / name) or {} for name in names[:2]}
    except (RunError, OSError, ValueError):
        return None
    off = next((name for name in configs if configs[name].ec_weight == 0), None)
    on = next((name for name in configs if configs[name].ec_weight > 0), None)
    if off is None or on is None:
        return None
    config = configs[on]
    summary = (study.get("summary") or {}).get(f"{config.dataset}/{config.loss}")
    if not isinstance(summary, dict) or summary.get("ec_weight") != config.ec_weight:
        return None  # the study measured another setting: its numbers would not describe this pair
    if summary.get("epochs") not in (None, config.epochs):
        return None
    effects = []
    for metric in EFFECT_METRICS:
        difference = (summary.get("diff") or {}).get(metric) or {}
        if "mean" not in difference or len(difference.get("ci95") or []) != 2:
            continue
        shown = metrics[on].get(metric) - metrics[off].get(metric) if metric in metrics[on] and metric in metrics[off] \
            else None
        interval = tuple(difference["ci95"])
        effects.append(Effect(metric, difference["mean"], interval, int(difference.get("n", 0)), shown))
    setting = f"{config.dataset}, {config.loss}, λ = {config.ec_weight:g}, {layout.plural(config.epochs, 'epoch')}"
    return FeaturedPair(off, on, config.seed, setting, effects) if effects else None


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def effect_sentence(pair: FeaturedPair, table_shows_pair: bool = True) -> str:
    seeds = max(effect.seeds for effect in pair.effects)
    parts = [
        f"{EFFECT_METRICS[e.metric]} **{points(e.study_mean)}** points (95% interval {points(e.study_interval[0])} "
        f"to {points(e.study_interval[1])})" for e in pair.effects
    ]
    shown = [f"{EFFECT_METRICS[e.metric]} {points(e.shown)}" for e in pair.effects if e.shown is not None]
    sentence = f"**The effect over {seeds} seeds** ({pair.setting}, EC on minus EC off): {', '.join(parts)}."
    if not table_shows_pair:
        sentence += (f" The table below shows the runs you chose, not this pair: choose **{pair.off}** and "
                     f"**{pair.on}** to see its seed {pair.seed}.")
    elif shown:
        sentence += (
            f" The table below is **one seed** (seed {pair.seed}): {', '.join(shown)}. One seed can land above or "
            "below the mean; the interval says how far."
        )
    return sentence


def hide() -> None:
    st.session_state[HIDDEN_KEY] = True


def show() -> None:
    st.session_state[HIDDEN_KEY] = False


def show_guided_path() -> None:
    """The guide in a bordered box, or (once hidden) one small button that brings it back."""
    if st.session_state.get(HIDDEN_KEY):
        st.button("Show the guide: what to look at", key="guide_show", on_click=show, type="tertiary",
                  icon=":material/school:")
        return
    with st.container(border=True, key="guided_path"):
        heading, button = st.columns([5, 1], vertical_alignment="center")
        heading.markdown("#### :material/school: Start here: what to look at")
        button.button("Hide the guide", key="guide_hide", on_click=hide, help="Hidden for the rest of this session.")
        st.markdown(WHAT_IT_DOES)
        pair = featured_pair()
        if pair is not None:
            chosen = run_picker.current_selection("compare")
            pair_keys = {str(locations.checkpoints_dir() / name) for name in (pair.off, pair.on)}  # as the picker keys
            showing = chosen is None or set(chosen) == pair_keys
            st.markdown(effect_sentence(pair, table_shows_pair=showing))
            why = run_catalog.featured_why()
            if why:
                st.caption(f"How this pair was chosen: {why}")
        for number, (where, look_for, page) in enumerate(STEPS, start=1):
            text, link = st.columns([5, 1], vertical_alignment="center")
            text.markdown(f"{number}. **{where}** — look for: {look_for}")
            if page is not None:
                link.page_link(page, label=f"Open {where.lower()}", icon=":material/arrow_forward:")
