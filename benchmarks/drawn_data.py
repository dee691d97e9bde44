"""Embeddings for the evaluation sweep, drawn unlike the project's own generators.

``common.clustered_unit_embeddings`` (what the older benchmarks use) puts equal-sized classes
around isotropic Gaussian centres. The sweep's arrays differ in every respect that decides
how a search or a k-means behaves:

* class sizes are skewed (a negative binomial, at least 2 a class, as in SOP where most
  classes have 2-12 images and a few many more), so R varies from query to query;
* centres are drawn from a Student-t (heavy tails: some classes sit close together);
* each class has its own scale (log-normal) and its own low-rank direction of spread, and
  the noise is Student-t rather than Gaussian;
* ``fashion_mnist`` is real data: Fashion-MNIST's training images (Debian's
  ``dataset-fashion-mnist``), pixels projected to 128 dimensions by a seeded Gaussian
  matrix -- 10 classes that overlap heavily (shirt, T-shirt, pullover, coat).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Noise multipliers of the three difficulties, set once so that at 30,000 x 512 in 5,600
# classes "realistic" lands at Recall@1 0.6-0.85 and MAP@R 0.3-0.5 (the printed values say
# where each really lands).
DIFFICULTY_NOISE = {"separated": 0.35, "realistic": 2.6, "overlapping": 5.0}


def skewed_class_sizes(count: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes of at least 2 summing to ``count``, skewed like a product catalogue's."""
    if count < 2 * classes:
        raise ValueError(f"{count} points cannot fill {classes} classes of at least 2")
    extra = rng.negative_binomial(1, 1 / (1 + (count - 2 * classes) / classes), size=classes).astype(np.float64)
    extra = np.floor(extra * (count - 2 * classes) / max(extra.sum(), 1))
    sizes = 2 + extra.astype(np.int64)
    shortfall = count - int(sizes.sum())
    np.add.at(sizes, rng.choice(classes, size=shortfall, replace=True), 1)
    return sizes


def drawn_embeddings(count: int, dim: int, classes: int, difficulty: str, seed: int = 0):
    """Unit float32 vectors [count, dim] and int64 labels, at one of ``DIFFICULTY_NOISE``'s difficulties."""
    noise = DIFFICULTY_NOISE[difficulty]
    rng = np.random.default_rng([seed, count, dim, classes])
    sizes = skewed_class_sizes(count, classes, rng)
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    centres = rng.standard_t(df=3, size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    class_scale = rng.lognormal(0.0, 0.35, size=classes)
    class_direction = rng.normal(size=(classes, dim)) / np.sqrt(dim)
    spread = rng.standard_t(df=5, size=(count, dim)) / np.sqrt(dim * 5 / 3)  # unit variance per point
    along = rng.normal(size=(count, 1)) * class_direction[labels]
    vectors = centres[labels] + noise * class_scale[labels, None] * (spread + along)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64)


def fashion_mnist(count: int = 40_000, dim: int = 128, seed: int = 0):
    """The first ``count`` Fashion-MNIST training images as unit float32 vectors of ``dim`` (a seeded
    Gaussian projection of the centred pixels), with their labels (10 classes)."""
    images = _idx(FASHION_MNIST / "train-images-idx3-ubyte.gz").reshape(-1, 28 * 28)[:count]
    labels = _idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")[:count]
    pixels = images.astype(np.float32) / 255.0
    pixels -= pixels.mean(axis=0)
    projection = np.random.default_rng(seed).normal(size=(28 * 28, dim)).astype(np.float32)
    vectors = pixels @ projection
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64)


def _idx(path: Path) -> np.ndarray:
    """The array in an idx file (the MNIST format): a magic number, the dimensions, then uint8 data."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install Debian's dataset-fashion-mnist")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
