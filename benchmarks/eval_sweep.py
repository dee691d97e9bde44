#!/usr/bin/env python
"""Evaluation speed against pytorch-metric-learning over a sweep of difficulty and shape.

    python benchmarks/eval_sweep.py                       # every point, full shapes, 2 repeats
    python benchmarks/eval_sweep.py --scale quick         # shapes / 4 (same class sizes)
    python benchmarks/eval_sweep.py --points 30k-realistic fashion --repeats 3

The arrays are drawn by ``drawn_data`` (skewed class sizes, heavy-tailed centres and noise,
and real Fashion-MNIST pixels), not by the project's own generator. At each point, in one
process, interleaved ``--repeats`` times: ecaml's ``retrieval_metrics`` (Recall@1/10/100/1000,
MAP@R, R-Precision, NMI) and pml's ``AccuracyCalculator`` (P@1, MAP@R, R-Precision, NMI,
``k="max_bin_count"``) on the same unit vectors. Every time is printed with the metric values
beside it, the ratio of each repeat, and whether P@1 / MAP@R / R-Precision are equal to 1e-6.
For the deep-R point the exact search alone (``nmi=False``) is also timed against the GEMM
floor: N^2 d multiply-adds at the rate measured here, in the same repeats, on the search's
block shape.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import machine  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from drawn_data import drawn_embeddings, fashion_mnist  # noqa: E402
from ecaml.eval.metrics import retrieval_metrics  # noqa: E402
from ecaml.eval.search import BLOCK_ENTRIES  # noqa: E402

# name: (count, dim, classes, difficulty); difficulty "fashion" is Fashion-MNIST itself.
POINTS = {
    "30k-separated": (30_000, 512, 5_600, "separated"),
    "30k-realistic": (30_000, 512, 5_600, "realistic"),
    "30k-overlapping": (30_000, 512, 5_600, "overlapping"),
    "60k-realistic": (60_502, 512, 11_316, "realistic"),
    "fashion": (40_000, 128, 10, "fashion"),
}
SCALE_DIVISORS = {"full": 1, "quick": 4, "tiny": 40}
RECALL_KS = (1, 10, 100, 1000)
MATCHED = (("recall@1", "precision_at_1"), ("map@r", "mean_average_precision_at_r"), ("r_precision", "r_precision"))
TOLERANCE = 1e-6


def point_data(name: str, divisor: int):
    count, dim, classes, difficulty = POINTS[name]
    if difficulty == "fashion":
        return fashion_mnist(count // divisor, dim)
    return drawn_embeddings(count // divisor, dim, classes // divisor, difficulty)


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def gemm_seconds(vectors: np.ndarray) -> float:
    """Seconds of the exact search's N^2 d multiply-adds, from one block of the search's shape."""
    gallery = torch.from_numpy(vectors)
    rows = max(1, min(len(vectors), BLOCK_ENTRIES // len(vectors)))
    block = gallery[:rows].clone()
    seconds, _ = timed(lambda: block @ gallery.T)
    return seconds * len(vectors) / rows


def measure_point(name: str, divisor: int, repeats: int) -> dict:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    vectors, labels = point_data(name, divisor)
    ks = tuple(k for k in RECALL_KS if k < len(vectors))
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
                                    k="max_bin_count", device=torch.device("cpu"))
    deep = POINTS[name][3] == "fashion"
    rounds = []
    for repeat in range(repeats):
        # Alternate who goes first, so that neither side always meets the same neighbours' load.
        sides = ["ecaml", "pml"] if repeat % 2 == 0 else ["pml", "ecaml"]
        record = {"load_1min": round(os.getloadavg()[0], 2)}
        for side in sides:
            if side == "ecaml":
                record["ecaml_s"], record["ecaml"] = timed(
                    lambda: retrieval_metrics(vectors, labels, recall_ks=ks, nmi=True, seed=repeat))
            else:
                seconds, theirs = timed(
                    lambda: calculator.get_accuracy(torch.from_numpy(vectors), torch.from_numpy(labels)))
                record["pml_s"], record["pml"] = seconds, {key: float(value) for key, value in theirs.items()}
        if deep:
            record["search_s"], _ = timed(lambda: retrieval_metrics(vectors, labels, recall_ks=ks, nmi=False))
            record["floor_s"] = gemm_seconds(vectors)
        record["speedup"] = record["pml_s"] / record["ecaml_s"]
        record["equal"] = all(abs(record["ecaml"][ours] - record["pml"][theirs]) <= TOLERANCE
                              for ours, theirs in MATCHED)
        print_round(name, vectors, labels, repeat, record)
        rounds.append(record)
    return {"point": name, "shape": [len(vectors), vectors.shape[1], int(len(np.unique(labels)))], "rounds": rounds}


def print_round(name, vectors, labels, repeat, record) -> None:
    ours, theirs = record["ecaml"], record["pml"]
    shape = f"{len(vectors):,} x {vectors.shape[1]}, {len(np.unique(labels)):,} classes"
    print(f"{name} [{shape}] repeat {repeat + 1} (load {record['load_1min']}):", flush=True)
    print(f"  ecaml {record['ecaml_s']:7.1f} s  R@1 {ours['recall@1']:.4f}  MAP@R {ours['map@r']:.4f}  "
          f"R-Prec {ours['r_precision']:.4f}  NMI {ours['nmi']:.4f}", flush=True)
    print(f"  pml   {record['pml_s']:7.1f} s  P@1 {theirs['precision_at_1']:.4f}  "
          f"MAP@R {theirs['mean_average_precision_at_r']:.4f}  R-Prec {theirs['r_precision']:.4f}  "
          f"NMI {theirs['NMI']:.4f}", flush=True)
    line = f"  pml / ecaml {record['speedup']:.2f}x; P@1, MAP@R, R-Prec equal to 1e-6: {'yes' if record['equal'] else 'NO'}"
    if "floor_s" in record:
        line += (f"; search alone {record['search_s']:.1f} s = {record['search_s'] / record['floor_s']:.2f}x "
                 f"the GEMM floor ({record['floor_s']:.1f} s)")
    print(line, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALE_DIVISORS), default="full")
    parser.add_argument("--points", nargs="+", choices=tuple(POINTS), default=list(POINTS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    results = [measure_point(name, SCALE_DIVISORS[args.scale], max(1, args.repeats)) for name in args.points]
    for result in results:
        ratios = [record["speedup"] for record in result["rounds"]]
        print(f"{result['point']}: pml / ecaml {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} repeats")
    print(json.dumps({"machine": machine(), "scale": args.scale, "points": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
