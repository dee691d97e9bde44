"""Retrieval and clustering metrics on embeddings: the numbers every run reports.

This module owns the evaluation protocol, as pure functions of numpy embeddings
``[N, D]`` and integer labels ``[N]``; it knows nothing about models or data
loading. The protocol follows the paper's evaluation scripts and Musgrave et al.,
"A Metric Learning Reality Check" (2020), and matches pytorch-metric-learning's
``AccuracyCalculator``:

* Embeddings are L2-normalised here, whatever the caller did; a zero vector
  stays zero (cosine 0 to everything). Similarity is cosine, searched exactly by
  ``ecaml.eval.search`` (blocked matrix products and partial sorts, on the GPU when
  there is one); ties rank the lower gallery index first. Galleries larger than
  ``approximate_above`` are searched with an approximate faiss index instead,
  whose recall against the exact search is measured and logged.
* Within one set, each sample queries all the others. The query itself is
  excluded by index, not by similarity, so exact duplicates of the query still
  count as neighbours.
* Recall@K: 1 if any of the K nearest neighbours shares the query's class. It is
  computed from the rank of each query's first relevant neighbour, so K = 1000
  costs no more than K = 1.
* R-Precision and MAP@R: R is the number of *other* samples of the query's class.
* Queries whose class has no other sample ("lone" queries: a singleton class, or
  a class absent from the gallery) are left out of Recall@K, MAP@R and
  R-Precision alike, as pytorch-metric-learning does; they still sit in the
  gallery as distractors for everyone else. NMI clusters every sample.
* NMI: seeded Lloyd k-means (``ecaml.eval.kmeans``) with k = number of classes, scored
  against the labels with scikit-learn's ``normalized_mutual_info_score``: the same
  implementation and settings (one run of at most 20 iterations) for every size of set,
  so NMIs of different splits are comparable; ``nmi_kmeans="pml"`` runs
  pytorch-metric-learning's own faiss settings instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import logging

import numpy as np
import torch

from ecaml.eval.checks import (
    _check_k_allowed,
    _check_same_dimension,
    _validated_embeddings,
    _validated_labels,
    _validated_recall_ks,
)
from ecaml.eval import symmetric
from ecaml.eval.kmeans import NMI_KMEANS, clustering_nmi
from ecaml.eval.precision import precision_at_r
from ecaml.eval.search import (
    BLOCK_ENTRIES,
    DEFAULT_APPROXIMATE_ABOVE,
    build_index,
    default_device,
    exact_topk,
    mask_self,
    product_buffer,
    topk_with_index_ties,
)

logger = logging.getLogger(__name__)

DEFAULT_RECALL_KS = (1, 2, 4, 8)

# Bounds the [queries, k] neighbour tables held at once, so a huge class (large R)
# costs more searches rather than gigabytes of memory.
_MAX_TABLE_ENTRIES = 1 << 22
# The symmetric search applies when at least this share of the set queries, and no R exceeds the set's
# size / this divisor.
_SYMMETRIC_QUERY_SHARE = 0.6
_SYMMETRIC_DEPTH_DIVISOR = 64



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

    Returns ``(similarities [Nq, k] float32, indices [Nq, k] int64)``, best first
    (equal similarities: lower gallery index first).
    With ``exclude_self`` the query must be the gallery itself (same rows) and each
    row's own index is dropped from its list.
    """
    query_vectors = l2_normalise(query)
    gallery_vectors = l2_normalise(gallery)
    _check_same_dimension(query_vectors, gallery_vectors)
    if exclude_self and not np.array_equal(query_vectors, gallery_vectors):
        raise ValueError("exclude_self=True needs the query to be the gallery (same rows)")
    _check_k_allowed(k, largest=len(gallery_vectors) - int(exclude_self), what="k")
    self_rows = np.arange(len(query_vectors)) if exclude_self else None
    return exact_topk(query_vectors, gallery_vectors, k, self_rows)


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    nmi: bool = True,
    seed: int = 0,
    nmi_kmeans: str = "ecaml",
    approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Recall@K, NMI, MAP@R and R-Precision of one set searched against itself.

    Keys: ``"recall@K"`` for each K in ascending order, then ``"nmi"`` (only when
    ``nmi`` is true), ``"map@r"`` and ``"r_precision"``; values are Python floats in
    [0, 1]. Lone queries are excluded from the retrieval scores (module docstring).
    ``nmi_kmeans`` picks the k-means settings (``kmeans_settings``); a set larger than
    ``approximate_above`` (None: never) is searched approximately; ``device`` is where
    the exact search runs (default: CUDA when available).
    """
    if nmi and nmi_kmeans not in NMI_KMEANS:
        raise ValueError(f"unknown nmi_kmeans {nmi_kmeans!r}; choose one of {', '.join(NMI_KMEANS)}")
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
        query_vectors=vectors[query_rows],
        gallery_vectors=vectors,
        query_codes=class_codes[query_rows],
        gallery_codes=class_codes,
        relevant_counts=relevant_counts[query_rows],
        recall_ks=ks,
        self_rows=query_rows,
        approximate_above=approximate_above,
        device=device,
    )
    if nmi:
        scores["nmi"] = clustering_nmi(vectors, class_codes, len(class_sizes), seed, nmi_kmeans, device)
    return _in_report_order(scores, ks)


def query_gallery_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    recall_ks: Sequence[int],
    approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision of queries searched against a separate gallery.

    The In-Shop protocol: nothing is self-excluded, and R is the number of gallery
    samples of the query's class. Queries whose class is absent from the gallery
    are left out. Keys as in ``retrieval_metrics``, without ``"nmi"``;
    ``approximate_above`` and ``device`` as there.
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
        query_vectors=query_vectors[query_rows],
        gallery_vectors=gallery_vectors,
        query_codes=query_codes,
        gallery_codes=gallery_codes,
        relevant_counts=gallery_sizes[query_codes],
        recall_ks=ks,
        self_rows=None,
        approximate_above=approximate_above,
        device=device,
    )
    return _in_report_order(scores, ks)



# --- search and scoring -------------------------------------------------------


def _retrieval_scores(
    query_vectors: np.ndarray,
    gallery_vectors: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    relevant_counts: np.ndarray,
    recall_ks: list[int],
    self_rows: np.ndarray | None,
    approximate_above: int | None,
    device: torch.device | None,
) -> dict[str, float]:
    """Mean Recall@K, MAP@R and R-Precision over the queries (all of which have R >= 1)."""
    if approximate_above is not None and len(gallery_vectors) > approximate_above:
        per_query = _approximate_per_query(query_vectors, gallery_vectors, query_codes, gallery_codes,
                                           relevant_counts, max(recall_ks), self_rows, approximate_above)
    else:
        per_query = _exact_per_query(query_vectors, gallery_vectors, query_codes, gallery_codes, relevant_counts,
                                     max(recall_ks), self_rows, device or default_device())
    first_hit_ranks, average_precisions, r_precisions = per_query
    scores = {f"recall@{k}": float(np.count_nonzero(first_hit_ranks < k) / len(first_hit_ranks)) for k in recall_ks}
    scores["map@r"] = float(np.mean(average_precisions))
    scores["r_precision"] = float(np.mean(r_precisions))
    return scores


def _exact_per_query(query_vectors, gallery_vectors, query_codes, gallery_codes, relevant_counts, largest_k, self_rows,
                     device):
    """Per query: the 0-based rank of its first relevant neighbour, AP@R and R-Precision, searched exactly.

    Queries go by increasing R, so that a block's partial sort only goes as deep as its
    own largest R. Recall@K needs no list of K neighbours at all: the rank of the first
    relevant neighbour answers it for every K. Rows with no relevant neighbour in their
    top R get that rank by counting, over the full row, the neighbours ranked before the
    best relevant one (ties by lower index, as in the lists), unless no K reaches past
    their R: then "beyond R" answers every K.
    """
    first_hit_ranks = np.empty(len(query_vectors), dtype=np.int64)
    average_precisions = np.empty(len(query_vectors), dtype=np.float64)
    r_precisions = np.empty(len(query_vectors), dtype=np.float64)
    pending = np.arange(len(query_vectors))
    if _symmetric_pays(len(query_vectors), len(gallery_vectors), relevant_counts, self_rows, device):
        depths = np.zeros(len(gallery_vectors), dtype=np.int64)
        depths[self_rows] = relevant_counts
        scores = symmetric.self_scores(gallery_vectors, gallery_codes, depths, largest_k)
        resolved = scores[3][self_rows]
        for output, score in zip((first_hit_ranks, average_precisions, r_precisions), scores):
            output[resolved] = score[self_rows[resolved]]
        pending = np.flatnonzero(~resolved)  # the rows the candidates could not answer: searched in full below
    if len(pending) == 0:
        return first_hit_ranks, average_precisions, r_precisions
    order = pending[np.argsort(relevant_counts[pending], kind="stable")]
    gallery_tensor = torch.from_numpy(gallery_vectors).to(device)
    gallery_code_tensor = torch.from_numpy(gallery_codes.astype(np.int32)).to(device)  # int32: a faster gather
    columns = torch.arange(len(gallery_vectors), device=device)
    members = _ClassMembers(gallery_codes, device)
    blocks = _blocks_by_depth(relevant_counts[order], len(gallery_vectors))
    output = product_buffer(max(block.stop - block.start for block in blocks), len(gallery_vectors), device)
    for rows in blocks:
        queries = order[rows]
        depth = int(relevant_counts[queries].max())
        block = torch.mm(torch.from_numpy(query_vectors[queries]).to(device), gallery_tensor.T,
                         out=output[: len(queries)])
        if self_rows is not None:
            mask_self(block, self_rows[queries])
        _, neighbours = topk_with_index_ties(block, depth)
        codes = torch.from_numpy(query_codes[queries].astype(np.int32)).to(device)
        is_relevant = gallery_code_tensor[neighbours] == codes[:, None]
        counts = torch.from_numpy(relevant_counts[queries].astype(np.int64)).to(device)
        average_precision, r_precision = precision_at_r(is_relevant, counts)
        found = is_relevant.any(dim=1)
        ranks = is_relevant.to(torch.int8).argmax(dim=1)  # the first True
        missed = torch.nonzero(~found).flatten()
        if len(missed) and largest_k > depth:
            ranks[missed] = _rank_of_best_relevant(block[missed], codes[missed], members, columns)
        elif len(missed):
            ranks[missed] = depth  # a miss for every K <= depth, and no K is larger
        first_hit_ranks[queries] = ranks.cpu().numpy()
        average_precisions[queries] = average_precision.cpu().numpy()
        r_precisions[queries] = r_precision.cpu().numpy()
    return first_hit_ranks, average_precisions, r_precisions


def _symmetric_pays(queries: int, gallery_size: int, relevant_counts: np.ndarray, self_rows, device) -> bool:
    """Whether the set is searched against itself through the symmetric product (``ecaml.eval.symmetric``):
    on the CPU, with most of the set querying (the product covers every row) and shallow lists (R far below
    the gallery's size, where candidates above a sampled threshold stay few; deep R goes through the blocks)."""
    return (device.type == "cpu" and self_rows is not None and queries >= _SYMMETRIC_QUERY_SHARE * gallery_size
            and int(relevant_counts.max()) <= gallery_size // _SYMMETRIC_DEPTH_DIVISOR)


def _blocks_by_depth(sorted_counts: np.ndarray, gallery_size: int) -> list[slice]:
    """Consecutive query blocks whose similarity rows and neighbour tables both stay bounded."""
    rows_for_similarities = max(1, BLOCK_ENTRIES // gallery_size)
    blocks, start = [], 0
    while start < len(sorted_counts):
        end = min(start + rows_for_similarities, len(sorted_counts))
        depth = int(sorted_counts[end - 1])
        end = min(end, start + max(1, _MAX_TABLE_ENTRIES // depth))
        blocks.append(slice(start, end))
        start = end
    return blocks


class _ClassMembers:
    """The gallery columns of each class, grouped (column indices sorted by class code, and each code's range)."""

    def __init__(self, gallery_codes: np.ndarray, device: torch.device):
        codes = gallery_codes.astype(np.int64)
        order = np.argsort(codes, kind="stable")
        self.columns = torch.from_numpy(order).to(device)
        self.starts = np.searchsorted(codes[order], np.arange(codes.max() + 2))

    def gather(self, query_codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(row of each entry, gallery column of each entry): every relevant column of every query row."""
        first, sizes = self.starts[query_codes], self.starts[query_codes + 1] - self.starts[query_codes]
        rows = np.repeat(np.arange(len(query_codes)), sizes)
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        positions = torch.from_numpy(np.repeat(first, sizes) + offsets).to(self.columns.device)
        return torch.from_numpy(rows).to(self.columns.device), self.columns[positions]


def _rank_of_best_relevant(similarities: torch.Tensor, query_codes: torch.Tensor, members: _ClassMembers,
                           columns: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's most similar relevant column: the columns above it, plus the equal
    ones of lower index (self columns hold -inf and never count).

    The best relevant similarity is read from the relevant columns alone (a gather of R + 1
    entries a row), so each full row is read twice (above, equal) rather than once per step
    of a masked reduction; only rows where the best value is shared go over the row again.
    """
    rows, relevant_columns = members.gather(query_codes.cpu().numpy())
    values = similarities[rows, relevant_columns]
    best = torch.full((len(similarities),), -torch.inf, dtype=similarities.dtype, device=similarities.device)
    best.scatter_reduce_(0, rows, values, reduce="amax")
    # int32 sums: a bool row summed into int64 took twice as long (the counts stay far below 2^31).
    above = (similarities > best[:, None]).sum(dim=1, dtype=torch.int32)
    shared = torch.nonzero((similarities == best[:, None]).sum(dim=1, dtype=torch.int32) > 1).flatten()
    if len(shared):
        # Equal columns of lower index than the first relevant column at the best value rank before it.
        at_best = values == best[rows]
        first = torch.full_like(best, len(columns), dtype=torch.int64)
        first.scatter_reduce_(0, rows[at_best], relevant_columns[at_best], reduce="amin")
        tied = (similarities[shared] == best[shared, None]) & (columns[None, :] < first[shared, None])
        above[shared] += tied.sum(dim=1, dtype=torch.int32)
    return above.to(torch.int64)


def _approximate_per_query(query_vectors, gallery_vectors, query_codes, gallery_codes, relevant_counts, largest_k,
                           self_rows, approximate_above):
    """As ``_exact_per_query``, from an approximate index's lists as deep as the largest K and R.

    A query with no relevant neighbour in its list gets the rank ``depth`` (beyond every K).
    The index's recall against the exact search is measured first and logged.
    """
    index = build_index(gallery_vectors, approximate_above)
    logger.warning("%s", index.measure_recall(k=min(10, len(gallery_vectors) - 1)))
    depth = max(largest_k, int(relevant_counts.max()))
    ranks, average_precisions, r_precisions = [], [], []
    for start in range(0, len(query_vectors), max(1, _MAX_TABLE_ENTRIES // depth)):
        rows = slice(start, start + max(1, _MAX_TABLE_ENTRIES // depth))
        _, neighbours = index.search(query_vectors[rows], depth, None if self_rows is None else self_rows[rows])
        is_relevant = (neighbours >= 0) & (gallery_codes[neighbours] == query_codes[rows, None])
        ranks.append(np.where(is_relevant.any(axis=1), is_relevant.argmax(axis=1), depth))
        average_precision, r_precision = precision_at_r(torch.from_numpy(is_relevant),
                                                         torch.from_numpy(relevant_counts[rows].astype(np.int64)))
        average_precisions.append(average_precision.numpy())
        r_precisions.append(r_precision.numpy())
    return np.concatenate(ranks), np.concatenate(average_precisions), np.concatenate(r_precisions)


# --- helpers -----------------------------------------------------------------


def _classes_codes_and_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct labels, each sample's index into them, and each class's size."""
    classes, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return classes, codes.reshape(-1), sizes


def _in_report_order(scores: dict[str, float], recall_ks: list[int]) -> dict[str, float]:
    keys = [f"recall@{k}" for k in recall_ks] + ["nmi", "map@r", "r_precision"]
    return {key: scores[key] for key in keys if key in scores}


