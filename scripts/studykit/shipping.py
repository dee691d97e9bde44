"""The study's seed-0 pairs copied into checkpoints/, their README, and featured.json (the pair the app opens on).

The app reads these folders while they are written, so nothing is written in place: files go through
ecaml.store.atomic's writes, and each run folder is assembled in a staging folder beside checkpoints/ (same
filesystem) and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from studykit.plan import (
    FEATURED_DATASET,
    FILM_FOLDER,
    PINNED_KEYS,
    SELECTION_METRIC,
    SHIPPED_FILES,
    final_config,
    final_name,
    train_command,
)
from studykit.runner import Study

STAGING = ".checkpoints-staging"  # beside the checkpoints folder; emptied when shipping ends


def _replace_folder(assembled: Path, destination: Path, staging: Path) -> None:
    """Puts ``assembled`` at ``destination`` by renames: readers see the old run or the new, never a part of one."""
    retired = staging / f"{destination.name}.retired"
    if destination.exists():
        os.replace(destination, retired)
    os.replace(assembled, destination)
    shutil.rmtree(retired, ignore_errors=True)


def _remove_folder(folder: Path, staging: Path) -> None:
    retired = staging / f"{folder.name}.retired"
    os.replace(folder, retired)
    shutil.rmtree(retired)


def _ship_run(source: Path, destination: Path, staging: Path) -> None:
    """Copies a run's shipped files (and its film) to ``destination``."""
    assembled = staging / destination.name
    shutil.rmtree(assembled, ignore_errors=True)
    assembled.mkdir(parents=True)
    for file in SHIPPED_FILES:
        shutil.copy2(source / file, assembled / file)
    if (source / FILM_FOLDER).is_dir():
        shutil.copytree(source / FILM_FOLDER, assembled / FILM_FOLDER)  # the training film, if any
    _replace_folder(assembled, destination, staging)


def ship_checkpoints(results: dict[str, Any], study: Study, target: Path, log) -> list[str]:
    """Copy the seed-0 runs, EC off and on, of the plan's rows (trainer states left out); README and featured.json.

    Run folders of rows outside the plan (a study re-made for some rows) are left as they are.
    """
    from ecaml.store.atomic import atomic_write_bytes

    target.mkdir(parents=True, exist_ok=True)
    staging = target.parent / STAGING
    staging.mkdir(exist_ok=True)
    seed = results["settings"]["final_seeds"][0]
    remade = set(study.plan.keys())
    shipped, rows = [], []
    for key, entry in results["summary"].items():
        dataset, loss = key.split("/")
        if study.plan.data_config(dataset)["dataset"] != dataset:
            continue  # a further split of a data set (fashion-mnist-even): in the study, not shipped
        for weight in (0.0, entry["ec_weight"]):
            name = final_name(dataset, loss, weight, seed)
            record = next(r for r in results["runs"] if r["name"] == name)
            if key in remade:
                _ship_run(study.final_dir(dataset, loss, weight, seed), target / name, staging)
                log(f"shipped {target / name}")
            shipped.append(name)
            # Pin the per-dataset defaults too, so the command keeps making this run if those defaults change.
            resolved = json.loads((target / name / "config.json").read_text())
            values = {**final_config(study.plan, dataset, loss, weight, seed, entry["epochs"]),
                      **{k: resolved[k] for k in PINNED_KEYS}}
            size = sum(f.stat().st_size for f in (target / name).rglob("*") if f.is_file())
            rows.append((name, record, train_command(values, f"checkpoints/{name}"), size))
    for stale in sorted(target.iterdir()):
        # A run folder of a re-made row that this study no longer ships (e.g. another chosen λ).
        config = stale / "config.json"
        if stale.is_dir() and config.is_file() and stale.name not in shipped and _row_of(config) in remade:
            _remove_folder(stale, staging)
            log(f"removed {stale} (not a run of this study)")
    atomic_write_bytes(target / "README.md", readme(results, rows).encode())
    write_featured(results, target / "featured.json", log)
    shutil.rmtree(staging, ignore_errors=True)
    return shipped


def _row_of(config_file: Path) -> str:
    config = json.loads(config_file.read_text())
    return f"{config.get('dataset')}/{config.get('loss')}"


