#!/usr/bin/env python
"""How fast the lesson's live film keeps up with its training pair: frames laid out on 2 torch threads against 1.

    python benchmarks/live_film_pace.py            # the digits lesson twice (about 3 minutes on 2 cores)

Each round starts the app's digits lesson (``app.lesson.start_lesson``: both runs at once, filming as they train)
into a fresh runs folder and grows its film in a thread as the page's job does (``ecaml.serve.film.grow_film``),
with the given number of torch threads in that thread. Prints each frame's time since the start and the step it
shows, then one JSON line: per round, the first frame's time, the frame count and the longest gap.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def one_round(threads: int) -> dict:
    os.environ["ECAML_RUNS_DIR"] = tempfile.mkdtemp(prefix="live-film-pace-")
    import torch

    from app import lesson
    from ecaml.serve.film import grow_film, read_film

    started = time.monotonic()
    folders = lesson.start_lesson("digits")
    frames: list[tuple[float, int]] = []

    def follow() -> None:
        torch.set_num_threads(threads)
        so_far = None
        while lesson.lesson_running(folders) or so_far is None or so_far.steps[-1] < read_final_step(folders):
            grown = grow_film([read_film(Path(folder)) for folder in folders], so_far)
            if grown is not so_far:
                so_far = grown
                frames.append((round(time.monotonic() - started, 1), grown.steps[-1]))
                print(f"  {threads} thread(s): {frames[-1][0]:6.1f} s  step {frames[-1][1]}", flush=True)
            time.sleep(1.0)

    worker = threading.Thread(target=follow)
    worker.start()
    worker.join()
    times = [0.0] + [at for at, _ in frames]
    return {"threads": threads, "first_frame_s": frames[0][0], "frames": len(frames),
            "longest_gap_s": round(max(b - a for a, b in zip(times, times[1:])), 1), "load_1min": os.getloadavg()[0],
            "frames_at": frames}


def read_final_step(folders) -> int:
    from ecaml.store.run_files import read_status

    return min(int((read_status(Path(folder)) or {}).get("step") or 0) for folder in folders)


def main() -> None:
    rounds = [one_round(threads) for threads in (2, 1)]
    print(json.dumps({"rounds": rounds}))


if __name__ == "__main__":
    main()
