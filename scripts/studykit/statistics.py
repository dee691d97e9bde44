"""study.json's numbers: each final run's record, mean +- std, paired differences with Holm-adjusted p-values.

A study re-made for some rows only (``--datasets``/``--losses``) keeps the other rows of the study.json it
replaces; Holm's adjustment is then made again over every row, old and new.
"""

from __future__ import annotations

import math
import platform
from typing import Any

from studykit.plan import SEEN_METRICS, SEEN_PART, UNSEEN_METRICS
from studykit.runner import Study, eval_lines

# The comparisons the study tests, each one a p-value: these metrics of every (dataset, loss) row.
TESTED_METRICS = ("recall@1", "map@r")


def describe(values: list[float]) -> dict[str, Any]:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}


def paired(on: list[float], off: list[float]) -> dict[str, Any]:
    import numpy as np
    from scipy import stats

    diff = np.asarray(on, dtype=float) - np.asarray(off, dtype=float)
    n = len(diff)
    mean = float(diff.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": 0.0, "ci95": [mean, mean], "p_value": None, "values": diff.tolist()}
    std = float(diff.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    p = float(stats.ttest_rel(on, off).pvalue) if std > 0 else (1.0 if mean == 0 else 0.0)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "p_value": p, "values": diff.tolist()}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def adjust_for_comparisons(summary: dict[str, Any]) -> dict[str, Any]:
    """Adds ``p_holm`` beside each tested ``p_value`` (TESTED_METRICS of every row); returns the family's description."""
    family = [(key, metric) for key in summary for metric in TESTED_METRICS
              if summary[key]["diff"][metric].get("p_value") is not None]
    for (key, metric), adjusted in zip(family, holm([summary[k]["diff"][m]["p_value"] for k, m in family])):
        summary[key]["diff"][metric]["p_holm"] = adjusted
    return {"method": "Holm", "comparisons": len(family), "metrics": list(TESTED_METRICS),
            "family": "the paired t-tests of " + " and ".join(TESTED_METRICS) + " over every (dataset, loss) row"}


def run_record(study: Study, dataset, loss, weight, seed, epochs) -> dict[str, Any]:
    from ecaml.store.run_files import read_history, read_metrics

    path = study.final_dir(dataset, loss, weight, seed)
    seen = eval_lines(path, SEEN_PART)[-1]
    steps = [r for r in read_history(path) if r.get("kind") == "step"]
    return {
        "name": path.name, "dataset": dataset, "loss": loss, "ec_weight": weight, "seed": seed, "epochs": epochs,
        "steps": int(steps[-1]["step"]) if steps else 0,
        "train_seconds": float(steps[-1]["seconds"]) if steps else None,
        "unseen": read_metrics(path),
        "seen": {k: float(seen[k]) for k in SEEN_METRICS},
    }


def summarise(off: list[dict[str, Any]], on: list[dict[str, Any]], epochs: int, weight: float) -> dict[str, Any]:
    """One row: mean +- std of EC off and on, their paired differences, and the seen/unseen gap."""
    entry = {"epochs": epochs, "ec_weight": weight, "off": {}, "on": {}, "diff": {}}
    for part, metrics, prefix in (("unseen", UNSEEN_METRICS, ""), ("seen", SEEN_METRICS, "seen_")):
        for metric in metrics:
            a, b = [r[part][metric] for r in off], [r[part][metric] for r in on]
            name = prefix + metric
            entry["off"][name], entry["on"][name], entry["diff"][name] = describe(a), describe(b), paired(b, a)
    for side, records in (("off", off), ("on", on)):
        entry[side]["gap_recall@1"] = describe([r["seen"]["recall@1"] - r["unseen"]["recall@1"] for r in records])
    return entry


def build_results(study: Study, command: str, timing: dict[str, Any]) -> dict[str, Any]:
    """study.json for the plan's rows, from the run directories."""
    from ecaml.config import TrainConfig
    from ecaml.eval.evaluate import split_for

    plan = study.plan
    search, runs, summary = {}, [], {}
    for dataset, loss in plan.rows():
        key = f"{dataset}/{loss}"
        epoch_search, weight_search = study.epoch_search(dataset, loss), study.weight_search(dataset, loss)
        val_classes = {}
        for s in plan.tune_seeds:
            split = split_for(TrainConfig(**plan.data_config(dataset), val_classes=plan.val_classes[dataset],
                                          val_seed=s).resolved())
            val_classes[str(s)] = [split.dataset.class_names[c] for c in split.val_classes]
        search[key] = {"val_classes_by_tune_seed": val_classes, "epochs": epoch_search, "ec_weight": weight_search}
        epochs, weight = epoch_search["chosen"], weight_search["chosen"]
        off = [run_record(study, dataset, loss, 0.0, s, epochs) for s in plan.final_seeds]
        on = [run_record(study, dataset, loss, weight, s, epochs) for s in plan.final_seeds]
        runs += off + on
        summary[key] = summarise(off, on, epochs, weight)
    held_out = {d: TrainConfig(**plan.data_config(d)).resolved().seen_test_per_class for d in plan.datasets}
    results = {"command": command, "settings": plan.to_dict(), "seen_test_per_class": held_out, "search": search,
               "runs": runs, "summary": summary, "timing": timing, "environment": environment()}
    results["comparisons"] = adjust_for_comparisons(results["summary"])
    return results


def environment() -> dict[str, str]:
    import numpy
    import scipy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "platform": platform.platform(), "device": "cpu, 1 thread per run"}


def merge_results(earlier: dict[str, Any], remade: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``earlier``'s study with the rows ``keys`` (and their runs) replaced by ``remade``'s; Holm made again.

    The study's command and timing stay the earlier ones; each re-making is listed under ``remade``.
    """
    merged = dict(earlier)
    for part in ("search", "summary"):
        merged[part] = {**earlier[part], **{key: remade[part][key] for key in keys}}
    replaced = lambda run: f"{run['dataset']}/{run['loss']}" in keys  # noqa: E731
    merged["runs"] = [run for run in earlier["runs"] if not replaced(run)] + [run for run in remade["runs"] if replaced(run)]
    settings = dict(earlier["settings"])
    for name, value in remade["settings"].items():
        if name in ("datasets", "losses"):
            settings[name] = list(dict.fromkeys(settings[name] + value))
        elif isinstance(value, dict) and isinstance(settings.get(name), dict):
            settings[name] = {**settings[name], **value}  # per-dataset grids: the re-made datasets' own
    merged["settings"] = settings
    merged["seen_test_per_class"] = {**earlier.get("seen_test_per_class", {}), **remade.get("seen_test_per_class", {})}
    merged["remade"] = [*earlier.get("remade", []), {"rows": keys, "command": remade["command"],
                                                     "timing": remade["timing"], "environment": remade["environment"]}]
    merged["comparisons"] = adjust_for_comparisons(merged["summary"])
    return merged
