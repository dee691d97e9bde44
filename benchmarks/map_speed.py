#!/usr/bin/env python
"""The aligned UMAP map of two runs' unseen images: AlignedUMAP on every point against landmarks (not a test).

    python benchmarks/map_speed.py --runs RUN_A RUN_B --cache CACHE --out benchmarks/map_speed_fashion.json
    python benchmarks/map_speed.py --synthetic 60000 --classes 1000 --out benchmarks/map_speed_synthetic.json

Takes the two runs' embeddings of their unseen split (``ecaml.serve.embeddings_cache.cached_embeddings``, as the app does;
embedded once into CACHE), or, with ``--synthetic N``, two "runs" drawn here: N vectors in ``--classes`` classes
(each class a blob with sub-clusters, 128-d) and a turned, noisier copy. Then, in this one process and after a
small warm-up fit that pays numba's first compilation, times side by side (wall and CPU seconds, all threads):

* ``old``: umap-learn's AlignedUMAP on every point (what the map computed before landmarks),
* ``first``: the quick first layout a large UMAP writes at once (``FIRST_LAYOUT_LANDMARKS`` landmarks),
* ``new``: the landmark layout (``LANDMARKS`` landmarks laid out by AlignedUMAP, every other image placed by its
  nearest landmarks in its run's embedding space): what the app now computes.

and how well each keeps neighbourhoods, on ``--sample`` points drawn once (the same for every layout):
trustworthiness (sklearn, k = 10, cosine, among the sample), the share of each sampled point's 10 nearest
neighbours in the embedding (exact cosine, among all points) that are among its 10 nearest on the map (kNN kept),
and the share of a point's 10 map neighbours in the old layout that it also has in the new one (agreement).
Alignment: the distance between a class's centroids in the two panels (each panel centred, unit RMS radius),
median over classes, over the median distance between different classes' centroids. ``--skip-old`` leaves the
old layout out (minutes). Writes the figures, the command, ``uptime`` and the machine to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401 - puts the repository on sys.path and sets OMP_WAIT_POLICY before torch loads
import numpy as np

from ecaml.eval.metrics import l2_normalise
from ecaml.eval.search import exact_topk
from ecaml.serve.landmark_layout import LANDMARKS, landmark_layout
from ecaml.serve.projection import FIRST_LAYOUT_LANDMARKS
from ecaml.serve.projection_rows import shared_rows
from ecaml.serve.umap_fit import aligned_layout

K = 10


def run_embeddings(paths: list[Path], cache: Path):
    from ecaml.runs import load_run
    from ecaml.serve.embeddings_cache import cached_embeddings

    embeddings = [cached_embeddings(load_run(path), "unseen", cache) for path in paths]
    rows = shared_rows(embeddings, None, 0)
    return embeddings[0].labels[rows[0]], [e.vectors[r] for e, r in zip(embeddings, rows)]


def synthetic_runs(count: int, classes: int, seed: int = 0, dim: int = 128):
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, classes, count))
    sub = rng.integers(0, 3, count)
    centres = rng.normal(size=(classes, dim)) * 2.0
    offsets = rng.normal(size=(classes, 3, dim)) * 0.8
    first = centres[labels] + offsets[labels, sub] + rng.normal(size=(count, dim)) * 0.6
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    second = first @ rotation + rng.normal(size=(count, dim)) * 0.5
    return labels, [first.astype(np.float32), second.astype(np.float32)]


def old_aligned_umap(vectors: list[np.ndarray]) -> list[np.ndarray]:
    """What the map computed before landmarks: umap-learn's AlignedUMAP on every point (main's ``_aligned_umap``)."""
    from ecaml.serve.umap_fit import import_umap, quiet_umap

    umap = import_umap()
    with quiet_umap():
        reducer = umap.AlignedUMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0)
        reducer.fit(list(vectors), relations=[{i: i for i in range(len(vectors[0]))}] * (len(vectors) - 1))
    return [np.asarray(e, dtype=np.float32) for e in reducer.embeddings_]


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def map_neighbours(coords: np.ndarray, sample: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    finite = np.where(np.isfinite(coords).all(axis=1), 0, 1e9)[:, None]  # unplaced points never count as near
    search = NearestNeighbors(n_neighbors=K + 1).fit(np.nan_to_num(coords) + finite)
    found = search.kneighbors(np.nan_to_num(coords[sample]), return_distance=False)
    return np.array([[n for n in row if n != s][:K] for row, s in zip(found, sample)])


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b)]))


def quality(vectors: list[np.ndarray], coords: list[np.ndarray], labels: np.ndarray, sample: np.ndarray,
            true_neighbours: list[np.ndarray]) -> dict:
    from sklearn.manifold import trustworthiness

    result = {"trustworthiness": [], "knn_kept": []}
    for panel, c, truth in zip(vectors, coords, true_neighbours):
        placed = np.isfinite(c[sample]).all(axis=1)
        result["trustworthiness"].append(round(float(trustworthiness(
            panel[sample][placed], c[sample][placed], n_neighbors=K, metric="cosine")), 4))
        result["knn_kept"].append(round(overlap(truth, map_neighbours(c, sample)), 4))
    result["alignment"] = round(alignment(coords, labels), 4)
    return result


def alignment(coords: list[np.ndarray], labels: np.ndarray) -> float:
    """Median distance between a class's centroids in the two panels over the median between different classes'."""
    classes = np.unique(labels)
    centroids = []
    for c in coords:
        finite = np.isfinite(c).all(axis=1)
        centred = c - c[finite].mean(axis=0)
        scaled = centred / np.sqrt((centred[finite] ** 2).sum(axis=1).mean())
        centroids.append(np.array([np.nanmean(scaled[labels == k], axis=0) for k in classes]))
    gaps = np.linalg.norm(centroids[0][:, None] - centroids[1][None], axis=2)
    return float(np.median(np.diag(gaps)) / np.median(gaps[~np.eye(len(classes), dtype=bool)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ecaml-map-speed-cache"))
    parser.add_argument("--synthetic", type=int, help="draw two runs of this many points instead of --runs")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.synthetic:
        labels, vectors = synthetic_runs(args.synthetic, args.classes)
        source = f"synthetic: {args.synthetic} points in {args.classes} classes, 128-d"
    else:
        (labels, vectors), took = timed(lambda: run_embeddings(args.runs, args.cache))
        source = f"runs {', '.join(str(p) for p in args.runs)} (embedding {took['wall_s']} s)"
    print(f"{source}: {len(labels):,} points x {len(vectors)} panels, {len(np.unique(labels))} classes", flush=True)
    figures = {"source": source, "points": len(labels), "command": " ".join(sys.argv),
               "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    _, figures["warm_up"] = timed(lambda: (aligned_layout([v[:300] for v in vectors], 15, 0.1, 0, 20),
                                           old_aligned_umap([v[:300] for v in vectors])))
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(len(labels), size=min(args.sample, len(labels)), replace=False))
    true_neighbours = []
    for panel in vectors:
        unit = l2_normalise(panel)
        _, found = exact_topk(unit[sample], unit, K, self_rows=sample)
        true_neighbours.append(found)
    layouts = {
        "first": lambda: landmark_layout(vectors, labels, lambda p: aligned_layout(p, 15, 0.1, 0, None),
                                         FIRST_LAYOUT_LANDMARKS, 0),
        "new": lambda: landmark_layout(vectors, labels, lambda p: aligned_layout(p, 15, 0.1, 0, None), LANDMARKS, 0),
    }
    if not args.skip_old:
        layouts["old"] = lambda: old_aligned_umap(vectors)
    coords = {}
    for name, compute in layouts.items():
        coords[name], took = timed(compute)
        figures[name] = {**took, **quality(vectors, coords[name], labels, sample, true_neighbours)}
        print(f"{name:6s} {json.dumps(figures[name])}", flush=True)
    if "old" in coords:
        for name in ("first", "new"):
            figures[name]["agreement_with_old"] = [
                round(overlap(map_neighbours(a, sample), map_neighbours(b, sample)), 4)
                for a, b in zip(coords[name], coords["old"])]
        figures["speed_up_new_vs_old"] = round(figures["old"]["wall_s"] / figures["new"]["wall_s"], 2)
        figures["cpu_ratio_old_over_new"] = round(figures["old"]["cpu_s"] / figures["new"]["cpu_s"], 2)
    figures["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    figures["machine"] = common.machine()
    print(f"\n{'layout':8s}{'wall s':>9s}{'cpu s':>9s}  trustworthiness  kNN kept        alignment  agreement w/ old")
    for name in ("old", "first", "new"):
        if name in figures:
            f = figures[name]
            print(f"{name:8s}{f['wall_s']:9.1f}{f['cpu_s']:9.1f}  {str(f['trustworthiness']):17s}"
                  f"{str(f['knn_kept']):16s}{f['alignment']:9.3f}  {f.get('agreement_with_old', '')}")
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
