"""Neighbourhood change between two embeddings of the same items (Latent Scope's per-item measure).

For each item present in both, the Jaccard distance between its ``k`` nearest
neighbours (itself excluded, cosine, exact) in the first embedding and in the
second: 0 when the two agree on who its neighbours are, 1 when they share none.
Alongside, each class's Recall@1 in both, so a page can list the classes the
second run gained or lost most on and say in one sentence where it does better.

Items are matched by dataset index (an image of one split, or a row of imported
items): only those present in both count.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from ecaml.eval.evaluate import Embeddings
from ecaml.eval.metrics import l2_normalise

DEFAULT_K = 10


@dataclass
class NeighbourhoodChange:
    indices: np.ndarray  # dataset index of each compared item (sorted)
    labels: np.ndarray  # its class
    jaccard: np.ndarray  # float [N] in [0, 1]; NaN for items not queried (a sample)
    first_hit: np.ndarray  # bool [N]: nearest neighbour of the same class in the first embedding (queried items)
    second_hit: np.ndarray
    k: int

    def most_changed(self, count: int = 20) -> np.ndarray:
        """Positions (into ``indices``) of the items whose neighbourhoods changed most, most first."""
        queried = np.flatnonzero(~np.isnan(self.jaccard))
        order = np.lexsort((self.indices[queried], -self.jaccard[queried]))
        return queried[order[:count]]

    def class_recall(self) -> list[tuple[int, float, float, int]]:
        """(class, R@1 in the first, R@1 in the second, items queried) per class, largest gain of the second first."""
        queried = ~np.isnan(self.jaccard)
        rows = []
        for label in np.unique(self.labels[queried]):
            members = queried & (self.labels == label)
            rows.append((int(label), float(self.first_hit[members].mean()), float(self.second_hit[members].mean()),
                         int(members.sum())))
        return sorted(rows, key=lambda row: (row[1] - row[2], row[0]))


def neighbourhood_change(first: Embeddings, second: Embeddings, k: int = DEFAULT_K,
                         max_queries: int | None = None, seed: int = 0) -> NeighbourhoodChange:
    """The change of every shared item's ``k`` nearest neighbours from ``first`` to ``second``.

    Neighbours are searched among all shared items; ``max_queries`` (None: all)
    queries a seeded sample of them instead, the rest getting NaN.
    """
    common, first_rows, second_rows = np.intersect1d(first.indices, second.indices, return_indices=True)
    if len(common) < 2:
        raise ValueError("the two runs share fewer than 2 items: they do not embed the same images")
    labels = np.asarray(first.labels)[first_rows]
    if not np.array_equal(labels, np.asarray(second.labels)[second_rows]):
        raise ValueError("the two runs give the same items different labels: they are not the same items")
    k = min(int(k), len(common) - 1)
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    queries = np.arange(len(common))
    if max_queries is not None and len(common) > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(len(common), size=max_queries, replace=False))
    first_neighbours = _neighbours(first.vectors, first_rows, queries, k)
    second_neighbours = _neighbours(second.vectors, second_rows, queries, k)
    jaccard = np.full(len(common), np.nan)
    jaccard[queries] = _jaccard_distances(first_neighbours, second_neighbours)
    first_hit, second_hit = np.zeros(len(common), bool), np.zeros(len(common), bool)
    first_hit[queries] = labels[first_neighbours[:, 0]] == labels[queries]
    second_hit[queries] = labels[second_neighbours[:, 0]] == labels[queries]
    return NeighbourhoodChange(common, labels, jaccard, first_hit, second_hit, k)


def _neighbours(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions (into ``rows``) of each query's ``k`` nearest other items, exact cosine."""
    gallery = l2_normalise(np.asarray(vectors[rows], dtype=np.float32))
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    _, found = index.search(np.ascontiguousarray(gallery[queries]), k + 1)
    is_self = found == queries[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # exact duplicates can push the query out of its own top k+1
    return found[~is_self].reshape(len(queries), k)


def _jaccard_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 - |A ∩ B| / |A ∪ B| row by row, for neighbour lists of k distinct items each."""
    k = first.shape[1]
    # Rows of distinct ids: the intersection is the number of ids of one list that appear in the other.
    shared = (first[:, :, None] == second[:, None, :]).any(axis=2).sum(axis=1)
    return 1.0 - shared / (2 * k - shared)


def where_second_does_better(change: NeighbourhoodChange, class_names: list[str], first_name: str,
                             second_name: str, shown: int = 3) -> str:
    """One sentence: on which classes the second run finds a same-class nearest neighbour more often, and overall."""
    rows = change.class_recall()
    gains = [row for row in reversed(rows) if row[2] > row[1]]
    losses = [row for row in rows if row[2] < row[1]]
    queried = ~np.isnan(change.jaccard)
    first_r1, second_r1 = change.first_hit[queried].mean(), change.second_hit[queried].mean()
    overall = f"overall R@1 {100 * second_r1:.1f}% against {100 * first_r1:.1f}%"  # percent, as every page shows R@1
    if not gains:
        return f"{second_name} does better than {first_name} on no class ({overall})."
    named = ", ".join(f"{class_names[label]} ({100 * (after - before):+.1f} points)"
                      for label, before, after, _ in gains[:shown])
    return (f"{second_name} does better than {first_name} on {len(gains)} of {len(rows)} classes, most on {named}, "
            f"and worse on {len(losses)}; {overall}.")
