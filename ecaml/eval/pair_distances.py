"""Cosine distances of sampled positive and negative pairs: what a pair-distance histogram draws."""

from __future__ import annotations

import numpy as np

from ecaml.eval.checks import _is_positive_integer, _validated_labels
from ecaml.eval.metrics import l2_normalise


def pair_distance_samples(
    embeddings: np.ndarray, labels: np.ndarray, max_pairs: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances (1 - cos, in [0, 2]) of positive and of negative pairs i < j.

    Each kind is a uniform sample without replacement of at most ``max_pairs``
    pairs (all of them when there are fewer), the same for the same ``seed``.
    Returns ``(positive_distances, negative_distances)`` as float32 arrays.
    """
    vectors = l2_normalise(embeddings)
    label_array = _validated_labels(labels, len(vectors))
    if not _is_positive_integer(max_pairs):
        raise ValueError(f"max_pairs must be a positive integer; got {max_pairs!r}")
    rng = np.random.default_rng(seed)
    # In class-sorted order each sample's partners with a larger position form one
    # contiguous run: the rest of its class (positives) or everything after its
    # class (negatives). That lets pairs be drawn by rank without listing them all.
    order = np.argsort(label_array, kind="stable")
    sorted_labels = label_array[order]
    class_end = np.searchsorted(sorted_labels, sorted_labels, side="right")
    positions = np.arange(len(order))
    positive_runs = (positions + 1, class_end - positions - 1)
    negative_runs = (class_end, len(order) - class_end)
    distances = []
    for run_start, run_length in (positive_runs, negative_runs):
        first, second = _sample_pairs(run_start, run_length, int(max_pairs), rng)
        distances.append(_cosine_distances(vectors, order[first], order[second]))
    return distances[0], distances[1]


def _sample_pairs(
    run_start: np.ndarray, run_length: np.ndarray, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw pairs (i, run_start[i] + offset < run_start[i] + run_length[i]).

    Uniform over all such pairs, without replacement; all of them if at most max_pairs.
    """
    pairs_before = np.concatenate([[0], np.cumsum(run_length)])
    total = int(pairs_before[-1])
    if total <= max_pairs:
        pair_ranks = np.arange(total)
    else:
        pair_ranks = np.sort(rng.choice(total, size=max_pairs, replace=False))
    first = np.searchsorted(pairs_before, pair_ranks, side="right") - 1
    second = run_start[first] + (pair_ranks - pairs_before[first])
    return first, second


def _cosine_distances(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    cosines = np.einsum("ij,ij->i", vectors[first], vectors[second])
    # Rounding can put a cosine a hair outside [-1, 1].
    return np.clip(1.0 - cosines, 0.0, 2.0).astype(np.float32)
