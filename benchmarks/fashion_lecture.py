"""The Fashion-MNIST lecture pair: EC off and EC on trained and evaluated at the data set's defaults, both at once.

As the app's lesson runs them: two ``python -m ecaml train`` processes started together (one CPU thread each,
smallcnn's default), triplet loss, seed 0, λ 0 and ``--ec-weight``, a training film every ``--film-every`` steps.
Prints each run's wall time and CPU time (user + sys, from the kernel's accounting of each child), the pair's
wall time, the load average before and after (a shared machine stretches wall time, not CPU time), and the
metrics with EC's difference. ``--validation`` holds 2 of the 5 seen classes out and reports their metrics
instead of the unseen ones': how the defaults were chosen without looking at the test classes. ``--live-film``
also lays out the film while the pair trains, in a thread of this process, as the app's lesson does
(``app/live_film.py``: ``ecaml.serve.film.grow_film``), and reports the frames it drew and their seconds: what
watching the film live costs the training beside it.

    python benchmarks/fashion_lecture.py --out /tmp/lecture [--validation] [--json benchmarks/fashion_lecture.json]
    python benchmarks/fashion_lecture.py --dataset digits --film-every 90 --out /tmp/digits -- --epochs 192
    python benchmarks/fashion_lecture.py --dataset digits --film-every 90 --live-film --out /tmp/live -- --epochs 192

The second is the app's digits lesson (``app/lesson.py``: the featured digits setting for LECTURE_EPOCHS epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@1", "map@r", "nmi")


def start(out: Path, dataset: str, ec_weight: float, film_every: int, validation: bool,
          extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "ecaml", "train", "--dataset", dataset, "--loss", "triplet",
               f"--ec-weight={ec_weight:g}", "--seed", "0", "--device", "cpu", f"--film-every={film_every}",
               "--quiet", "--out", str(out), *extra]
    if validation:
        command += ["--val-classes", "2", "--eval-splits", "none"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(command, cwd=ROOT, env=environment)


def final_metrics(run_dir: Path, part: str) -> dict[str, float]:
    records = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "eval" and r.get("split") == part][-1]


def next_exited(processes: dict[int, str]):
    """(pid, status, usage) of the first of ``processes`` to exit (only these: the live film's libraries may start
    children of their own)."""
    while True:
        for pid in processes:
            found, status, usage = os.wait4(pid, os.WNOHANG)
            if found:
                return found, status, usage
        time.sleep(0.05)


class LiveFilm(threading.Thread):
    """Grows the pair's film while it trains (as the app's lesson does), timing each frame it lays out."""

    def __init__(self, folders: list[Path]):
        super().__init__(daemon=True)
        self.folders, self.done, self.frame_seconds = folders, threading.Event(), []

    def run(self) -> None:
        sys.path.insert(0, str(ROOT))
        from ecaml.serve.film import grow_film, read_film

        so_far = None
        while True:
            ended = self.done.is_set()
            begun = time.perf_counter()
            grown = grow_film([read_film(folder) for folder in self.folders], so_far)
            if grown is not so_far:
                so_far = grown
                self.frame_seconds.append(time.perf_counter() - begun)
            elif ended:
                return
            time.sleep(1.0)

    def report(self) -> dict:
        seconds = sorted(self.frame_seconds)
        return {"frames_drawn": len(seconds), "frame_s_median": round(seconds[len(seconds) // 2], 2) if seconds else None,
                "frame_s_max": round(seconds[-1], 2) if seconds else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the two run directories (must not hold them yet)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"),
                        help="the lecture's data set (default fashion-mnist); digits with -- --epochs N is the app's "
                             "digits lesson")
    parser.add_argument("--ec-weight", type=float, default=1.0, help="λ of the EC-on run (default 1)")
    parser.add_argument("--film-every", type=int, default=70, help="steps between film frames (default 70)")
    parser.add_argument("--validation", action="store_true", help="2 seen classes held out, their metrics reported")
    parser.add_argument("--live-film", action="store_true", help="lay out the film while the pair trains, as the app")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("extra", nargs="*", help="further train flags (after --), e.g. -- --images-per-class 20")
    args = parser.parse_args()
    out = Path(args.out)
    names = {weight: f"{args.dataset}-triplet-ec{weight:g}-seed0" for weight in (0.0, args.ec_weight)}
    load_before, started = os.getloadavg(), time.perf_counter()
    processes = {start(out / name, args.dataset, weight, args.film_every, args.validation, args.extra).pid: name
                 for weight, name in names.items()}
    live = LiveFilm([out / name for name in names.values()]) if args.live_film else None
    if live is not None:
        live.start()
    timings = {}
    while processes:
        pid, status, usage = next_exited(processes)
        name = processes.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"{name} failed (exit {os.waitstatus_to_exitcode(status)})", file=sys.stderr)
            return 1
        timings[name] = {"wall_s": round(time.perf_counter() - started, 1), "user_s": round(usage.ru_utime, 1),
                         "sys_s": round(usage.ru_stime, 1)}
    pair_wall_s = round(time.perf_counter() - started, 1)
    if live is not None:  # its last frame is laid out after the pair ends: not part of the pair's wall time
        live.done.set()
        live.join()
    part = "val" if args.validation else "unseen"
    report = {"pair_wall_s": pair_wall_s, "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": len(os.sched_getaffinity(0)),
              "part": part, "runs": {}}
    for name in names.values():
        metrics = final_metrics(out / name, part)
        report["runs"][name] = {**timings[name], **{key: round(metrics[key], 4) for key in METRICS}}
    off, on = (report["runs"][name] for name in names.values())
    report["ec_difference"] = {key: round(on[key] - off[key], 4) for key in METRICS}
    if live is not None:
        report["live_film"] = live.report()
        print(f"live film: {report['live_film']}")
    for name, row in report["runs"].items():
        print(f"{name}: wall {row['wall_s']} s, CPU {row['user_s'] + row['sys_s']:.1f} s (user {row['user_s']}, "
              f"sys {row['sys_s']}); {part} " + ", ".join(f"{key} {row[key]:.4f}" for key in METRICS))
    print(f"pair: wall {report['pair_wall_s']} s on {report['cpus']} CPUs, load average {report['load_before'][0]} "
          f"before, {report['load_after'][0]} after; EC - off: "
          + ", ".join(f"{key} {value:+.4f}" for key, value in report["ec_difference"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