def readme(results: dict[str, Any], rows: list[tuple]) -> str:
    lines = [
        "# Shipped checkpoints",
        "",
        "Seed-0 runs of the study (`results/study.md`): for each dataset and base loss, the baseline (EC off, `ec0`) "
        "and ECAML with the EC weight chosen on validation classes, trained on all seen classes for the epochs chosen "
        "on validation classes. Each folder is a run directory (`config.json`, `model.safetensors`, `history.jsonl`, "
        "`metrics.json` = unseen-class metrics, `status.json`); the optimiser states (`trainer_state_*.safetensors`) "
        "are left out to save space, so these runs cannot be resumed, only evaluated and used.",
        "",
        "All of them are re-made, with the whole study, by",
        "",
        f"    {results['command']}",
        "",
        *[f"(rows {', '.join(r['rows'])} re-made by `{r['command']}`)" for r in results.get("remade", [])],
        "",
        "(runs are seeded and single-threaded on the CPU, so the same machine and library versions give the same "
        "weights; another CPU or library build may differ in the last bits of floating-point sums, so its weights "
        "differ a little and its metrics by about as much as one seed from the next). The digits runs also carry "
        "their training film (`film/`, played on the Embeddings page). Each one alone:",
        "",
        "| run | unseen R@1 | NMI | MAP@R | size | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, record, command, size in rows:
        m = record["unseen"]
        lines.append(f"| `{name}` | {m['recall@1'] * 100:.1f} | {m['nmi'] * 100:.1f} | {m['map@r'] * 100:.1f} | "
                     f"{size / 1e6:.2f} MB | `{command}` |")
    lines += ["", "Check one: `python -m ecaml evaluate checkpoints/NAME --json` prints its `metrics.json`; "
              "`pytest tests/test_checkpoints.py` checks them all.", ""]
    return "\n".join(lines)


def validation_gains(results: dict[str, Any], dataset: str) -> dict[str, float]:
    """For each loss of ``dataset``: validation MAP@R at the chosen λ minus the baseline's (means over tuning seeds)."""
    gains = {}
    for key, search in results["search"].items():
        if key.split("/")[0] == dataset:
            weights = search["ec_weight"]
            gains[key] = (weights[f"val_{SELECTION_METRIC}_mean"][f"{weights['chosen']:g}"]
                          - weights[f"baseline_val_{SELECTION_METRIC}_mean"])
    return gains


def choose_featured(results: dict[str, Any], dataset: str = FEATURED_DATASET) -> str:
    """The row of ``dataset`` whose chosen EC weight gained most on *validation* classes (ties: the study's order).

    Picking the largest effect on the test (unseen) classes and showing that same effect would overstate it
    (a winner's curse); validation classes are the ones the selection may look at, so the unseen-class
    interval of the chosen pair stays an honest estimate.
    """
    gains = validation_gains(results, dataset)
    return max(gains, key=lambda key: (gains[key], -list(gains).index(key)))


def featured_entry(results: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The pair of ``dataset`` chosen on validation classes (choose_featured), and why, in words."""
    key = choose_featured(results, dataset)
    gains = validation_gains(results, dataset)
    seed = results["settings"]["final_seeds"][0]
    entry = results["summary"][key]
    loss = key.split("/")[1]
    diff = entry["diff"]

    def points(metric: str) -> str:
        low, high = diff[metric]["ci95"]
        return f"{diff[metric]['mean'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"

    others = ", ".join(f"{k.split('/')[1]} {v * 100:+.1f}" for k, v in gains.items() if k != key)
    holm = diff[SELECTION_METRIC].get("p_holm")
    why = (f"The pair the app opens on, chosen on validation classes before any unseen class was looked at: of the "
           f"{dataset} pairs (the ones with a training film), the {loss} loss gained most from Energy Confusion in "
           f"validation MAP@R at its chosen λ ({gains[key] * 100:+.1f} points over EC off, mean of the tuning seeds"
           + (f"; {others}" if others else "") + f"). On the unseen classes (EC λ = {entry['ec_weight']:g} against "
           f"off, paired over {diff[SELECTION_METRIC]['n']} seeds, 95% interval): Recall@1 {points('recall@1')}, "
           f"NMI {points('nmi')}, MAP@R {points('map@r')} points"
           + (f" (Holm-adjusted p {holm:.3f} over the study's {results['comparisons']['comparisons']} comparisons)"
              if holm is not None else "") + "; see results/study.md.")
    return {"runs": [final_name(dataset, loss, weight, seed) for weight in (0.0, entry["ec_weight"])], "why": why,
            "chosen_on": "validation classes", f"validation_{SELECTION_METRIC}_gain": gains}


def write_featured(results: dict[str, Any], path: Path, log) -> None:
    """featured.json: the digits pair chosen on validation classes at the top level; each other filmed data set's
    pair under its name (``"fashion-mnist": {"runs": [...], "why": ...}``, as app.run_catalog reads it)."""
    from ecaml.store.atomic import atomic_write_bytes

    featured = featured_entry(results, FEATURED_DATASET)
    filmed = results["settings"].get("film_frames_for_seed0_finals", {})
    others = {d: featured_entry(results, d) for d in filmed
              if d != FEATURED_DATASET and any(k.split("/")[0] == d for k in results["summary"])}
    featured.update(others)
    atomic_write_bytes(path, (json.dumps(featured, indent=2, ensure_ascii=False) + "\n").encode())
    log(f"featured pair: {', '.join(featured['runs'])}")
