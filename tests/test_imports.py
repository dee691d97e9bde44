"""Importing embeddings made elsewhere: metrics against pytorch-metric-learning's, and how imported runs are read."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from ecaml.cli import main
from ecaml.runs import load_run, scan_runs
from ecaml.serve.embeddings_cache import cached_embeddings
from ecaml.serve.imports import import_embeddings
from ecaml.serve.retrieval import build_index

FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format) as an array: magic (dtype, rank), sizes, then the values."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(shape)


def pml_embeddings(count: int = 1500, steps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test images embedded by a trunk + embedder trained briefly with a pml loss and miner."""
    from pytorch_metric_learning import losses, miners

    torch.manual_seed(0)
    train_images = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:6000].reshape(-1, 784) / 255.0
    train_labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:6000].astype(np.int64)
    trunk = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU())
    embedder = torch.nn.Linear(128, 32)
    optimiser = torch.optim.Adam([*trunk.parameters(), *embedder.parameters()], lr=1e-3)
    loss, miner = losses.TripletMarginLoss(margin=0.1), miners.MultiSimilarityMiner()
    generator = np.random.default_rng(0)
    for _ in range(steps):
        batch = generator.choice(len(train_images), 128, replace=False)
        images = torch.as_tensor(train_images[batch], dtype=torch.float32)
        labels = torch.as_tensor(train_labels[batch])
        vectors = embedder(trunk(images))
        optimiser.zero_grad()
        loss(vectors, labels, miner(vectors, labels)).backward()
        optimiser.step()
    test_images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:count].reshape(-1, 784) / 255.0
    with torch.no_grad():
        # pml's losses compare normalised embeddings (LpDistance(normalize_embeddings=True)): so do its users.
        raw = embedder(trunk(torch.as_tensor(test_images, dtype=torch.float32)))
        vectors = torch.nn.functional.normalize(raw, dim=1).numpy()
    return vectors, read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")[:count].astype(np.int64)


@pytest.mark.skipif(not FASHION.is_dir(), reason="the Debian package dataset-fashion-mnist is not installed")
def test_imported_pml_embeddings_score_as_pml_accuracy_calculator(tmp_path):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKMeans

    vectors, labels = pml_embeddings()
    source = tmp_path / "pml.npz"
    np.savez(source, embeddings=vectors, labels=np.asarray([f"class {c}" for c in labels]))
    assert main(["import", "embeddings", str(source), "--out", str(tmp_path / "pml-run")]) == 0
    metrics = load_run(tmp_path / "pml-run").metrics
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
        k="max_bin_count", device=torch.device("cpu"),
        kmeans_func=FaissKMeans(niter=20, nredo=5, min_points_per_centroid=1),  # restarts, as ours: k-means noise only
    )
    theirs = calculator.get_accuracy(torch.as_tensor(vectors), torch.as_tensor(labels), ref_includes_query=True)
    # pml ranks by L2 distance, we by inner product: the same order on unit vectors, up to float32 rounding of
    # near-ties deep in a 150-image class (measured: MAP@R differs by 4e-6), hence 1e-5 rather than equality.
    assert metrics["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-5)
    assert metrics["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-5)
    assert metrics["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-5)
    assert metrics["nmi"] == pytest.approx(theirs["NMI"], abs=0.05)  # both seeded k-means, different restarts
    assert 0.3 < metrics["recall@1"] < 1.0  # a trained embedding, not chance (0.1)


def write_npz(path: Path, count: int = 120, dim: int = 8, classes: int = 6, seed: int = 3, **extra) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    centres = rng.normal(size=(classes, dim)) * 3
    arrays = {"embeddings": (centres[labels] + rng.normal(size=(count, dim))).astype(np.float32), "labels": labels}
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_an_imported_run_is_read_like_any_run_and_serves_its_stored_vectors(tmp_path):
    source = write_npz(tmp_path / "a.npz", split=np.where(np.arange(120) % 6 < 3, "seen", "unseen"))
    import_embeddings(source, tmp_path / "runs" / "mine") if (tmp_path / "runs").mkdir() is None else None
    [(path, run, problem)] = scan_runs(tmp_path / "runs")
    assert problem is None and run.kind == "imported" and run.model is None
    unseen = cached_embeddings(run, "unseen")
    stored = np.load(source)
    assert sorted(set(stored["labels"][unseen.indices] % 6)) == [3, 4, 5]
    expected = stored["embeddings"][unseen.indices]
    np.testing.assert_allclose(unseen.vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    index = build_index(run, "unseen")
    neighbours = index.query_by_index(int(unseen.indices[0]), k=5).neighbours
    assert len(neighbours) == 5 and all(n.correct for n in neighbours)  # well separated clusters
    with pytest.raises(ValueError, match="cannot embed a new image"):
        from PIL import Image

        index.query_by_image(Image.new("L", (8, 8)))


def test_parquet_imports_the_same_as_npz(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as parquet

    source = write_npz(tmp_path / "a.npz")
    arrays = np.load(source)
    table = pa.table({"embeddings": list(arrays["embeddings"]), "labels": arrays["labels"]})
    parquet.write_table(table, tmp_path / "a.parquet")
    import_embeddings(source, tmp_path / "from-npz")
    import_embeddings(tmp_path / "a.parquet", tmp_path / "from-parquet")
    assert load_run(tmp_path / "from-npz").metrics == load_run(tmp_path / "from-parquet").metrics


def test_evaluate_and_compare_read_an_imported_run(tmp_path, capsys):
    import json

    source = write_npz(tmp_path / "a.npz", split=np.where(np.arange(120) % 6 < 2, "seen", "unseen"))
    import_embeddings(source, tmp_path / "mine")
    assert main(["evaluate", str(tmp_path / "mine"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == load_run(tmp_path / "mine").metrics
    assert main(["evaluate", str(tmp_path / "mine"), "--split", "seen", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@1"] > 0.9  # the two seen classes, well apart
