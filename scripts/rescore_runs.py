"""Re-score finished runs with today's evaluator, weights unchanged.

When the evaluator changes (as when NMI moved to one seeded Lloyd k-means at every split size), runs trained
before the change hold metrics that today's code would not compute from their weights. This re-computes each
run's unseen-class metrics from its ``model.safetensors`` and rewrites ``metrics.json`` and the last unseen
evaluation of ``history.jsonl`` (each atomically); nothing is re-trained. The study then re-collects them:

    python scripts/rescore_runs.py runs/study/final/*-npair-*
    python scripts/study.py --out results/ --datasets digits,glyphs --losses npair
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ecaml.data import load_split  # noqa: E402
from ecaml.eval.evaluate import embed_part, score  # noqa: E402
from ecaml.runs import input_channels, load_run  # noqa: E402
from ecaml.store.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from ecaml.store.run_files import HISTORY_FILE, METRICS_FILE  # noqa: E402

_split = functools.lru_cache(maxsize=None)(load_split)  # one split per data set for all its runs


def rescored_metrics(run_dir: Path) -> dict[str, float]:
    run = load_run(run_dir)
    config = run.config
    split = _split(config.dataset, config.data_root, config.val_classes, config.split_seed)
    embeddings = embed_part(run.model.cpu(), split, "unseen", config, input_channels(config), torch.device("cpu"))
    return score(embeddings, config.recall_ks)


def with_last_unseen_record(history: str, metrics: dict[str, float]) -> str:
    """``history`` (JSON lines) with its last unseen evaluation carrying ``metrics``."""
    lines = history.splitlines()
    records = [json.loads(line) for line in lines]
    unseen = [i for i, r in enumerate(records) if r.get("kind") == "eval" and r.get("split") == "unseen"]
    if not unseen:
        raise ValueError("no unseen evaluation in the history")
    lines[unseen[-1]] = json.dumps({**records[unseen[-1]], **metrics})
    return "\n".join(lines) + "\n"


def rescore(run_dir: Path) -> dict[str, tuple[float, float]]:
    """Rewrite ``run_dir``'s metrics with today's evaluator; the (old, new) values that changed."""
    old = json.loads((run_dir / METRICS_FILE).read_text())
    metrics = rescored_metrics(run_dir)
    if set(old) != set(metrics):
        raise ValueError(f"{run_dir.name}: metrics.json holds {sorted(old)}, the evaluator {sorted(metrics)}")
    history = with_last_unseen_record((run_dir / HISTORY_FILE).read_text(), metrics)
    atomic_write_bytes(run_dir / HISTORY_FILE, history.encode())
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return {key: (old[key], metrics[key]) for key in metrics if old[key] != metrics[key]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    for run_dir in parser.parse_args().runs:
        changed = rescore(run_dir)
        print(run_dir.name, ", ".join(f"{k} {a:.4f} -> {b:.4f}" for k, (a, b) in changed.items()) or "unchanged")


if __name__ == "__main__":
    main()
