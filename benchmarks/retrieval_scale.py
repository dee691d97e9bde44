#!/usr/bin/env python
"""Retrieval at benchmark scale: query latency and memory with four SOP-sized galleries loaded (not a test).

    python benchmarks/make_large_run.py --out /tmp/ecaml-large      # once: a run on 60,000 unseen images
    python benchmarks/retrieval_scale.py --run /tmp/ecaml-large/checkpoints/large-ec0 --out benchmarks/retrieval_scale.json

Stanford Online Products' test split has 60,502 images and a ResNet-50 embedding is 512-d. For each of four
"runs" this writes 60,000 unit vectors of 512 dimensions (seeded) into the embeddings cache exactly as
``cached_embeddings`` does, then loads them the way the Retrieval page does (``cached_embeddings`` reads the
cache as a read-only memory map; ``RunIndex`` keeps the one in-memory copy in faiss), and reports:

* p50 / p95 / max of ``RunIndex.query_by_index`` (k = 8) over 500 seeded queries per run;
* with ``--disagreement``, ``disagreement_queries`` over the four runs (the page's opening query), once;
* the process's resident memory (and its anonymous part, which the page cache cannot reclaim) before and after
  the four indexes are loaded, alongside the run objects and the split, as the app holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ecaml.eval.evaluate import Embeddings, split_for  # noqa: E402
from ecaml.runs import load_run  # noqa: E402
from ecaml.serve import embeddings_cache, retrieval  # noqa: E402

DIMENSIONS = 512
RUNS = 4
QUERIES = 500


def memory_mb() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            values[name] = round(int(rest.split()[0]) / 1024, 1)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run on a split with many unseen images")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "retrieval_scale.json")
    parser.add_argument("--disagreement", action="store_true", help="also time the disagreement ranking (minutes)")
    args = parser.parse_args()
    run = load_run(args.run)
    split = split_for(run.config)
    unseen = split.indices("unseen")
    labels = split.dataset.labels[unseen]
    results = {"command": " ".join(["python", "benchmarks/retrieval_scale.py", *sys.argv[1:]]),
               "cores": os.cpu_count(), "gallery": len(unseen), "dimensions": DIMENSIONS, "runs": RUNS,
               "memory_before_mb": memory_mb()}
    cache = Path(tempfile.mkdtemp(prefix="ecaml-retrieval-scale-"))
    indexes = []
    rng = np.random.default_rng(0)
    for number in range(RUNS):
        vectors = rng.normal(size=(len(unseen), DIMENSIONS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        path = cache / f"run{number}.npy"
        embeddings_cache._write_embeddings(path, Embeddings(vectors, labels.astype(np.int64), unseen.astype(np.int64)))
        del vectors
        loaded = embeddings_cache._read_embeddings(path)  # what cached_embeddings returns: a read-only memory map
        assert isinstance(loaded.vectors, np.memmap)
        indexes.append(retrieval.RunIndex(run, loaded, split))
    results["memory_after_mb"] = memory_mb()
    latencies = []
    for index in indexes:
        for dataset_index in rng.choice(unseen, size=QUERIES, replace=False):
            started = time.perf_counter()
            index.query_by_index(int(dataset_index), 8)
            latencies.append(time.perf_counter() - started)
    milliseconds = np.array(latencies) * 1000
    results["query_ms"] = {"p50": round(float(np.percentile(milliseconds, 50)), 2),
                           "p95": round(float(np.percentile(milliseconds, 95)), 2),
                           "max": round(float(milliseconds.max()), 2), "queries": len(milliseconds)}
    if args.disagreement:
        started = time.perf_counter()
        found = retrieval.disagreement_queries(indexes, k=4, limit=50)
        results["disagreement_seconds"] = round(time.perf_counter() - started, 2)
        results["disagreement_found"] = len(found)
    results["note"] = "2 shared CPU cores with other jobs running: timings under contention"
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
