#!/usr/bin/env python
"""What the app's users wait for: retrieval query latency, the UMAP warm-up, training throughput.

    python benchmarks/app_speed.py [--quick]

* ``retrieval``: p50 / p95 latency of ``ecaml.serve.retrieval.RunIndex.query_by_index`` (the
  Retrieval page's "neighbours of this image", k = 8) over a 10,000-image gallery of a
  shipped glyphs run (its unseen embeddings, tiled with small noise up to 10,000 rows),
  and of ``query_by_image`` (embedding an image with the run's model, then the search).
* ``umap_warm``: ``ecaml.serve.projection.warm_projection_cache`` of two shipped glyphs runs
  (aligned UMAP, the app's defaults) into an empty cache, in a fresh process, so the
  umap/numba import and compilation are counted as the app's first start pays them.
* ``train``: images per second of ``ecaml.train.train`` (smallcnn on glyphs, 16 x 4
  batches, data loading and history writing included), from the step timestamps of the
  history, the first steps (warm-up) left out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, pick, run_alone  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.eval.evaluate import Embeddings, split_for  # noqa: E402
from ecaml.eval.metrics import l2_normalise  # noqa: E402
from ecaml.runs import load_run  # noqa: E402
from ecaml.serve.embeddings_cache import cached_embeddings  # noqa: E402
from ecaml.serve.retrieval import RunIndex  # noqa: E402

RUNS = ("glyphs-binomial-ec0-seed0", "glyphs-binomial-ec0.13-seed0")


def retrieval_latency(gallery_size: int, queries: int, cache_dir: Path) -> dict:
    run = load_run(ROOT / "checkpoints" / RUNS[0])
    base = cached_embeddings(run, "unseen", cache_dir)
    rng = np.random.default_rng(0)
    tiles = -(-gallery_size // len(base.labels))
    vectors = np.concatenate([base.vectors + 0.05 * rng.normal(size=base.vectors.shape) for _ in range(tiles)])
    # Fake dataset indices beyond the first copy: the index only maps them back to rows.
    embeddings = Embeddings(l2_normalise(vectors[:gallery_size]), np.tile(base.labels, tiles)[:gallery_size],
                            np.arange(gallery_size))
    index = RunIndex(run, embeddings, split_for(run.config), "unseen")
    index.query_by_image(index.split.dataset.image(int(base.indices[0])), k=8)  # first-call set-up, not latency
    by_index = [index.query_by_index(int(i), k=8).seconds for i in rng.choice(gallery_size, queries, replace=False)]
    images = [index.split.dataset.image(int(i)) for i in base.indices[:queries // 4]]
    by_image = [index.query_by_image(image, k=8).seconds for image in images]
    return {"gallery": gallery_size, "queries": queries,
            "by_index_p50_ms": 1000 * float(np.percentile(by_index, 50)),
            "by_index_p95_ms": 1000 * float(np.percentile(by_index, 95)),
            "by_image_p95_ms": 1000 * float(np.percentile(by_image, 95))}


def umap_warm(cache_dir: Path, max_points: int, n_epochs: int | None, method: str = "umap") -> float:
    """Seconds of a fresh process warming the projection cache (umap import and JIT included)."""
    code = (
        "import sys, time; sys.path.insert(0, {root!r}); started = time.perf_counter();"
        "from ecaml.serve.projection import warm_projection_cache; from ecaml.runs import load_run;"
        "runs = [load_run({root!r} + '/checkpoints/' + name) for name in {runs!r}];"
        "warm_projection_cache(runs, method={method!r}, cache_dir={cache!r}, max_points={points}, n_epochs={epochs});"
        "print(time.perf_counter() - started)"
    ).format(root=str(ROOT), runs=list(RUNS), method=method, cache=str(cache_dir), points=max_points, epochs=n_epochs)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900)
    return float(result.stdout.strip().splitlines()[-1])


def train_images_per_s(steps: int, scratch: Path) -> dict:
    from ecaml.train.launch import train

    threads = torch.get_num_threads()
    config = TrainConfig(dataset="glyphs", backbone="smallcnn", max_steps=steps, eval_every=0, seed=0, device="cpu")
    try:
        result = train(config, scratch / "train", progress=False)
    finally:
        torch.set_num_threads(threads)  # the trainer sets one thread for smallcnn; leave the process as it was
    records = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    stamps = [r["seconds"] for r in records if r.get("kind") == "step"]
    warm = min(5, len(stamps) - 2)
    batch = config.resolved().classes_per_batch * config.resolved().images_per_class
    return {"steps": len(stamps), "batch": batch,
            "images_per_s": batch * (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])}


def measure(scale: str = "full") -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        retrieval = retrieval_latency(pick(scale, 10_000, 10_000, 2_000), pick(scale, 400, 200, 40), scratch / "cache")
        # The smoke test (tiny) cannot afford numba's compilation (half a minute): PCA stands in.
        method = pick(scale, "umap", "umap", "pca")
        umap_s = umap_warm(scratch / "umap-cache", *pick(scale, (3000, None), (3000, None), (300, 20)), method=method)
        training = train_images_per_s(pick(scale, 200, 60, 12), scratch)
    return {"retrieval": retrieval, "umap_warm_s": umap_s, "projection_method": method, "train": training}


def summary(result: dict) -> list[tuple[str, str, str]]:
    retrieval = result["retrieval"]
    return [
        ("retrieval: query p95", f"{retrieval['by_index_p95_ms']:.1f} ms",
         f"{retrieval['gallery']:,}-image gallery, k=8 (p50 {retrieval['by_index_p50_ms']:.1f} ms; "
         f"upload p95 {retrieval['by_image_p95_ms']:.1f} ms)"),
        ("umap: warm the cache", f"{result['umap_warm_s']:.1f} s",
         f"two glyphs runs, aligned {result['projection_method'].upper()}, fresh process"),
        ("train: smallcnn glyphs", f"{result['train']['images_per_s']:.0f} img/s",
         f"batch {result['train']['batch']}, loading + step + history, CPU"),
    ]


def main(argv=None) -> int:
    return run_alone(measure, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
