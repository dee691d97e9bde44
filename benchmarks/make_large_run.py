#!/usr/bin/env python
"""Generate a large image-folder data set and a briefly trained EC-off / EC-on pair on it, for trying the app at scale.

    python benchmarks/make_large_run.py --out /tmp/ecaml-large              # 60,000 unseen images (minutes)
    python benchmarks/make_large_run.py --out /tmp/e2e --unseen-images 20000 --steps 10

Writes OUT/data/<class>/<n>.png (tiny synthetic images: each class a random
blocky pattern, each image that pattern shifted, contrast-jittered and noisy,
so a network can learn something in a few steps), then trains two smallcnn runs
on it into OUT/checkpoints/ (``large-ec0``, ``large-ec0.6``; triplet loss, one
process each, at once). Unseen classes (a folder's fixed split: the second half of the sorted
class names) get ``--unseen-images`` images in all; seen classes only a few each, so
training and its final evaluation stay short. Point the app at it with
``ECAML_CHECKPOINTS_DIR=OUT/checkpoints``. Not part of CI (too slow); the
browser test uses a smaller instance through ``make_large_runs``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ecaml.data.folder import sorted_half_split  # noqa: E402

RUN_NAMES = {"large-ec0": "0", "large-ec0.6": "0.6"}
IMAGE_PIXELS = 12
SEEN_PER_CLASS = 8


def write_image_folder(root: Path, classes: int, unseen_images: int, seed: int = 0) -> dict:
    """The data folder; the unseen classes (a folder's fixed split: the second half of the sorted class names) share
    ``unseen_images`` images, the seen ones a few each."""
    unseen = sorted_half_split(classes).unseen_classes
    per_unseen = -(-unseen_images // len(unseen))
    rng = np.random.default_rng(seed)
    written = 0
    unseen_set = set(unseen)
    for label in range(classes):
        folder = root / f"class{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pattern = rng.random((4, 4, 3))
        big = np.kron(pattern, np.ones((IMAGE_PIXELS // 4, IMAGE_PIXELS // 4, 1)))
        count = per_unseen if label in unseen_set else SEEN_PER_CLASS
        for number in range(count):
            shifted = np.roll(big, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
            image = shifted * rng.uniform(0.7, 1.0) + rng.normal(0, 0.08, shifted.shape)
            pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{number:05d}.png", compress_level=1)
            written += 1
    return {"classes": classes, "unseen_classes": len(unseen), "unseen_images": per_unseen * len(unseen),
            "images": written}


def train_pair(data: Path, checkpoints: Path, steps: int, film_every: int = 0) -> None:
    """Both runs at once, one process (one CPU thread) each."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "ecaml", "train", "--dataset", "folder", "--data-root", str(data),
             "--image-size", str(IMAGE_PIXELS), "--loss", "triplet", "--ec-weight", weight, "--max-steps", str(steps),
             "--classes-per-batch", "8", "--images-per-class", "4", "--embedding-dim", "32", "--eval-every", "0",
             "--seed", "0", "--film-every", str(film_every), "--quiet", "--out", str(checkpoints / name)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        for name, weight in RUN_NAMES.items()
    }
    for name, process in processes.items():
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"training {name} failed:\n{output[-2000:]}")


def make_large_runs(
    out: Path, unseen_images: int = 60_000, classes: int = 1000, steps: int = 30, film_every: int = 0
) -> dict:
    """OUT/data and OUT/checkpoints/{large-ec0, large-ec0.6}, made once (a finished OUT is reused); timings."""
    out = Path(out)
    done = out / "made.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    stats = write_image_folder(out / "data", classes, unseen_images)
    stats["write_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    train_pair(out / "data", out / "checkpoints", steps, film_every)
    stats["train_seconds"] = round(time.perf_counter() - started, 1)
    done.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--unseen-images", type=int, default=60_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--film-every", type=int, default=0, help="training-film snapshots every N steps (0: none)")
    args = parser.parse_args()
    stats = make_large_runs(args.out, args.unseen_images, args.classes, args.steps, args.film_every)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
