"""Training a study's runs, ``jobs`` at a time, and the selection of epochs and EC weight on validation classes.

The state of a study is recomputed from the run directories on disk at any moment, so an interrupted study
continues where it stopped: a run with metrics.json is done, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from studykit.plan import SELECTION_METRIC, Plan, final_config, final_name, tune_config, tune_name


def is_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def run_task(name: str, run_dir: str, values: dict[str, Any]) -> dict[str, Any]:
    """Train one run (in a worker process); resume it if an interrupted copy with the same config exists."""
    from ecaml.config import TrainConfig
    from ecaml.runs import read_config
    from ecaml.store.run_files import RunError
    from ecaml.train.launch import resume, train

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




def eval_lines(run_dir: Path, split: str) -> list[dict[str, Any]]:
    from ecaml.store.run_files import read_history

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
        for dataset, loss in self.plan.rows():
            def add(stage: int, weight: float, seeds, epochs: int) -> None:
                make_dir, make_config = (self.tune_dir, tune_config) if stage < 2 else (self.final_dir, final_config)
                ready.extend((stage, dataset, loss, make_dir(dataset, loss, weight, s),
                              make_config(self.plan, dataset, loss, weight, s, epochs)) for s in seeds)

            add(0, 0.0, self.plan.tune_seeds, max(self.plan.epoch_grid[dataset]))
            epochs = self.chosen_epochs(dataset, loss)
            if epochs is None:
                blocked = True
                continue
            for w in self.plan.ec_grid[dataset]:
                add(1, w, self.plan.tune_seeds, epochs)
            add(2, 0.0, self.plan.final_seeds, epochs)
            weight = self.chosen_weight(dataset, loss)
            if weight is None:
                blocked = True
                continue
            add(2, weight, self.plan.final_seeds, epochs)
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


