#!/usr/bin/env python
"""Re-make the whole ECAML study, and the shipped checkpoints, from scratch.

    python scripts/study.py --out results/ --jobs 2          # the full study (~1 h on 2 cores)
    python scripts/study.py --out /tmp/quick --quick         # a tiny end-to-end dry run (minutes)
    python scripts/study.py --out results/ --losses npair    # re-make the N-pair rows, keep the others

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
   training film of about that many frames (ecaml.serve.film; it changes no weight).
   Summaries: mean +- std (ddof 1) and the paired difference (EC on - off, same
   seed) with a 95% t confidence interval and a paired t-test p-value, raw and
   adjusted by Holm's method over every p-value the study tests (R@1 and MAP@R
   of every row).

3. Outputs: ``OUT/study.json`` (settings, the whole search, every run's
   metrics, summaries, timing) and ``OUT/study.md`` rendered from that JSON
   alone (``--render-only`` re-renders it); the seed-0 run directories of each
   (dataset, loss) pair, EC off and on, are copied into ``--checkpoints``
   (default ``checkpoints/``; not in ``--quick`` mode unless asked), without
   their trainer_state_*.safetensors, with their film when they have one and a
   generated README.md; ``featured.json`` names the pair the app opens on: the
   digits pair (the films are of digits runs) whose chosen EC weight gained most
   on *validation* classes, so the unseen-class effect shown beside it is not
   the largest of several effects picked after the fact. All these files are
   written atomically (the app may be reading them).

``--datasets``/``--losses`` re-make some rows only: their runs are trained (or
found done) and their rows, pairs and checkpoints replace those of OUT/study.json,
whose other rows are kept; Holm's adjustment and featured.json are made again
over the whole study. The parts live in scripts/studykit/ (plan, runner,
statistics, report, shipping).

Runs live in a work directory (default ``runs/study`` or ``runs/study-quick``,
git-ignored). A run whose directory already has metrics.json is not trained
again; an interrupted run is resumed from its last checkpoint when its
config matches, else re-made. So an interrupted study simply continues when
the same command is run again. Every run is seeded and single-threaded on the
CPU, so the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "scripts"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from studykit.plan import FULL, QUICK  # noqa: E402
from studykit.report import render_markdown  # noqa: E402
from studykit.runner import Study, run_all  # noqa: E402
from studykit.shipping import ship_checkpoints  # noqa: E402
from studykit.statistics import build_results, merge_results  # noqa: E402


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
    parser.add_argument("--datasets", help="comma-separated subset of the datasets to (re-)make")
    parser.add_argument("--losses", help="comma-separated subset of the losses to (re-)make")
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


def _write_text(path: Path, text: str) -> None:
    from ecaml.store.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def _command(args: argparse.Namespace) -> str:
    """The command line that study.json says made it (relative paths, as one would type it)."""
    if args.quick:
        return "python scripts/study.py --out OUT --quick"
    subset = "".join(f" --{name} {value}" for name, value in (("datasets", args.datasets), ("losses", args.losses)) if value)
    return "python scripts/study.py --out results/ --jobs 2" + subset


def _timing(work: Path, jobs: int, wall: float) -> dict[str, Any]:
    history = [json.loads(line) for line in (work / "invocations.jsonl").read_text().splitlines() if line.strip()]
    timings = work / "timings.jsonl"
    run_seconds = [json.loads(line)["seconds"] for line in timings.read_text().splitlines() if line.strip()] \
        if timings.exists() else []
    return {
        "jobs": jobs,
        "wall_seconds_total": sum(h["wall_seconds"] for h in history if h["runs_trained"] > 0) or wall,
        "wall_seconds_this_invocation": wall,
        "invocations": len([h for h in history if h["runs_trained"] > 0]),
        "run_seconds_total": float(sum(run_seconds)),
        "note": "wall time summed over the invocations that trained runs (an interrupted study adds up its parts)",
    }


def _train(study: Study, jobs: int, given: str, log) -> float | None:
    """Trains what is missing; the wall time, or None when interrupted."""
    started = time.time()
    trained: list[dict[str, Any]] = []
    try:
        trained = run_all(study, jobs, log)
    except KeyboardInterrupt:
        return None
    finally:
        # Every invocation's wall time is kept, an interrupted one's too, so a resumed study adds up its parts.
        wall = time.time() - started
        runs_trained = max(len([r for r in trained if r["state"] != "skipped"]), _timings_since(study.work, started))
        with open(study.work / "invocations.jsonl", "a") as handle:
            handle.write(json.dumps({"args": given, "started": started, "wall_seconds": wall,
                                     "runs_trained": runs_trained}) + "\n")
    return wall


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        _write_text(out / "study.md", render_markdown(json.loads((out / "study.json").read_text())))
        print(f"wrote {out / 'study.md'}")
        return 0
    full = QUICK if args.quick else FULL
    plan = full.subset(args.datasets and args.datasets.split(","), args.losses and args.losses.split(","))
    work = Path(args.work) if args.work else ROOT / "runs" / ("study-quick" if args.quick else "study")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
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
    wall = _train(study, args.jobs, given, log)
    if wall is None:
        return 130
    results = build_results(study, _command(args), _timing(work, args.jobs, wall))
    if plan.keys() != full.keys() and (out / "study.json").is_file():
        results = merge_results(json.loads((out / "study.json").read_text()), results, plan.keys())
    _write_text(out / "study.json", json.dumps(results, indent=1) + "\n")
    # The markdown is rendered from the JSON as written, so its numbers are the JSON's.
    _write_text(out / "study.md", render_markdown(json.loads((out / "study.json").read_text())))
    log(f"wrote {out / 'study.json'} and {out / 'study.md'} ({wall / 60:.1f} min this invocation)")
    target = None if args.no_checkpoints else (args.checkpoints or (None if args.quick else str(ROOT / "checkpoints")))
    if target:
        ship_checkpoints(results, study, Path(target), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
