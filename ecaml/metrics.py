"""Retrieval and clustering metrics on embeddings: the numbers every run reports.

This module owns the evaluation protocol, as pure functions of numpy embeddings
``[N, D]`` and integer labels ``[N]``; it knows nothing about models or data
loading. The protocol follows the paper's evaluation scripts and Musgrave et al.,
"A Metric Learning Reality Check" (2020), and matches pytorch-metric-learning's
``AccuracyCalculator``:

* Embeddings are L2-normalised here, whatever the caller did; a zero vector
  stays zero (cosine 0 to everything). Similarity is cosine, searched exactly
  with faiss ``IndexFlatIP``.
* Within one set, each sample queries all the others. The query itself is
  excluded by index, not by similarity, so exact duplicates of the query still
  count as neighbours.
* Recall@K: 1 if any of the K nearest neighbours shares the query's class.
* R-Precision and MAP@R: R is the number of *other* samples of the query's class.
* Queries whose class has no other sample ("lone" queries: a singleton class, or
  a class absent from the gallery) are left out of Recall@K, MAP@R and
  R-Precision alike, as pytorch-metric-learning does; they still sit in the
  gallery as distractors for everyone else. NMI clusters every sample.
* NMI: seeded faiss k-means (several restarts) with k = number of classes, scored
  against the labels with scikit-learn's ``normalized_mutual_info_score``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

DEFAULT_RECALL_KS = (1, 2, 4, 8)

# Bounds the [queries, k] neighbour tables held at once, so a huge class (large R)
# costs more searches rather than gigabytes of memory.
_MAX_TABLE_ENTRIES = 1 << 22

_KMEANS_ITERATIONS = 20
_KMEANS_RESTARTS = 5


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Return a float32 copy of ``embeddings`` with unit-length rows (zero rows stay zero)."""
    vectors = _validated_embeddings(embeddings)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # Dividing by 1 leaves zero rows at zero instead of producing NaN.
    safe_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
    return np.ascontiguousarray(vectors / safe_norms, dtype=np.float32)


