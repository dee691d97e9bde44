"""Shared by the benchmarks: scales, timing, the machine's description and generated data.

Every benchmark module has ``measure(scale) -> dict`` (``scale`` one of ``SCALES``) and a
``main()`` so it also runs alone. Generated image folders are written once under
``$ECAML_BENCH_DIR`` (default ``~/.cache/ecaml/bench``) and reused.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# On a machine shared with other jobs, OpenMP threads that spin while waiting for a
# descheduled sibling make torch's and faiss's parallel loops many times slower (measured
# here under a load of 12 on 2 cores: a GoogLeNet step 14 s spinning, 0.55 s passive).
# It only takes effect if set before torch (libgomp) loads, hence here, first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCALES = ("full", "quick", "tiny")
BENCH_DIR_ENV = "ECAML_BENCH_DIR"


def pick(scale: str, full, quick, tiny):
    """The value for ``scale``."""
    return {"full": full, "quick": quick, "tiny": tiny}[scale]


def bench_dir() -> Path:
    configured = os.environ.get(BENCH_DIR_ENV, "").strip()
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "ecaml" / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict:
    """What the figures were measured on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": cpus,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": round(load[0], 2) if load else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(function: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call (GPU work included) and its result."""
    sync()
    started = time.perf_counter()
    result = function()
    sync()
    return time.perf_counter() - started, result


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    return min(seconds(function)[0] for _ in range(repeats))


def clustered_unit_embeddings(count: int, dim: int, classes: int, seed: int = 0, spread: float = 1.0):
    """Unit float32 vectors around ``classes`` random centres, every class present, labels shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % classes)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    vectors = centres[labels] + spread * rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64)


def image_folder(classes: int, per_class: int, size: int, seed: int = 0, suffix: str = "png") -> Path:
    """A generated ``ROOT/<class>/<image>.png`` folder (RGB, ``size`` px), written once and reused.

    Each class is a coloured stripe pattern of its own angle and frequency, with noise, so a
    network can tell them apart and every image differs. ``suffix`` "png" (lossless) or "jpg"
    (quality 90, as photo datasets come).
    """
    root = bench_dir() / f"folder-{classes}x{per_class}-{size}px-seed{seed}-{suffix}"
    done = root / ".complete"
    if done.is_file():
        return root
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for label in range(classes):
        folder = root / f"class{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        angle, frequency = np.pi * label / classes, 2 + label % 5
        pattern = np.sin(2 * np.pi * frequency * (np.cos(angle) * xx + np.sin(angle) * yy))
        colour = rng.uniform(0.3, 1.0, 3)
        for item in range(per_class):
            noise = rng.normal(0, 0.35, (size, size, 1))
            pixels = ((pattern[..., None] + noise) * colour * 100 + 128).clip(0, 255).astype(np.uint8)
            path = folder / f"{item:05d}.{suffix}"
            if suffix == "png":
                Image.fromarray(pixels).save(path, compress_level=1)
            else:
                Image.fromarray(pixels).save(path, quality=90)
    done.write_text("ok\n")
    return root


def table(rows: list[tuple[str, str, str]]) -> str:
    """A plain three-column table: benchmark, figure, note."""
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def run_alone(measure: Callable[[str], dict], summary: Callable[[dict], list], description: str, argv=None) -> int:
    """``main`` of a benchmark module run by itself: its summary rows, then its result as one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="scale")
    args = parser.parse_args(argv)
    result = measure(args.scale)
    for row in summary(result):
        print("  ".join(row))
    print(json.dumps({"machine": machine(), **result}))
    return 0
