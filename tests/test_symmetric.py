"""The symmetric self-search (ecaml.eval.symmetric) gives exactly the scores of a full stable ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ecaml.eval.metrics as metrics
import ecaml.eval.symmetric as symmetric
from ecaml.eval.metrics import l2_normalise, retrieval_metrics


def _plain_scores(vectors, codes, depths, largest_k):
    """Rank of the first relevant neighbour, AP@R and R-Precision per row with depth > 0, from a stable
    sort of the full float32 row (self last)."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    ranks, average_precisions, r_precisions = {}, {}, {}
    for row in np.flatnonzero(depths > 0):
        ranking = np.argsort(-similarity[row], kind="stable")[:-1]
        relevant = codes[ranking] == codes[row]
        r = depths[row]
        ranks[row] = int(np.argmax(relevant)) if relevant.any() else len(relevant)
        hits = np.cumsum(relevant[:r])
        average_precisions[row] = float(np.sum(np.where(relevant[:r], hits / np.arange(1, r + 1), 0.0)) / r)
        r_precisions[row] = float(hits[-1] / r)
    return ranks, average_precisions, r_precisions


def _data(seed: int, count: int, coarse: bool):
    """Unit rows whose cosines are exact in float32 whatever the order of summation (so that a tie is a tie
    in every product): ``coarse``, 4 entries of +-1/2 in 8 dimensions (cosines in steps of 1/4, ties and
    duplicates everywhere); otherwise 16 entries of +-1/4 in 64 dimensions (steps of 1/16), plus duplicates."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, max(2, count // 6), count)
    dim, nonzero = (8, 4) if coarse else (64, 16)
    vectors = np.zeros((count, dim), dtype=np.float32)
    centres = [rng.choice(dim, nonzero, replace=False) for _ in range(codes.max() + 1)]
    for row, code in zip(vectors, codes):
        # Most rows take their class's entries, with a few random signs; the rest random entries.
        chosen = centres[code] if rng.random() < 0.7 else rng.choice(dim, nonzero, replace=False)
        signs = np.where(rng.random(nonzero) < 0.2, -1.0, 1.0)
        row[chosen] = signs / np.sqrt(nonzero)
    vectors[rng.integers(0, count, count // 10)] = vectors[rng.integers(0, count, count // 10)]  # duplicates
    sizes = np.bincount(codes)
    depths = sizes[codes] - 1
    depths[rng.integers(0, count)] = 0  # a row that does not query, but stays a column
    return vectors, codes, depths


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("coarse", [False, True])
def test_self_scores_equal_a_full_stable_ranking(seed, coarse):
    count = 40 + 23 * seed
    vectors, codes, depths = _data(seed, count, coarse)
    largest_k = [1, 5, count - 1][seed % 3]
    ranks, average_precisions, r_precisions, resolved = symmetric.self_scores(vectors, codes, depths, largest_k,
                                                                             tile=7 + seed)
    expected = _plain_scores(vectors, codes, depths, largest_k)
    assert resolved.sum() > 0
    assert not resolved[depths == 0].any()
    for row in np.flatnonzero(resolved):
        if expected[0][row] < largest_k or ranks[row] < largest_k:
            assert ranks[row] == expected[0][row], row
        assert average_precisions[row] == pytest.approx(expected[1][row], abs=1e-12)
        assert r_precisions[row] == pytest.approx(expected[2][row], abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_candidates_are_every_entry_above_the_thresholds_in_stable_order(seed):
    rng = np.random.default_rng(seed)
    vectors, _, _ = _data(seed, 30 + 11 * seed, coarse=seed % 2 == 1)
    thresholds = rng.choice([-np.inf, np.inf, 0.0, 0.25, 0.5], len(vectors)).astype(np.float32)
    thresholds[thresholds == -np.inf] = np.finfo(np.float32).min
    starts, columns = symmetric.candidates_above(torch.from_numpy(vectors), thresholds, tile=5 + seed)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    for row in range(len(vectors)):
        ranking = np.argsort(-similarity[row], kind="stable")
        expected = ranking[similarity[row, ranking] >= thresholds[row]]
        np.testing.assert_array_equal(columns[starts[row]:starts[row + 1]], expected)


def test_retrieval_metrics_are_the_same_with_and_without_the_symmetric_search(monkeypatch):
    vectors, codes, _ = _data(3, 700, coarse=False)
    used = []
    original = symmetric.self_scores
    monkeypatch.setattr(symmetric, "self_scores", lambda *args: used.append(1) or original(*args, tile=64))
    monkeypatch.setattr(metrics, "_SYMMETRIC_DEPTH_DIVISOR", 1)  # this set's classes are deep for its size
    with_symmetric = retrieval_metrics(vectors, codes, recall_ks=(1, 10, 100, 699), nmi=False)
    assert used
    monkeypatch.setattr(metrics, "_symmetric_pays", lambda *args: False)
    without = retrieval_metrics(vectors, codes, recall_ks=(1, 10, 100, 699), nmi=False)
    assert with_symmetric.keys() == without.keys()
    for key in without:
        assert with_symmetric[key] == pytest.approx(without[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_ranked_by_row_is_a_stable_sort_by_row_then_value(monkeypatch, seed):
    monkeypatch.setattr(symmetric, "_SORT_ROWS", 3 + seed)  # several chunks, some rows empty
    rng = np.random.default_rng(seed)
    count, entries = 20 + seed, 300
    rows = rng.integers(0, count, entries)
    rows[rows == 4] = 5
    columns = rng.permutation(entries * 3)[:entries]
    values = (rng.integers(-3, 4, entries) / 4).astype(np.float32)  # ties everywhere, and -0.0 next to +0.0
    values[::7] = -0.0
    starts, ranked = symmetric.ranked_by_row(rows, columns, values, count)
    for row in range(count):
        mine = np.flatnonzero(rows == row)
        expected = columns[mine[np.lexsort((columns[mine], -(values[mine] + 0.0)))]]
        np.testing.assert_array_equal(ranked[starts[row]:starts[row + 1]], expected)