def nearest_neighbours(
    query: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours of each query row among the gallery rows.

    Returns ``(similarities [Nq, k] float32, indices [Nq, k] int64)``, best first.
    With ``exclude_self`` the query must be the gallery itself (same rows) and each
    row's own index is dropped from its list.
    """
    query_vectors = l2_normalise(query)
    gallery_vectors = l2_normalise(gallery)
    _check_same_dimension(query_vectors, gallery_vectors)
    if exclude_self and not np.array_equal(query_vectors, gallery_vectors):
        raise ValueError("exclude_self=True needs the query to be the gallery (same rows)")
    _check_k_allowed(k, largest=len(gallery_vectors) - int(exclude_self), what="k")
    index = _exact_index(gallery_vectors)
    self_rows = np.arange(len(query_vectors)) if exclude_self else None
    return _search(index, query_vectors, k, self_rows)


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    nmi: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K, NMI, MAP@R and R-Precision of one set searched against itself.

    Keys: ``"recall@K"`` for each K in ascending order, then ``"nmi"`` (only when
    ``nmi`` is true), ``"map@r"`` and ``"r_precision"``; values are Python floats in
    [0, 1]. Lone queries are excluded from the retrieval scores (module docstring).
    """
    vectors = l2_normalise(embeddings)
    label_array = _validated_labels(labels, len(vectors))
    ks = _validated_recall_ks(recall_ks, largest=len(vectors) - 1)
    _, class_codes, class_sizes = _classes_codes_and_sizes(label_array)
    relevant_counts = class_sizes[class_codes] - 1
    query_rows = np.flatnonzero(relevant_counts > 0)
    if len(query_rows) == 0:
        raise ValueError(
            "every class has a single sample, so no query has a relevant neighbour"
        )
    scores = _retrieval_scores(
        index=_exact_index(vectors),
        gallery_codes=class_codes,
        query_vectors=vectors[query_rows],
        query_codes=class_codes[query_rows],
        relevant_counts=relevant_counts[query_rows],
        recall_ks=ks,
        self_rows=query_rows,
    )
    if nmi:
        scores["nmi"] = _clustering_nmi(vectors, class_codes, len(class_sizes), seed)
    return _in_report_order(scores, ks)


def query_gallery_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    recall_ks: Sequence[int],
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision of queries searched against a separate gallery.

    The In-Shop protocol: nothing is self-excluded, and R is the number of gallery
    samples of the query's class. Queries whose class is absent from the gallery
    are left out. Keys as in ``retrieval_metrics``, without ``"nmi"``.
    """
    query_vectors = l2_normalise(query_emb)
    gallery_vectors = l2_normalise(gallery_emb)
    _check_same_dimension(query_vectors, gallery_vectors)
    query_label_array = _validated_labels(query_labels, len(query_vectors), "query_")
    gallery_label_array = _validated_labels(gallery_labels, len(gallery_vectors), "gallery_")
    ks = _validated_recall_ks(recall_ks, largest=len(gallery_vectors))
    gallery_classes, gallery_codes, gallery_sizes = _classes_codes_and_sizes(gallery_label_array)
    position = np.searchsorted(gallery_classes, query_label_array)
    position = position.clip(max=len(gallery_classes) - 1)
    in_gallery = gallery_classes[position] == query_label_array
    query_rows = np.flatnonzero(in_gallery)
    if len(query_rows) == 0:
        raise ValueError("no query's class appears in the gallery")
    query_codes = position[query_rows]
    scores = _retrieval_scores(
        index=_exact_index(gallery_vectors),
        gallery_codes=gallery_codes,
        query_vectors=query_vectors[query_rows],
        query_codes=query_codes,
        relevant_counts=gallery_sizes[query_codes],
        recall_ks=ks,
        self_rows=None,
    )
    return _in_report_order(scores, ks)


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


# --- validation -------------------------------------------------------------


def _validated_embeddings(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, D]; got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"embeddings are empty (shape {array.shape})")
    is_real = np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)
    if not is_real:
        raise ValueError(f"embeddings must be real numbers; got dtype {array.dtype}")
    vectors = array.astype(np.float32, copy=False)
    bad_rows = ~np.isfinite(vectors).all(axis=1)
    if bad_rows.any():
        raise ValueError(
            f"embeddings contain NaN or inf in {int(bad_rows.sum())} row(s), "
            f"first at row {int(np.argmax(bad_rows))}"
        )
    return vectors


def _validated_labels(
    labels: np.ndarray, expected_length: int, prefix: str = ""
) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{prefix}labels must be a 1-D array [N]; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{prefix}labels must be integers; got dtype {array.dtype}")
    if len(array) != expected_length:
        raise ValueError(
            f"got {expected_length} {prefix}embeddings but {len(array)} {prefix}labels"
        )
    return array


def _validated_recall_ks(recall_ks: Sequence[int], largest: int) -> list[int]:
    ks = list(recall_ks)
    if not ks:
        raise ValueError("recall_ks is empty; give at least one K")
    for k in ks:
        _check_k_allowed(k, largest, what="recall K")
    return sorted(set(int(k) for k in ks))


def _check_k_allowed(k: int, largest: int, what: str) -> None:
    if not _is_positive_integer(k):
        raise ValueError(f"{what} must be a positive integer; got {k!r}")
    if k > largest:
        raise ValueError(f"{what}={k} is too large: the largest K allowed here is {largest}")


def _check_same_dimension(query_vectors: np.ndarray, gallery_vectors: np.ndarray) -> None:
    query_dim, gallery_dim = query_vectors.shape[1], gallery_vectors.shape[1]
    if query_dim != gallery_dim:
        raise ValueError(f"query and gallery dimensions differ: {query_dim} vs {gallery_dim}")


def _is_positive_integer(value: object) -> bool:
    # bool is an Integral, but True as a K or a pair count is surely a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


# --- search and scoring -------------------------------------------------------


def _exact_index(gallery_vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(gallery_vectors.shape[1])
    index.add(gallery_vectors)
    return index


def _search(
    index: faiss.IndexFlatIP, query_vectors: np.ndarray, k: int, self_rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows per query; ``self_rows[i]`` (the query's own row) is dropped."""
    if self_rows is None:
        return index.search(query_vectors, k)
    similarities, indices = index.search(query_vectors, k + 1)
    is_self = indices == self_rows[:, None]
    # Enough exact duplicates can push the query out of its own top k+1; then any
    # one of the tied duplicates stands in for it and the last entry goes instead.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return similarities[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def _retrieval_scores(
    index: faiss.IndexFlatIP,
    gallery_codes: np.ndarray,
    query_vectors: np.ndarray,
    query_codes: np.ndarray,
    relevant_counts: np.ndarray,
    recall_ks: list[int],
    self_rows: np.ndarray | None,
) -> dict[str, float]:
    """Mean Recall@K, MAP@R and R-Precision, from one search deep enough for every R."""
    depth = max(max(recall_ks), int(relevant_counts.max()))
    chunk = max(1, _MAX_TABLE_ENTRIES // depth)
    hit_counts = np.zeros(len(recall_ks), dtype=np.int64)
    average_precisions, r_precisions = [], []
    for start in range(0, len(query_vectors), chunk):
        rows = slice(start, start + chunk)
        _, neighbours = _search(
            index, query_vectors[rows], depth, None if self_rows is None else self_rows[rows]
        )
        is_relevant = gallery_codes[neighbours] == query_codes[rows, None]
        hit_counts += [np.count_nonzero(is_relevant[:, :k].any(axis=1)) for k in recall_ks]
        average_precision, r_precision = _precision_at_r(is_relevant, relevant_counts[rows])
        average_precisions.append(average_precision)
        r_precisions.append(r_precision)
    query_count = len(query_vectors)
    scores = {f"recall@{k}": float(hits / query_count) for k, hits in zip(recall_ks, hit_counts)}
    scores["map@r"] = float(np.mean(np.concatenate(average_precisions)))
    scores["r_precision"] = float(np.mean(np.concatenate(r_precisions)))
    return scores


def _precision_at_r(
    is_relevant: np.ndarray, relevant_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP@R and R-Precision from relevance flags ranked best first."""
    ranks = np.arange(1, is_relevant.shape[1] + 1)
    relevant_in_top_r = is_relevant & (ranks <= relevant_counts[:, None])
    hits_so_far = np.cumsum(relevant_in_top_r, axis=1)
    precision_at_hits = np.where(relevant_in_top_r, hits_so_far / ranks, 0.0)
    average_precision = precision_at_hits.sum(axis=1) / relevant_counts
    r_precision = hits_so_far[:, -1] / relevant_counts
    return average_precision, r_precision


def _clustering_nmi(
    vectors: np.ndarray, class_codes: np.ndarray, class_count: int, seed: int
) -> float:
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        class_count,
        niter=_KMEANS_ITERATIONS,
        nredo=_KMEANS_RESTARTS,
        seed=int(seed),
        verbose=False,
        # Cluster every point (no subsampling) and accept few points per centroid:
        # test splits often have only tens of images per class.
        min_points_per_centroid=1,
        max_points_per_centroid=len(vectors),
    )
    kmeans.train(vectors)
    _, cluster_ids = kmeans.index.search(vectors, 1)
    return float(normalized_mutual_info_score(class_codes, cluster_ids[:, 0]))


# --- helpers -----------------------------------------------------------------


def _classes_codes_and_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct labels, each sample's index into them, and each class's size."""
    classes, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return classes, codes.reshape(-1), sizes


def _in_report_order(scores: dict[str, float], recall_ks: list[int]) -> dict[str, float]:
    keys = [f"recall@{k}" for k in recall_ks] + ["nmi", "map@r", "r_precision"]
    return {key: scores[key] for key in keys if key in scores}


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
