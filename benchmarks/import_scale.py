"""Importing an SOP-sized set of vectors (issue 19): `ecaml import embeddings` end to end, and what pages then read.

Writes 60,502 x 512 float32 vectors in 11,316 classes (SOP's test shape; clustered synthetic vectors, spread 2.5,
as eval_speed.py) with string labels to an .npz under the bench folder, then times, in one process:
* the whole import, stage by stage (read, checks, our evaluator's metrics of every row, the atomic write): the
  evaluator is the part measured alone in eval_speed.py, the rest is what importing adds (a ratio to it);
* reading the imported run's vectors back (``cached_embeddings``: a memory map) and a PCA projection of every row
  (what the Embeddings page draws: ``project_runs(max_points=None)``);
  beside scikit-learn's full-SVD PCA of the same rows (what ``_pca`` used before: the ratio is the speed-up);
* the neighbourhood change of the import against a second import of the same items (the page's sample of 5,000).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from common import bench_dir, clustered_unit_embeddings, pick, run_alone, seconds  # noqa: E402

import numpy as np  # noqa: E402

from ecaml.runs import load_run  # noqa: E402
from ecaml.serve.embeddings_cache import cached_embeddings  # noqa: E402
from ecaml.serve.imports import import_embeddings  # noqa: E402
from ecaml.serve.neighbourhood import neighbourhood_change  # noqa: E402
from ecaml.serve.projection import project_runs  # noqa: E402

RECALL_KS = (1, 10, 100, 1000)


def shape(scale: str) -> tuple[int, int, int]:
    return pick(scale, (60_502, 512, 11_316), (12_000, 512, 2_000), (600, 16, 60))


def measure(scale: str) -> dict:
    count, dim, classes = shape(scale)
    vectors, labels = clustered_unit_embeddings(count, dim, classes, seed=0, spread=2.5)
    folder = Path(tempfile.mkdtemp(dir=bench_dir(), prefix="import-scale-"))
    try:
        source = folder / "sop-shaped.npz"
        np.savez(source, embeddings=vectors, labels=np.asarray([f"product {c}" for c in labels]))
        stages: dict[str, float] = {}
        import_s, _ = seconds(lambda: import_embeddings(source, folder / "run-a", recall_ks=RECALL_KS, timings=stages))
        # A second run over the same items with other vectors (a perturbed copy): the pair a page compares. Made by
        # hand, not imported, so the evaluator runs once (it is most of an import's time: see the stages).
        shutil.copytree(folder / "run-a", folder / "run-b")
        other = vectors + 0.02 * np.random.default_rng(1).normal(size=vectors.shape).astype(np.float32)
        np.save(folder / "run-b" / "vectors.npy", other / np.linalg.norm(other, axis=1, keepdims=True))
        run_a, run_b = load_run(folder / "run-a"), load_run(folder / "run-b")
        read_s, stored = seconds(lambda: cached_embeddings(run_a, "unseen"))
        pca_s, projections = seconds(lambda: project_runs([run_a], method="pca", max_points=None,
                                                          cache_dir=folder / "cache"))
        svd_s, _ = seconds(lambda: sklearn_full_svd_pca(np.asarray(stored.vectors)))
        change_s, _ = seconds(lambda: neighbourhood_change(
            cached_embeddings(run_a), cached_embeddings(run_b), k=10, max_queries=min(5000, count)))
        overhead = import_s - stages["score"]
        return {
            "import_rows": count, "import_dim": dim, "import_classes": classes,
            "import_s": round(import_s, 2), **{f"import_{name}_s": round(v, 2) for name, v in stages.items()},
            "import_overhead_vs_score": round(overhead / stages["score"], 3),
            "import_read_back_s": round(read_s, 3), "import_pca_all_points_s": round(pca_s, 2),
            "import_map_points": int(len(projections[0].coords)),
            "import_pca_sklearn_svd_s": round(svd_s, 2),
            "import_pca_speedup_vs_sklearn_svd": round(svd_s / pca_s, 2),
            "import_memory_mapped": isinstance(stored.vectors, np.memmap),
            "neighbourhood_change_s": round(change_s, 2),
            "import_recall_at_1": round(run_a.metrics["recall@1"], 4),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sklearn_full_svd_pca(vectors: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, svd_solver="full").fit_transform(vectors.astype(np.float64))


def summary(result: dict) -> list[tuple[str, str, str]]:
    shape_text = f"{result['import_rows']:,} x {result['import_dim']}, {result['import_classes']:,} classes"
    return [
        ("import embeddings", f"{result['import_s']} s", f"{shape_text}; of which our evaluator {result['import_score_s']} s; "
                                                         f"read {result['import_read_s']} s, checks {result['import_check_s']} s, "
                                                         f"write {result['import_write_s']} s"),
        ("imported map", f"{result['import_pca_all_points_s']} s", f"PCA of all {result['import_map_points']:,} points; "
                                                                 f"scikit-learn's full SVD {result['import_pca_sklearn_svd_s']} s "
                                                                 f"({result['import_pca_speedup_vs_sklearn_svd']}x)"),
        ("neighbourhood change", f"{result['neighbourhood_change_s']} s", "k = 10, 5,000 sampled queries"),
    ]


if __name__ == "__main__":
    sys.exit(run_alone(measure, summary, __doc__))
