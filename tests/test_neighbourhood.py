"""Neighbourhood change between two embeddings of the same items: Jaccard of k nearest neighbours, per-class R@1."""

from __future__ import annotations

import numpy as np
import pytest

from ecaml.eval.evaluate import Embeddings
from ecaml.serve.neighbourhood import neighbourhood_change, where_second_does_better


def embeddings(vectors, labels, indices=None):
    vectors = np.asarray(vectors, np.float32)
    return Embeddings(vectors, np.asarray(labels), np.arange(len(vectors)) if indices is None else np.asarray(indices))


def brute_force_jaccard(first, second, k):
    """Sets of neighbours by sorting cosine similarities in float64, one item at a time."""
    def neighbour_sets(vectors):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        similarity = unit.astype(np.float64) @ unit.T.astype(np.float64)
        np.fill_diagonal(similarity, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in similarity]

    return np.array([1 - len(a & b) / len(a | b) for a, b in zip(neighbour_sets(first), neighbour_sets(second))])


def test_jaccard_matches_a_brute_force_count_on_unrelated_embeddings():
    rng = np.random.default_rng(11)
    first, second = rng.normal(size=(300, 12)), rng.normal(size=(300, 12))
    first[150:] = first[:150] + 0.05 * rng.normal(size=(150, 12))  # half the items keep close partners
    second[150:] = first[150:] + 0.01 * rng.normal(size=(150, 12))
    labels = np.arange(300) % 5
    change = neighbourhood_change(embeddings(first, labels), embeddings(second, labels), k=10)
    np.testing.assert_allclose(change.jaccard, brute_force_jaccard(first, second, 10), atol=1e-12)
    assert 0 < change.jaccard.min() and change.jaccard.max() == 1.0  # not all alike: the check can fail


def test_same_embedding_changes_nothing_and_a_hand_made_swap_is_found():
    # Four points on a line (as 2-D directions); k = 1. In the second embedding items 0 and 3 trade places.
    first = [[1, 0.0], [1, 0.1], [1, 0.9], [1, 1.0]]
    second = [[1, 1.0], [1, 0.1], [1, 0.9], [1, 0.0]]
    labels = [0, 0, 1, 1]
    same = neighbourhood_change(embeddings(first, labels), embeddings(first, labels), k=1)
    assert same.jaccard.tolist() == [0, 0, 0, 0]
    change = neighbourhood_change(embeddings(first, labels), embeddings(second, labels), k=1)
    # first: 0->1, 1->0, 2->3, 3->2; second: 0->2, 1->3, 2->0, 3->1: every neighbour changed.
    assert change.jaccard.tolist() == [1, 1, 1, 1]
    assert change.first_hit.tolist() == [True, True, True, True]
    assert change.second_hit.tolist() == [False, False, False, False]
    assert [row[:3] for row in change.class_recall()] == [(0, 1.0, 0.0), (1, 1.0, 0.0)]


def test_items_are_matched_by_index_and_per_class_recall_names_where_the_second_does_better():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 8)) * 4
    good = centres[labels] + rng.normal(size=(120, 8))
    blurred = good.copy()
    blurred[labels == 3] = rng.normal(size=(30, 8)) * 4  # class 3 scattered in the first run
    order = rng.permutation(120)  # the second run lists the same items in another order, with an extra one
    second = embeddings(np.vstack([good[order], rng.normal(size=(1, 8))]), np.append(labels[order], 0),
                        np.append(order, 999))
    change = neighbourhood_change(embeddings(blurred, labels), second, k=5)
    assert change.indices.tolist() == list(range(120))
    best_gain = change.class_recall()[0]
    assert best_gain[0] == 3 and best_gain[2] > best_gain[1] + 0.1
    assert change.most_changed(10).size == 10 and set(change.labels[change.most_changed(10)]) == {3}
    sentence = where_second_does_better(change, ["a", "b", "c", "d"], "A", "B")
    assert sentence.startswith("B does better than A on") and "most on d (+" in sentence
    assert sentence.count(".") >= 1 and "\n" not in sentence


def test_a_sample_of_queries_leaves_the_others_unscored_and_other_items_are_refused():
    rng = np.random.default_rng(4)
    vectors, labels = rng.normal(size=(200, 6)), np.arange(200) % 4
    change = neighbourhood_change(embeddings(vectors, labels), embeddings(vectors * 2, labels), k=10, max_queries=50)
    assert np.isfinite(change.jaccard).sum() == 50 and np.nanmax(change.jaccard) == 0
    with pytest.raises(ValueError, match="different labels"):
        neighbourhood_change(embeddings(vectors, labels), embeddings(vectors, (labels + 1) % 4))
    with pytest.raises(ValueError, match="share fewer than 2"):
        neighbourhood_change(embeddings(vectors, labels), embeddings(vectors, labels, np.arange(200) + 1000))
