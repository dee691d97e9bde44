"""Which rows of the runs' embeddings a projection draws: the images every run embeds, subsampled by class."""

from __future__ import annotations

import numpy as np

from ecaml.eval.evaluate import Embeddings

MIN_POINTS = 5


def shared_rows(embeddings: list[Embeddings], max_points: int | None, seed: int) -> list[np.ndarray]:
    """For each run, the rows of the images present in every run, subsampled, in one common order."""
    common = embeddings[0].indices
    for e in embeddings[1:]:
        common = np.intersect1d(common, e.indices)
    common = np.unique(common)
    if len(common) < MIN_POINTS:
        raise ValueError(f"the runs share only {len(common)} images of this split; at least {MIN_POINTS} are needed")
    first = embeddings[0]
    common_labels = first.labels[rows_of(first.indices, common)]
    chosen = common[stratified_rows(common_labels, max_points, seed)]
    return [rows_of(e.indices, chosen) for e in embeddings]


def rows_of(indices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The rows of ``indices`` that hold each of ``wanted`` (all present), vectorised for 60k-image splits."""
    order = np.argsort(indices, kind="stable")
    return order[np.searchsorted(indices[order], wanted)].astype(np.int64)


def stratified_rows(labels: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` rows, each class keeping its share (largest remainder), seeded."""
    count = len(labels)
    if count < MIN_POINTS:
        raise ValueError(f"only {count} images to project; at least {MIN_POINTS} are needed")
    if max_points is None or count <= max_points:
        return np.arange(count)
    classes, sizes = np.unique(labels, return_counts=True)
    shares = sizes * (max_points / count)
    quotas = np.floor(shares).astype(np.int64)
    remainder = max_points - int(quotas.sum())
    by_fraction = np.lexsort((classes, -(shares - quotas)))  # largest fraction first, ties by class id
    quotas[by_fraction[:remainder]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quotas) if q]
    return np.sort(np.concatenate(chosen))
