#!/usr/bin/env python
"""Evaluation speed against pytorch-metric-learning, and against this machine's floor.

    python benchmarks/eval_speed.py            # SOP's test shape: 60,502 x 512, 11,316 classes
    python benchmarks/eval_speed.py --quick    # 15,000 x 512, 2,800 classes (same class sizes)

On one array of clustered unit vectors, in one process:

* ecaml: ``retrieval_metrics`` with Recall@1/10/100/1000, MAP@R, R-Precision and NMI
  (default k-means settings), and once more without NMI (the search alone);
* pml: ``AccuracyCalculator`` with P@1, MAP@R, R-Precision and NMI, ``k="max_bin_count"``,
  given the same unit vectors (so it ranks by cosine too);
* the floor: the exact search's N^2 d multiply-adds over the GEMM rate measured here on
  the same block shape the search uses;
* faiss ``IndexFlatIP`` against ``ecaml.eval.search.exact_topk`` on a sample of queries at
  k = 10 and k = 1000 (why the exact search does not use faiss).
"""

from __future__ import annotations

import sys

from common import best_seconds, clustered_unit_embeddings, pick, seconds, run_alone  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ecaml.eval.kmeans import kmeans_settings  # noqa: E402
from ecaml.eval.metrics import retrieval_metrics  # noqa: E402
from ecaml.eval.search import BLOCK_ENTRIES, default_device, exact_topk  # noqa: E402

MATCHED = (("recall@1", "precision_at_1"), ("map@r", "mean_average_precision_at_r"), ("r_precision", "r_precision"))
TOLERANCE = 1e-6


def shape(scale: str) -> tuple[int, int, int]:
    return pick(scale, full=(60_502, 512, 11_316), quick=(15_000, 512, 2_800), tiny=(1_200, 32, 220))


def gemm_rate(vectors: np.ndarray) -> float:
    """Multiply-adds per second of one search block (the rows that fit in BLOCK_ENTRIES) times the whole set."""
    device = default_device()
    gallery = torch.from_numpy(vectors).to(device)
    rows = max(1, min(len(vectors), BLOCK_ENTRIES // len(vectors)))
    block = gallery[:rows].clone()
    best = best_seconds(lambda: block @ gallery.T, repeats=5)
    return rows * len(vectors) * vectors.shape[1] / best


def faiss_vs_blocked(vectors: np.ndarray, sample: int) -> dict:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    queries = vectors[:sample]
    result = {"queries": sample}
    for k in (10, 1000):
        k = min(k, len(vectors) - 1)
        faiss_s = best_seconds(lambda: index.search(queries, k), repeats=2)
        blocked_s = best_seconds(lambda: exact_topk(queries, vectors, k), repeats=2)
        result[f"k{k}"] = {"faiss_ms_per_query": 1000 * faiss_s / sample,
                           "blocked_ms_per_query": 1000 * blocked_s / sample, "blocked_speedup": faiss_s / blocked_s}
    return result


def measure(scale: str = "full") -> dict:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    count, dim, classes = shape(scale)
    # spread 2.5 gives SOP-like difficulty (Recall@1 about 0.6, MAP@R about 0.3 at 15,000 points).
    vectors, labels = clustered_unit_embeddings(count, dim, classes, seed=0, spread=2.5)
    recall_ks = tuple(k for k in (1, 10, 100, 1000) if k < count)
    rate = gemm_rate(vectors)
    floor_s = float(count) * count * dim / rate

    ecaml_s, ours = seconds(lambda: retrieval_metrics(vectors, labels, recall_ks=recall_ks, nmi=True, seed=0))
    search_s, _ = seconds(lambda: retrieval_metrics(vectors, labels, recall_ks=recall_ks, nmi=False))
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
                                    k="max_bin_count", device=torch.device("cpu"))
    pml_s, theirs = seconds(lambda: calculator.get_accuracy(torch.from_numpy(vectors), torch.from_numpy(labels)))

    differences = {ours_key: abs(ours[ours_key] - theirs[pml_key]) for ours_key, pml_key in MATCHED}
    return {
        "shape": {"count": count, "dim": dim, "classes": classes},
        "recall_ks": list(recall_ks),
        "device": str(default_device()),
        "ecaml_s": ecaml_s,
        "ecaml_search_s": search_s,
        "ecaml_nmi_s": ecaml_s - search_s,
        "pml_s": pml_s,
        "speedup_vs_pml": pml_s / ecaml_s,
        "metrics_match": all(d <= TOLERANCE for d in differences.values()),
        "abs_differences": differences,
        "ecaml": ours,
        "pml": {key: float(value) for key, value in theirs.items()},
        "kmeans_settings": kmeans_settings(count, classes, dim),
        "gemm_gmacs_per_s": rate / 1e9,
        "floor_s": floor_s,
        "search_vs_floor": search_s / floor_s,
        "total_vs_floor": ecaml_s / floor_s,
        "faiss_vs_blocked": faiss_vs_blocked(vectors, sample=min(count, pick(scale, 2048, 1024, 200))),
    }


def summary(result: dict) -> list[tuple[str, str, str]]:
    s = result["shape"]
    shape_text = f"{s['count']:,} x {s['dim']}, {s['classes']:,} classes"
    return [
        ("eval: ecaml metrics", f"{result['ecaml_s']:.1f} s", f"{shape_text}; search {result['ecaml_search_s']:.1f} s, "
                                                           f"NMI {result['ecaml_nmi_s']:.1f} s"),
        ("eval: pml AccuracyCalculator", f"{result['pml_s']:.1f} s", "P@1, MAP@R, R-Precision, NMI, k=max_bin_count"),
        ("eval: speed-up vs pml", f"{result['speedup_vs_pml']:.2f}x",
         "P@1/MAP@R/R-Prec equal to 1e-6: " + ("yes" if result["metrics_match"] else "NO")),
        ("eval: search vs floor", f"{result['search_vs_floor']:.2f}x",
         f"floor {result['floor_s']:.1f} s = N^2 d at {result['gemm_gmacs_per_s']:.0f} GMAC/s"),
    ]


def main(argv=None) -> int:
    return run_alone(measure, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
