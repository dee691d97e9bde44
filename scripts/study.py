#!/usr/bin/env python
"""Re-make the whole ECAML study, and the shipped checkpoints, from scratch.

    python scripts/study.py --out results/ --jobs 2          # the full study (~1 h on 2 cores)
    python scripts/study.py --out /tmp/quick --quick         # a tiny end-to-end dry run (minutes)

What it does, for every dataset (digits, glyphs) and base loss (binomial,
triplet, npair):

1. Tuning, on validation classes only. ``val_classes`` seen classes (digits 2
   of 5, glyphs 13 of 52) are held out of training; each tuning seed also
   draws its own held-out classes (``split_seed`` = the tuning seed). Tuning
   seeds (100, 101) differ from the final seeds (0-4).

   a. Epochs, chosen on the baseline (EC off): one run per tuning seed to the
      largest epoch count of the grid, evaluated on the validation classes at
      every grid epoch; the epoch count with the best validation MAP@R
      (mean over the tuning seeds; ties go to fewer epochs) is kept, and reused
      for EC so that EC on/off are compared at the same training length.
   b. EC weight: one run per (weight, tuning seed) trained for the chosen
      epochs (same evaluation schedule as the baseline, so each EC run and the
      baseline share batches and augmentations up to the EC term); the weight
      with the best mean validation MAP@R is kept (ties go to smaller weights).

   Only ``"split": "val"`` lines of the histories are read by the selection.
   (The library's in-training evaluation also logs unseen-class lines; the
   selection never reads them.)

2. Study: seeds 0-4, EC off (weight 0) and EC on (the chosen weight), trained
   on all seen classes (``val_classes`` 0) for the chosen epochs; unseen-class
   Recall@K, NMI, MAP@R from each run's metrics.json, seen-class Recall@1 and
   MAP@R from its final ``"split": "seen_test"`` history line: images of the
   training classes held out of training (the dataset's ``seen_test_per_class``,
   digits 10 and glyphs 4 an image class), so the seen/unseen gap compares new
   images of known classes with images of new classes, not memorisation.
   The seed-0 runs of the datasets in ``film_frames`` (digits) also record a
   training film of about that many frames (ecaml.film; it changes no weight).
   Summaries: mean +- std (ddof 1) and the paired difference (EC on - off, same
   seed) with a 95% t confidence interval and a paired t-test p-value.

3. Outputs: ``OUT/study.json`` (settings, the whole search, every run's
   metrics, summaries, timing) and ``OUT/study.md`` rendered from that JSON
   alone (``--render-only`` re-renders it); the seed-0 run directories of each
   (dataset, loss) pair, EC off and on, are copied into ``--checkpoints``
   (default ``checkpoints/``; not in ``--quick`` mode unless asked), without
   their trainer_state_*.safetensors, with their film when they have one and a
   generated README.md; ``featured.json`` names the pair the app opens on (the
   digits pair with the largest mean paired MAP@R difference, the films being
   of digits runs).

Runs live in a work directory (default ``runs/study`` or ``runs/study-quick``,
git-ignored). A run whose directory already has metrics.json is not trained
again; an interrupted run is resumed from its last checkpoint when its
config matches, else re-made. So an interrupted study simply continues when
the same command is run again. Every run is seeded and single-threaded on the
CPU, so the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import functools
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASETS = ("digits", "glyphs")
LOSSES = ("binomial", "triplet", "npair")
UNSEEN_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision")
SEEN_METRICS = ("recall@1", "map@r")
SHIPPED_FILES = ("config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json")
FILM_FOLDER = "film"  # ecaml.film.FILM_FOLDER
SEEN_PART = "seen_test"  # held-out images of the training classes
FEATURED_DATASET = "digits"  # the featured pair is a digits pair: its runs carry films and re-train in seconds
SELECTION_METRIC = "map@r"
PINNED_KEYS = ("image_size", "embedding_dim", "classes_per_batch", "images_per_class")


@dataclass(frozen=True)
class Plan:
    """Every setting of a study; saved into study.json."""

    ec_grid: dict[str, tuple[float, ...]]
    epoch_grid: dict[str, tuple[int, ...]]
    val_classes: dict[str, int]
    tune_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    datasets: tuple[str, ...] = DATASETS
    losses: tuple[str, ...] = LOSSES
    extra: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields for every run
    film_frames: dict[str, int] = field(default_factory=dict)  # seed-0 final runs of these datasets get a film

    def eval_every(self, dataset: str) -> int:
        """Evaluate at every grid epoch: the gcd of the grid."""
        return math.gcd(*self.epoch_grid[dataset])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ec_grid": {k: list(v) for k, v in self.ec_grid.items()},
            "epoch_grid": {k: list(v) for k, v in self.epoch_grid.items()},
            "val_classes": dict(self.val_classes),
            "tune_seeds": list(self.tune_seeds),
            "tune_split_seeds": "equal to the tuning seed (each tuning seed holds out its own validation classes)",
            "final_seeds": list(self.final_seeds),
            "datasets": list(self.datasets),
            "losses": list(self.losses),
            "eval_every_while_tuning": {d: self.eval_every(d) for d in self.datasets},
            "extra_config": dict(self.extra),
            "film_frames_for_seed0_finals": dict(self.film_frames),
            "selection": (
                f"epochs: argmax over the epoch grid of the baseline's (EC off) validation {SELECTION_METRIC}, "
                f"mean over tuning seeds, ties to fewer epochs; reused for EC. EC weight: argmax over the EC grid of "
                f"validation {SELECTION_METRIC} after the chosen epochs, mean over tuning seeds, ties to the smaller "
                "weight. Unseen-class metrics are never read by the selection."
            ),
        }


FULL = Plan(
    # glyphs: 3 weights, not 5, to keep the study near an hour on 2 shared cores (its runs are ~10x digits')
    ec_grid={"digits": (0.05, 0.13, 0.3, 0.6, 1.0), "glyphs": (0.13, 0.3, 1.0)},
    epoch_grid={"digits": (2, 4, 8, 16, 32), "glyphs": (5, 10, 15, 20)},
    val_classes={"digits": 2, "glyphs": 13},
    tune_seeds=(100, 101),
    final_seeds=(0, 1, 2, 3, 4),
    film_frames={"digits": 30},
)
QUICK = Plan(
    ec_grid={"digits": (0.13, 1.0), "glyphs": (0.13, 1.0)},
    epoch_grid={"digits": (1, 2), "glyphs": (1,)},
    val_classes={"digits": 2, "glyphs": 13},
    tune_seeds=(100, 101),
    final_seeds=(0, 1),
    film_frames={"digits": 4},
)


# ----------------------------------------------------------------------------- runs


def weight_tag(weight: float) -> str:
    return f"ec{weight:g}"


def tune_name(dataset: str, loss: str, weight: float, seed: int) -> str:
    return f"tune-{dataset}-{loss}-{weight_tag(weight)}-seed{seed}"


def final_name(dataset: str, loss: str, weight: float, seed: int) -> str:
    return f"{dataset}-{loss}-{weight_tag(weight)}-seed{seed}"


def tune_config(plan: Plan, dataset: str, loss: str, weight: float, seed: int, epochs: int) -> dict[str, Any]:
    return {
        "dataset": dataset, "loss": loss, "ec_weight": weight, "seed": seed, "split_seed": seed,
        "val_classes": plan.val_classes[dataset], "epochs": epochs, "eval_every": plan.eval_every(dataset),
        **plan.extra,
    }


def final_config(plan: Plan, dataset: str, loss: str, weight: float, seed: int, epochs: int) -> dict[str, Any]:
    values = {
        "dataset": dataset, "loss": loss, "ec_weight": weight, "seed": seed, "split_seed": 0,
        "val_classes": 0, "epochs": epochs, "eval_every": 0, **plan.extra,
    }
    if seed == plan.final_seeds[0] and dataset in plan.film_frames:
        values["film_every"] = film_every(json.dumps(values, sort_keys=True), plan.film_frames[dataset])
    return values


@functools.lru_cache(maxsize=None)
def film_every(values_json: str, frames: int) -> int:
    """Steps between film snapshots so that the run (its config as JSON) records about ``frames`` of them."""
    from ecaml.config import TrainConfig
    from ecaml.evaluate import split_for
    from ecaml.train import make_plan

    config = TrainConfig.from_dict(json.loads(values_json)).resolved()
    split = split_for(config)
    plan = make_plan(config, split.dataset.labels[split.indices("train")])
    return max(1, plan.total_steps // frames)


def train_command(values: dict[str, Any], out: str) -> str:
    """The `python -m ecaml train` line that makes the same run (same resolved config)."""
    parts = ["python", "-m", "ecaml", "train"]
    for key, value in values.items():
        parts += ["--" + key.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(p) for p in parts + ["--out", out, "--quiet"])


def is_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def run_task(name: str, run_dir: str, values: dict[str, Any]) -> dict[str, Any]:
    """Train one run (in a worker process); resume it if an interrupted copy with the same config exists."""
    from ecaml.config import TrainConfig
    from ecaml.runs import RunError, read_config
    from ecaml.train import resume, train

    path = Path(run_dir)
    if is_done(path):
        return {"name": name, "state": "skipped", "seconds": 0.0}
    config = TrainConfig.from_dict(values).resolved()
    started = time.perf_counter()
    action = "trained"
    if path.exists() and any(path.iterdir()):
        try:
            same = read_config(path).to_dict() == config.to_dict()
        except RunError:
            same = False
        if same and any(path.glob("trainer_state_*.safetensors")) and (path / "model.safetensors").is_file():
            try:
                result = resume(path, progress=False)
                action = "resumed"
            except RunError:
                shutil.rmtree(path)
                result = train(config, path, progress=False)
        else:
            shutil.rmtree(path)
            result = train(config, path, progress=False)
    else:
        result = train(config, path, progress=False)
    return {"name": name, "state": result.state if action == "trained" else f"{action}:{result.state}",
            "steps": result.steps, "seconds": round(time.perf_counter() - started, 2)}


# ----------------------------------------------------------------------------- reading results


def eval_lines(run_dir: Path, split: str) -> list[dict[str, Any]]:
    from ecaml.runs import read_history

    return [r for r in read_history(run_dir) if r.get("kind") == "eval" and r.get("split") == split]


def val_curve(run_dir: Path) -> dict[int, dict[str, float]]:
    """Validation metrics after each evaluated epoch (history epochs are 0-based: epoch e = e + 1 epochs done)."""
    return {int(r["epoch"]) + 1: _metric_values(r) for r in eval_lines(run_dir, "val")}


def _metric_values(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k not in ("kind", "step", "epoch", "split")}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _argmax(scores: dict[Any, float]) -> Any:
    """Key with the highest score; ties go to the smallest key."""
    best = max(scores.values())
    return min(k for k, v in scores.items() if v == best)


class Study:
    """The state of a study, recomputed from the run directories on disk at any moment."""

    def __init__(self, plan: Plan, work: Path):
        self.plan, self.work = plan, work

    def tune_dir(self, dataset, loss, weight, seed) -> Path:
        return self.work / "tune" / tune_name(dataset, loss, weight, seed)

    def final_dir(self, dataset, loss, weight, seed) -> Path:
        return self.work / "final" / final_name(dataset, loss, weight, seed)

    # -- selection (validation classes only)

    def chosen_epochs(self, dataset: str, loss: str) -> int | None:
        search = self.epoch_search(dataset, loss)
        return None if search is None else search["chosen"]

    def epoch_search(self, dataset: str, loss: str) -> dict[str, Any] | None:
        dirs = {s: self.tune_dir(dataset, loss, 0.0, s) for s in self.plan.tune_seeds}
        if not all(is_done(d) for d in dirs.values()):
            return None
        grid = self.plan.epoch_grid[dataset]
        curves = {s: val_curve(d) for s, d in dirs.items()}
        per_seed = {str(s): {str(e): curves[s][e][SELECTION_METRIC] for e in grid} for s in dirs}
        recall1 = {str(s): {str(e): curves[s][e]["recall@1"] for e in grid} for s in dirs}
        mean = {e: _mean([curves[s][e][SELECTION_METRIC] for s in dirs]) for e in grid}
        return {
            "grid": list(grid),
            "runs": [d.name for d in dirs.values()],
            f"val_{SELECTION_METRIC}_by_seed": per_seed,
            "val_recall@1_by_seed": recall1,
            f"val_{SELECTION_METRIC}_mean": {str(e): v for e, v in mean.items()},
            "chosen": int(_argmax(mean)),
        }

    def weight_search(self, dataset: str, loss: str) -> dict[str, Any] | None:
        epochs = self.chosen_epochs(dataset, loss)
        if epochs is None:
            return None
        grid = self.plan.ec_grid[dataset]
        dirs = {(w, s): self.tune_dir(dataset, loss, w, s) for w in grid for s in self.plan.tune_seeds}
        if not all(is_done(d) for d in dirs.values()):
            return None
        finals = {key: eval_lines(d, "val")[-1] for key, d in dirs.items()}
        for (w, s), record in finals.items():
            if int(record["epoch"]) + 1 != epochs:
                raise RuntimeError(f"{dirs[w, s]} was trained for {int(record['epoch']) + 1} epochs, expected {epochs}")
        per_seed = {str(s): {f"{w:g}": finals[w, s][SELECTION_METRIC] for w in grid} for s in self.plan.tune_seeds}
        recall1 = {str(s): {f"{w:g}": finals[w, s]["recall@1"] for w in grid} for s in self.plan.tune_seeds}
        mean = {w: _mean([finals[w, s][SELECTION_METRIC] for s in self.plan.tune_seeds]) for w in grid}
        baseline = {str(s): val_curve(self.tune_dir(dataset, loss, 0.0, s))[epochs][SELECTION_METRIC] for s in self.plan.tune_seeds}
        chosen = float(_argmax(mean))
        baseline_mean = _mean(list(baseline.values()))
        return {
            "grid": list(grid),
            "epochs": epochs,
            f"val_{SELECTION_METRIC}_by_seed": per_seed,
            "val_recall@1_by_seed": recall1,
            f"val_{SELECTION_METRIC}_mean": {f"{w:g}": v for w, v in mean.items()},
            f"baseline_val_{SELECTION_METRIC}_by_seed": baseline,
            f"baseline_val_{SELECTION_METRIC}_mean": baseline_mean,
            "chosen": chosen,
            "chosen_beats_baseline_on_val": bool(mean[chosen] > baseline_mean),
        }

    def chosen_weight(self, dataset: str, loss: str) -> float | None:
        search = self.weight_search(dataset, loss)
        return None if search is None else search["chosen"]

    # -- the task graph

    def tasks(self) -> tuple[list[tuple], bool]:
        """(runs that can be trained now, whether any run is still blocked on a selection)."""
        ready, blocked = [], False
        for dataset in self.plan.datasets:
            for loss in self.plan.losses:
                top = max(self.plan.epoch_grid[dataset])
                for s in self.plan.tune_seeds:
                    ready.append((0, dataset, loss, self.tune_dir(dataset, loss, 0.0, s),
                                  tune_config(self.plan, dataset, loss, 0.0, s, top)))
                epochs = self.chosen_epochs(dataset, loss)
                if epochs is None:
                    blocked = True
                    continue
                for w in self.plan.ec_grid[dataset]:
                    for s in self.plan.tune_seeds:
                        ready.append((1, dataset, loss, self.tune_dir(dataset, loss, w, s),
                                      tune_config(self.plan, dataset, loss, w, s, epochs)))
                for s in self.plan.final_seeds:
                    ready.append((2, dataset, loss, self.final_dir(dataset, loss, 0.0, s),
                                  final_config(self.plan, dataset, loss, 0.0, s, epochs)))
                weight = self.chosen_weight(dataset, loss)
                if weight is None:
                    blocked = True
                    continue
                for s in self.plan.final_seeds:
                    ready.append((2, dataset, loss, self.final_dir(dataset, loss, weight, s),
                                  final_config(self.plan, dataset, loss, weight, s, epochs)))
        return [t for t in ready if not is_done(t[3])], blocked


def run_all(study: Study, jobs: int, log) -> list[dict[str, Any]]:
    """Train every run, `jobs` at a time, submitting runs as the selections they wait on become known."""
    context = multiprocessing.get_context("spawn")
    done_log: list[dict[str, Any]] = []
    running: dict[futures.Future, Path] = {}
    failed: set[Path] = set()
    # Tuning before final runs (they unblock more work); glyphs (longer runs) before digits.
    priority = lambda t: (t[0], t[1] != "glyphs", t[2], str(t[3]))  # noqa: E731
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        try:
            while True:
                ready, blocked = study.tasks()
                ready = sorted((t for t in ready if t[3] not in running.values() and t[3] not in failed), key=priority)
                while ready and len(running) < jobs:
                    task = ready.pop(0)
                    running[pool.submit(run_task, task[3].name, str(task[3]), task[4])] = task[3]
                    log(f"start  {task[3].relative_to(study.work)}")
                if not running:
                    if blocked and failed:
                        log(f"{len(failed)} run(s) failed; the runs that wait on them cannot start")
                    break
                finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in finished:
                    path = running.pop(future)
                    try:
                        record = future.result()
                    except Exception as error:  # noqa: BLE001 - report, keep the other runs going
                        failed.add(path)
                        log(f"FAILED {path.relative_to(study.work)}: {error.__class__.__name__}: {error}")
                        continue
                    done_log.append(record)
                    log(f"done   {path.relative_to(study.work)} ({record['state']}, {record.get('steps')} steps, "
                        f"{record['seconds']:.0f} s)")
                    with open(study.work / "timings.jsonl", "a") as handle:
                        handle.write(json.dumps({**record, "finished": time.time()}) + "\n")
        except KeyboardInterrupt:
            log("interrupted: asking the running trainings to checkpoint and stop; run the same command to continue")
            for process in list(getattr(pool, "_processes", {}).values()):
                try:
                    os.kill(process.pid, signal.SIGINT)
                except OSError:
                    pass
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: " + ", ".join(sorted(p.name for p in failed)))
    return done_log


# ----------------------------------------------------------------------------- summaries


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


def run_record(study: Study, dataset, loss, weight, seed, epochs) -> dict[str, Any]:
    from ecaml.runs import read_history, read_metrics

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


def build_results(study: Study, command: str, timing: dict[str, Any]) -> dict[str, Any]:
    plan = study.plan
    search, runs, summary = {}, [], {}
    for dataset in plan.datasets:
        for loss in plan.losses:
            key = f"{dataset}/{loss}"
            epoch_search, weight_search = study.epoch_search(dataset, loss), study.weight_search(dataset, loss)
            val_classes = {}
            from ecaml.data import load_split

            for s in plan.tune_seeds:
                split = load_split(dataset, None, plan.val_classes[dataset], s)
                val_classes[str(s)] = [split.dataset.class_names[c] for c in split.val_classes]
            search[key] = {"val_classes_by_tune_seed": val_classes, "epochs": epoch_search, "ec_weight": weight_search}
            epochs, weight = epoch_search["chosen"], weight_search["chosen"]
            off = [run_record(study, dataset, loss, 0.0, s, epochs) for s in plan.final_seeds]
            on = [run_record(study, dataset, loss, weight, s, epochs) for s in plan.final_seeds]
            runs += off + on
            entry = {"epochs": epochs, "ec_weight": weight, "off": {}, "on": {}, "diff": {}}
            for metric in UNSEEN_METRICS:
                a, b = [r["unseen"][metric] for r in off], [r["unseen"][metric] for r in on]
                entry["off"][metric], entry["on"][metric], entry["diff"][metric] = describe(a), describe(b), paired(b, a)
            for metric in SEEN_METRICS:
                name = f"seen_{metric}"
                a, b = [r["seen"][metric] for r in off], [r["seen"][metric] for r in on]
                entry["off"][name], entry["on"][name], entry["diff"][name] = describe(a), describe(b), paired(b, a)
            for side, records in (("off", off), ("on", on)):
                gaps = [r["seen"]["recall@1"] - r["unseen"]["recall@1"] for r in records]
                entry[side]["gap_recall@1"] = describe(gaps)
            summary[key] = entry
    import numpy
    import scipy
    import torch

    from ecaml.config import TrainConfig

    held_out = {d: TrainConfig(dataset=d).resolved().seen_test_per_class for d in plan.datasets}
    return {
        "command": command,
        "settings": plan.to_dict(),
        "seen_test_per_class": held_out,
        "search": search,
        "runs": runs,
        "summary": summary,
        "timing": timing,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                        "scipy": scipy.__version__, "platform": platform.platform(), "device": "cpu, 1 thread per run"},
    }


# ----------------------------------------------------------------------------- markdown


def _pm(stat: dict[str, Any], scale: float = 100.0) -> str:
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def _ci(stat: dict[str, Any], scale: float = 100.0) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean'] * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def render_markdown(results: dict[str, Any]) -> str:
    """study.md, from study.json alone."""
    settings, summary, search = results["settings"], results["summary"], results["search"]
    timing = results["timing"]
    n = len(settings["final_seeds"])
    lines = [
        "## Study: Energy Confusion on/off, unseen classes",
        "",
        f"Made by `{results['command']}` "
        f"(wall time {timing['wall_seconds_total'] / 60:.0f} min"
        + (f" over {timing['invocations']} invocations, the study having been interrupted and resumed"
           if timing.get("invocations", 1) > 1 else "")
        + f", with {timing['jobs']} parallel single-threaded runs "
        f"on a 2-core CPU shared with other work; {timing['run_seconds_total'] / 60:.0f} min of training in all). "
        "Every number below is read from `study.json`.",
        "",
        f"Unseen-class metrics in %, mean ± std over {n} seeds ({', '.join(map(str, settings['final_seeds']))}), "
        "each trained on all seen classes with the epochs and EC weight chosen on validation classes (below). "
        "Seen R@1 is Recall@1 on images of the seen classes held out of training "
        f"({', '.join(f'{d} {n}' for d, n in results.get('seen_test_per_class', {}).items())} a class); "
        "gap = seen R@1 − unseen R@1, new images of known classes against images of new classes.",
        "",
    ]
    for dataset in settings["datasets"]:
        lines += [f"### {dataset}", "",
                  "| loss | EC λ | epochs | R@1 | R@2 | R@4 | R@8 | NMI | MAP@R | seen R@1 | gap |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for loss in settings["losses"]:
            entry = summary[f"{dataset}/{loss}"]
            for side in ("off", "on"):
                stats_ = entry[side]
                weight = "0 (off)" if side == "off" else f"{entry['ec_weight']:g}"
                cells = [_pm(stats_[m]) for m in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")]
                lines.append(f"| {loss} | {weight} | {entry['epochs']} | " + " | ".join(cells)
                             + f" | {_pm(stats_['seen_recall@1'])} | {_pm(stats_['gap_recall@1'])} |")
        lines.append("")
    lines += [
        "### Paired differences, EC on − off (same seed)",
        "",
        f"Mean difference in percentage points with its 95% t confidence interval (n = {n}, {n - 1} degrees of "
        "freedom) and the paired t-test p-value of R@1 / MAP@R.",
        "",
        "| dataset | loss | λ | ΔR@1 | ΔR@8 | ΔNMI | ΔMAP@R | Δseen R@1 | p (R@1) | p (MAP@R) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in settings["datasets"]:
        for loss in settings["losses"]:
            entry = summary[f"{dataset}/{loss}"]
            diff = entry["diff"]
            cells = [_ci(diff[m]) for m in ("recall@1", "recall@8", "nmi", "map@r", "seen_recall@1")]
            ps = [_p(diff[m]["p_value"]) for m in ("recall@1", "map@r")]
            lines.append(f"| {dataset} | {loss} | {entry['ec_weight']:g} | " + " | ".join(cells + ps) + " |")
    lines += [
        "",
        "### Tuning on validation classes (never on unseen classes)",
        "",
        f"Validation: {settings['val_classes']['digits']} of the 5 seen digits classes and "
        f"{settings['val_classes']['glyphs']} of the 52 seen glyphs classes held out of training, drawn anew for each "
        f"tuning seed ({', '.join(map(str, settings['tune_seeds']))}; the final seeds are different). "
        f"Score: validation MAP@R (%), mean over the tuning seeds. {settings['selection']} Epoch grids: "
        + "; ".join(f"{d} {{{', '.join(map(str, g))}}}" for d, g in settings["epoch_grid"].items())
        + ". EC weight grids: "
        + "; ".join(f"{d} {{{', '.join(f'{w:g}' for w in g)}}}" for d, g in settings["ec_grid"].items())
        + ("" if len({tuple(g) for g in settings["ec_grid"].values()}) == 1 else
           " (glyphs: 3 weights instead of 5, to keep the study near an hour on two shared cores).")
        + " Each tuning seed holds out its own validation classes.",
        "",
        "| dataset | loss | baseline val MAP@R by epochs | chosen epochs | EC val MAP@R by λ (baseline at chosen epochs) | chosen λ |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in settings["datasets"]:
        for loss in settings["losses"]:
            s = search[f"{dataset}/{loss}"]
            ep, wt = s["epochs"], s["ec_weight"]
            ep_cells = ", ".join(f"{e}: {v * 100:.1f}" for e, v in ep["val_map@r_mean"].items())
            wt_cells = ", ".join(f"{w}: {v * 100:.1f}" for w, v in wt["val_map@r_mean"].items())
            lines.append(f"| {dataset} | {loss} | {ep_cells} | **{ep['chosen']}** | {wt_cells} "
                         f"(0: {wt['baseline_val_map@r_mean'] * 100:.1f}) | **{wt['chosen']:g}** |")
    lines += ["", "Per-seed validation scores, the validation classes of each tuning seed and every run's metrics "
              "are in `study.json` (`search`, `runs`).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- checkpoints


def ship_checkpoints(results: dict[str, Any], study: Study, target: Path, log) -> list[str]:
    """Copy each (dataset, loss) pair's seed-0 runs, EC off and on, without trainer states; write a README."""
    target.mkdir(parents=True, exist_ok=True)
    seed = results["settings"]["final_seeds"][0]
    shipped = []
    rows = []
    for key, entry in results["summary"].items():
        dataset, loss = key.split("/")
        for weight in (0.0, entry["ec_weight"]):
            name = final_name(dataset, loss, weight, seed)
            source = study.final_dir(dataset, loss, weight, seed)
            destination = target / name
            if destination.exists():
                shutil.rmtree(destination)
            destination.mkdir()
            for file in SHIPPED_FILES:
                shutil.copy2(source / file, destination / file)
            if (source / FILM_FOLDER).is_dir():
                shutil.copytree(source / FILM_FOLDER, destination / FILM_FOLDER)  # the training film, if any
            shipped.append(name)
            record = next(r for r in results["runs"] if r["name"] == name)
            # Pin the per-dataset defaults too, so the command keeps making this run if those defaults change.
            resolved = json.loads((source / "config.json").read_text())
            values = {**final_config(study.plan, dataset, loss, weight, seed, entry["epochs"]),
                      **{k: resolved[k] for k in PINNED_KEYS}}
            command = train_command(values, f"checkpoints/{name}")
            size = sum(f.stat().st_size for f in destination.rglob("*") if f.is_file())
            rows.append((name, record, command, size))
            log(f"shipped {destination} ({size / 1e6:.2f} MB)")
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
    for stale in sorted(target.iterdir()):
        # A run folder of an earlier study (e.g. another chosen λ) would be shown beside this study's runs.
        if stale.is_dir() and (stale / "config.json").is_file() and stale.name not in shipped:
            shutil.rmtree(stale)
            log(f"removed {stale} (not a run of this study)")
    (target / "README.md").write_text("\n".join(lines))
    write_featured(results, target / "featured.json", log)
    return shipped


