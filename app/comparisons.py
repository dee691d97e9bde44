"""Which runs may be compared number for number: the rules behind every Δ, baseline and grouping the app shows.

A difference between two runs means something only when they were trained on the same images, split the same way,
with the same base loss: then what differs is the regulariser (or the seed). Runs that differ in any of these are
shown side by side, but never with a Δ, and the page says why.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from app.run_catalog import RunEntry

# What a Δ needs two runs to share, with the words a page uses to name a mismatch.
COMPARABLE_ON = {
    "dataset": "data set",
    "data_root": "image folder",
    "val_classes": "validation hold-out",
    "val_seed": "validation classes",
    "seen_test_per_class": "held-out seen images",
    "loss": "base loss",
}
# A setting is everything in the config but the seed: runs of one setting that differ only by seed are repeats.
SEED_FIELDS = ("seed",)


def comparison_key(entry: RunEntry) -> tuple:
    config = entry.run.config
    return tuple(getattr(config, name) for name in COMPARABLE_ON)


def mismatch(entry: RunEntry, baseline: RunEntry) -> str | None:
    """Why ``entry`` gets no Δ against ``baseline`` (e.g. "base loss binomial, not triplet"), or None if it may."""
    differences = []
    for name, words in COMPARABLE_ON.items():
        mine, theirs = getattr(entry.run.config, name), getattr(baseline.run.config, name)
        if mine != theirs:
            differences.append(f"{words} {shown(mine)}, not {shown(theirs)}")
    return "; ".join(differences) or None


def shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def default_baseline(chosen: Sequence[RunEntry]) -> RunEntry:
    """The first EC-off run picked (the plain baseline a regulariser is judged against), else the first run."""
    return next((entry for entry in chosen if entry.run.config.ec_weight == 0), chosen[0])


def groups(chosen: Sequence[RunEntry]) -> list[list[RunEntry]]:
    """The chosen runs grouped by what they may be compared on, groups in the order their first run was picked."""
    grouped: dict[tuple, list[RunEntry]] = {}
    for entry in chosen:
        grouped.setdefault(comparison_key(entry), []).append(entry)
    return list(grouped.values())


def setting_key(entry: RunEntry) -> tuple:
    values = entry.run.config.to_dict()
    return tuple(sorted((name, repr(value)) for name, value in values.items() if name not in SEED_FIELDS))


def repeated_settings(chosen: Sequence[RunEntry]) -> list[list[RunEntry]]:
    """Groups of two or more chosen runs whose configs differ only by seed, each run trained to its end: a stopped
    or failed run of the same config is no seed of that setting (it trained less)."""
    by_setting: dict[tuple, list[RunEntry]] = {}
    for entry in chosen:
        if (entry.run.status or {}).get("state") == "completed":
            by_setting.setdefault(setting_key(entry), []).append(entry)
    return [runs for runs in by_setting.values() if len(runs) >= 2]


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def delta_reference(entry: RunEntry, baseline: RunEntry, chosen: Sequence[RunEntry]) -> RunEntry | None:
    """What ``entry``'s Δ is measured against: the baseline when the two may be compared; else, among the chosen
    runs like ``entry`` (pairwise Δ for like runs), the one a baseline would be (``default_baseline``); None for the
    baseline itself, a run like no other, and the run its like runs are measured against."""
    if entry is baseline:
        return None
    if mismatch(entry, baseline) is None:
        return baseline
    like = [other for other in chosen if other is entry or mismatch(entry, other) is None]
    reference = default_baseline(like)
    return None if reference is entry else reference


def length_notes(pairs: Sequence[tuple[RunEntry, RunEntry]]) -> list[str]:
    """Why a Δ may mislead: a run stopped before its end, or a run and its reference trained for different lengths."""
    notes = []
    for entry, reference in pairs:
        state = (entry.run.status or {}).get("state")
        if state == "stopped":
            notes.append(f"**{entry.name}** was stopped at step {entry.run.step:,}, before the end of its schedule")
        if entry.run.step != reference.run.step:
            notes.append(f"**{entry.name}** trained {entry.run.step:,} steps, **{reference.name}** "
                         f"{reference.run.step:,} steps")
    return notes


def study_seed_spread(chosen: Sequence[RunEntry], study: dict) -> dict[str, dict[str, tuple[float, float, int]]]:
    """For each chosen shipped run whose setting the study trained over several seeds (results/study.json's
    summary: same data set, loss, epochs and λ), metric -> (mean, standard deviation, seeds); only seed 0 ships."""
    summary = study.get("summary") if isinstance(study, dict) else None
    spread = {}
    for entry in chosen:
        config = entry.run.config
        setting = (summary or {}).get(f"{config.dataset}/{config.loss}")
        if not entry.shipped or not isinstance(setting, dict) or config.epochs != setting.get("epochs"):
            continue
        side = "off" if config.ec_weight == 0 else "on" if config.ec_weight == setting.get("ec_weight") else None
        metrics = setting.get(side) if side else None
        if isinstance(metrics, dict):
            spread[entry.name] = {key: (value["mean"], value["std"], len(value["values"]))
                                  for key, value in metrics.items() if isinstance(value, dict) and "values" in value}
    return spread
