#!/usr/bin/env python
"""How long opening a benchmark-sized dataset takes: first load (every image checked) vs later loads (cached).

    python benchmarks/dataset_load.py                       # 60,000 images in the SOP layout, 12,000 classes
    python benchmarks/dataset_load.py --images 120000 --keep /tmp/sop-tree

Writes a Stanford Online Products tree (``Ebay_train.txt`` / ``Ebay_test.txt``,
``<category>_final/<product>_<n>.JPG``, tiny JPEGs) into a temporary folder, then
times ``ecaml.data.load_split("sop", ...)`` (index files, the split, and the check
that every image decodes) three times in fresh processes, each with the same
image-check cache folder:

* ``first``:  empty cache: every image is decoded (in a process pool);
* ``second``: the cache holds every file's (size, mtime): nothing is decoded;
* ``touched``: 1% of the files rewritten: only those are decoded again.

Each load runs in its own ``python`` process, as a training run, a DDP rank or
the app would; "in process" is the load itself (the library is imported before
the clock starts), "whole process" includes starting Python and importing torch.
Prints one table and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler",
              "table", "toaster")
# The library is imported before the clock starts: a process that loads a dataset (training,
# a DDP rank, the app) has torch and ecaml imported anyway, and import time is not the dataset's.
LOAD = ("import sys, time; sys.path.insert(0, {root!r}); import ecaml.serve.retrieval; "
        "from ecaml.data import load_split; started = time.perf_counter(); split = load_split('sop', {data!r}); "
        "print(time.perf_counter() - started, len(split.dataset), len(split.unseen_classes))")


def write_tree(folder: Path, images: int, per_class: int) -> None:
    """An SOP-layout tree of ``images`` tiny JPEGs, ``per_class`` per product, half the products in each file."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(64):  # a few distinct images, written many times (each file is still decoded on its own)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
        variants.append(buffer.getvalue())
    classes = -(-images // per_class)
    lines = {"train": [], "test": []}
    for class_index in range(classes):
        part = "train" if class_index < classes // 2 else "test"
        category = CATEGORIES[class_index % len(CATEGORIES)]
        (folder / f"{category}_final").mkdir(parents=True, exist_ok=True)
        for n in range(min(per_class, images - class_index * per_class)):
            relative = f"{category}_final/{100000000000 + class_index}_{n}.JPG"
            (folder / relative).write_bytes(variants[(class_index + n) % len(variants)])
            lines[part].append(f"{len(lines[part]) + 1} {class_index + 1} {class_index % len(CATEGORIES) + 1} {relative}")
    for part, rows in lines.items():
        (folder / f"Ebay_{part}.txt").write_text("image_id class_id super_class_id path\n" + "\n".join(rows) + "\n")


def timed_load(data: Path, cache: Path) -> tuple[float, float]:
    """(seconds inside the process, seconds of the whole process) for one load_split in a fresh interpreter."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", LOAD.format(root=str(ROOT), data=str(data))],
                            capture_output=True, text=True, env={**os.environ, "ECAML_CACHE_DIR": str(cache)}, check=True)
    return float(result.stdout.split()[0]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the tree here (and keep it) instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = args.keep or Path(scratch) / "Stanford_Online_Products"
        cache = Path(scratch) / "cache"
        started = time.perf_counter()
        if not (data / "Ebay_test.txt").exists():
            write_tree(data, args.images, args.per_class)
        written = time.perf_counter() - started
        first = timed_load(data, cache)
        second = timed_load(data, cache)
        paths = sorted(data.glob("*_final/*.JPG"))[:: 100]
        for path in paths:  # a new version of 1% of the files: new bytes, new size and mtime
            path.write_bytes(path.read_bytes() + b"\0")
        touched = timed_load(data, cache)
    report = {"images": args.images, "cpus": os.cpu_count(), "write_tree_s": round(written, 1),
              "first_load_s": round(first[0], 2), "second_load_s": round(second[0], 2),
              "touched_1pct_load_s": round(touched[0], 2), "first_over_second": round(first[0] / second[0], 1)}
    print(f"{'load':<22}{'in process (s)':>16}{'whole process (s)':>20}")
    for name, (inside, whole) in (("first (cold cache)", first), ("second (cached)", second),
                                  ("1% of files changed", touched)):
        print(f"{name:<22}{inside:>16.2f}{whole:>20.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