def write_featured(results: dict[str, Any], path: Path, log) -> None:
    """featured.json: the digits pair whose EC effect on unseen MAP@R is the largest (mean paired difference).

    A choice of which comparison to show first, made after the study and said in
    the file, not a hyper-parameter: every pair is shipped and every number is in
    results/study.md.
    """
    seed = results["settings"]["final_seeds"][0]
    candidates = {k: v for k, v in results["summary"].items() if k.startswith(FEATURED_DATASET + "/")}
    key = max(candidates, key=lambda k: candidates[k]["diff"]["map@r"]["mean"])
    entry = candidates[key]
    dataset, loss = key.split("/")
    diff = entry["diff"]
    n = diff["map@r"]["n"]

    def points(metric: str) -> str:
        low, high = diff[metric]["ci95"]
        return f"{diff[metric]['mean'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"

    why = (f"The pair the app opens on: of the {FEATURED_DATASET} pairs (the ones with a training film), {dataset} with "
           f"the {loss} loss is where the study measured the largest mean effect of Energy Confusion on unseen MAP@R "
           f"(EC λ = {entry['ec_weight']:g} against off, paired over {n} seeds, 95% interval: Recall@1 "
           f"{points('recall@1')}, NMI {points('nmi')}, MAP@R {points('map@r')} points; see results/study.md).")
    runs = [final_name(dataset, loss, weight, seed) for weight in (0.0, entry["ec_weight"])]
    path.write_text(json.dumps({"runs": runs, "why": why}, indent=2, ensure_ascii=False) + "\n")
    log(f"featured pair: {', '.join(runs)}")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Tunes epochs and the EC weight on validation classes, then trains "
        "5 seeds with EC off/on for each dataset and base loss, and writes study.json and study.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--out", required=True, help="folder for study.json and study.md (e.g. results/)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at a time, each single-threaded (default 2)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid and 2 final seeds: a dry run of the whole flow")
    parser.add_argument("--work", help="run directories (default runs/study, or runs/study-quick with --quick)")
    parser.add_argument("--checkpoints", help="copy the seed-0 pairs here (default checkpoints/; none with --quick)")
    parser.add_argument("--no-checkpoints", action="store_true", help="do not copy any checkpoints")
    parser.add_argument("--render-only", action="store_true", help="only re-render OUT/study.md from OUT/study.json")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def _timings_since(work: Path, started: float) -> int:
    """Runs that finished training after ``started`` (from timings.jsonl)."""
    path = work / "timings.jsonl"
    if not path.exists():
        return 0
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for r in records if r.get("finished", 0) >= started and r.get("state") != "skipped")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        results = json.loads((out / "study.json").read_text())
        (out / "study.md").write_text(render_markdown(results))
        print(f"wrote {out / 'study.md'}")
        return 0
    plan = QUICK if args.quick else FULL
    work = Path(args.work) if args.work else ROOT / "runs" / ("study-quick" if args.quick else "study")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/study.py --out results/ --jobs 2" if not args.quick else "python scripts/study.py --out OUT --quick"
    given = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log_path = work / "study.log"

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    log(f"study: scripts/study.py {given} (work dir {work})")
    study = Study(plan, work)
    started = time.time()
    invocations = work / "invocations.jsonl"
    trained: list[dict[str, Any]] = []
    try:
        trained = run_all(study, args.jobs, log)
    except KeyboardInterrupt:
        return 130
    finally:
        # Every invocation's wall time is kept, an interrupted one's too, so a resumed study adds up its parts.
        wall = time.time() - started
        finished_here = _timings_since(work, started)
        with open(invocations, "a") as handle:
            handle.write(json.dumps({"args": given, "started": started, "wall_seconds": wall,
                                     "runs_trained": max(len([r for r in trained if r["state"] != "skipped"]),
                                                         finished_here)}) + "\n")
    history = [json.loads(line) for line in invocations.read_text().splitlines() if line.strip()]
    run_seconds = [json.loads(line)["seconds"] for line in (work / "timings.jsonl").read_text().splitlines()
                   if line.strip()] if (work / "timings.jsonl").exists() else []
    timing = {
        "jobs": args.jobs,
        "wall_seconds_total": sum(h["wall_seconds"] for h in history if h["runs_trained"] > 0) or wall,
        "wall_seconds_this_invocation": wall,
        "invocations": len([h for h in history if h["runs_trained"] > 0]),
        "run_seconds_total": float(sum(run_seconds)),
        "note": "wall time summed over the invocations that trained runs (an interrupted study adds up its parts)",
    }
    results = build_results(study, command, timing)
    (out / "study.json").write_text(json.dumps(results, indent=1) + "\n")
    # The markdown is rendered from the JSON as written, so its numbers are the JSON's.
    (out / "study.md").write_text(render_markdown(json.loads((out / "study.json").read_text())))
    log(f"wrote {out / 'study.json'} and {out / 'study.md'} ({wall / 60:.1f} min this invocation)")
    target = None if args.no_checkpoints else (args.checkpoints or (None if args.quick else str(ROOT / "checkpoints")))
    if target:
        ship_checkpoints(results, study, Path(target), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
