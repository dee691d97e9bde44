"""Tests for ecaml.eval.search: the blocked exact search against brute force and faiss, ties, and the approximate index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import ecaml.eval.search as search_module

from ecaml.eval.metrics import l2_normalise
from ecaml.eval.search import RecallReport, build_index, exact_topk, topk_with_index_ties


def _brute_force_topk(query, gallery, k, self_rows=None):
    """Stable sort of each full similarity row (float32 products, as the search computes them)."""
    similarity = torch.from_numpy(query) @ torch.from_numpy(gallery).T
    if self_rows is not None:
        similarity[np.arange(len(query)), self_rows] = -np.inf
    values, order = torch.sort(similarity, dim=1, descending=True, stable=True)
    return values[:, :k].numpy(), order[:, :k].numpy()


def _vectors(rng, count, dim, duplicates=0, coarse=False):
    """Gaussian unit vectors; or, ``coarse``, small integer vectors (not normalised: the search takes
    any vectors) whose products are exact in float32 whatever the summation order, so exact ties
    abound in every row and the expected order is defined bit for bit."""
    if coarse:
        vectors = rng.integers(-2, 3, size=(count, dim)).astype(np.float32)
    else:
        vectors = l2_normalise(rng.normal(size=(count, dim)))
    if duplicates:
        copies = rng.integers(0, count, duplicates)
        targets = rng.choice(count, duplicates, replace=False)
        vectors[targets] = vectors[copies]
    return vectors


def _assert_same_ranking(similarities, indices, expected_similarities, expected_indices, exact):
    """Bit for bit on exact data; on Gaussian data the blocks' products may round differently in the
    last bit, so similarities agree to 1e-6 and the lists wherever neighbours are not that close."""
    if exact:
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_array_equal(similarities, expected_similarities)
        return
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-6)
    clear = np.ones_like(indices, dtype=bool)
    gaps = np.abs(np.diff(expected_similarities, axis=1)) < 1e-5
    clear[:, 1:] &= ~gaps
    clear[:, :-1] &= ~gaps
    np.testing.assert_array_equal(indices[clear], expected_indices[clear])


SHAPES = [  # (queries, gallery, dim): one block, many blocks, a lone query, a tall gallery
    (30, 30, 4), (64, 200, 16), (1, 50, 8), (17, 400, 3),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("query_count", "gallery_count", "dim"), SHAPES)
def test_exact_topk_equals_stable_brute_force_query_vs_gallery(seed, query_count, gallery_count, dim):
    rng = np.random.default_rng(seed)
    coarse = seed % 3 != 0
    gallery = _vectors(rng, gallery_count, dim, duplicates=gallery_count // 5, coarse=coarse)
    fresh = _vectors(rng, query_count - query_count // 2, dim, coarse=coarse)
    query = np.concatenate([gallery[: query_count // 2], fresh])
    for k in sorted({1, 2, 5, gallery_count // 2, gallery_count}):
        # Small blocks force several blocks per call; the answer must not depend on them.
        for block_entries in (gallery_count * 7, 1 << 25):
            similarities, indices = exact_topk(query, gallery, k, block_entries=block_entries)
            expected_similarities, expected_indices = _brute_force_topk(query, gallery, k)
            _assert_same_ranking(similarities, indices, expected_similarities, expected_indices, exact=coarse)


@pytest.mark.parametrize("seed", range(8))
def test_exact_topk_excluding_self_up_to_every_other_row(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 120))
    vectors = _vectors(rng, count, int(rng.integers(2, 10)), duplicates=count // 3, coarse=seed % 2 == 0)
    rows = np.arange(count)
    for k in sorted({1, 3, count - 1} & set(range(1, count))):
        similarities, indices = exact_topk(vectors, vectors, k, self_rows=rows, block_entries=count * 5)
        expected_similarities, expected_indices = _brute_force_topk(vectors, vectors, k, rows)
        _assert_same_ranking(similarities, indices, expected_similarities, expected_indices, exact=seed % 2 == 0)
        assert not (indices == rows[:, None]).any(), "a query listed itself"


@pytest.mark.parametrize("seed", range(5))
def test_exact_topk_agrees_with_faiss_where_faiss_is_unambiguous(seed):
    rng = np.random.default_rng(seed)
    gallery, query = _vectors(rng, 500, 24), _vectors(rng, 40, 24)
    index = faiss.IndexFlatIP(24)
    index.add(gallery)
    faiss_similarities, faiss_indices = index.search(query, 50)
    similarities, indices = exact_topk(query, gallery, 50)
    # Two libraries' products round differently in the last bits: near-ties may swap, nothing else.
    _assert_same_ranking(similarities, indices, faiss_similarities, faiss_indices, exact=False)


@pytest.mark.parametrize("seed", range(4))
def test_deep_lists_through_the_numpy_selection_equal_stable_brute_force(seed, monkeypatch):
    """Deep lists (MAP@R with R in the thousands) go through numpy's partition on the CPU, in
    threads; with ties everywhere they must still be the stable ranking, across that path's threshold."""
    rng = np.random.default_rng(seed)
    gallery = _vectors(rng, 1500, 5, duplicates=300, coarse=True)
    query = np.concatenate([gallery[:20], _vectors(rng, 21, 5, coarse=True)])
    calls = []
    original = search_module.ordered_keys
    monkeypatch.setattr(search_module, "ordered_keys", lambda *args: calls.append(1) or original(*args))
    for k in (3, 511, 512, 513, 900, 1499, 1500):
        expected_similarities, expected_indices = _brute_force_topk(query, gallery, k)
        similarities, indices = exact_topk(query, gallery, k, device=torch.device("cpu"))
        _assert_same_ranking(similarities, indices, expected_similarities, expected_indices, exact=True)
    assert calls, "no list went through the numpy selection"
    self_rows = np.arange(40)
    for k in (600, 1499):
        expected = _brute_force_topk(gallery[:40], gallery, k, self_rows)
        found = exact_topk(gallery[:40], gallery, k, self_rows=self_rows, device=torch.device("cpu"))
        _assert_same_ranking(*found, *expected, exact=True)


def test_ties_go_to_the_lower_index_even_across_the_cut():
    # One row, values with a run of equal ones straddling the cut at k = 3.
    row = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.5, 0.5, 0.2]])
    values, positions = topk_with_index_ties(row.clone(), 3)
    assert positions.tolist() == [[1, 3, 2]]
    assert values[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    _, positions = topk_with_index_ties(row.clone(), 5)
    assert positions.tolist() == [[1, 3, 2, 4, 5]]


def test_exact_topk_rejects_impossible_k():
    vectors = _vectors(np.random.default_rng(0), 5, 3)
    with pytest.raises(ValueError, match="out of range"):
        exact_topk(vectors, vectors, 5, self_rows=np.arange(5))
    with pytest.raises(ValueError, match="out of range"):
        exact_topk(vectors, vectors, 0)


# --- index choice ------------------------------------------------------------------


def _clustered_unit(rng, count, dim, classes):
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, count)
    return l2_normalise((centres[labels] + 0.5 * rng.normal(size=(count, dim))).astype(np.float32))


def test_build_index_is_exact_up_to_the_threshold_and_approximate_above():
    vectors = _clustered_unit(np.random.default_rng(0), 600, 16, 12)
    exact = build_index(vectors, approximate_above=600)
    assert exact.is_exact
    similarities, indices = exact.search(vectors[:10], 5, self_rows=np.arange(10))
    np.testing.assert_array_equal(indices, exact_topk(vectors[:10], vectors, 5, np.arange(10))[1])
    assert exact.measure_recall(k=5, sample=50).recall == 1.0
    for kind in ("hnsw", "ivf"):
        approximate = build_index(vectors, approximate_above=599, kind=kind)
        assert approximate.kind == kind and not approximate.is_exact
        similarities, indices = approximate.search(vectors[:10], 5, self_rows=np.arange(10))
        assert indices.shape == (10, 5) and not (indices == np.arange(10)[:, None]).any()
    assert build_index(vectors, approximate_above=None).is_exact
    with pytest.raises(ValueError, match="unknown approximate index"):
        build_index(vectors, approximate_above=10, kind="lsh")


@pytest.mark.parametrize("seed", range(3))
def test_recall_report_counts_what_the_approximate_index_misses(seed):
    rng = np.random.default_rng(seed)
    vectors = _clustered_unit(rng, 2000, 32, 40)
    index = build_index(vectors, approximate_above=100, kind="ivf", seed=seed)
    index.faiss_index.nprobe = 1  # one list of ~180 probed: a deliberately lossy search
    report = index.measure_recall(k=10, sample=200, seed=seed)
    # The report's recall is exactly the share of true top-10 neighbours the search returns.
    rows = np.sort(np.random.default_rng(seed).choice(2000, size=200, replace=False))
    _, found = index.search(vectors[rows], 10, self_rows=rows)
    _, truth = exact_topk(vectors[rows], vectors, 10, rows)
    expected = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, truth)])
    assert isinstance(report, RecallReport)
    assert report.recall == pytest.approx(expected)
    assert 0.2 < report.recall < 1.0
    assert (report.k, report.queries, report.size, report.kind) == (10, 200, 2000, "ivf")
    assert f"{report.recall:.2%}" in str(report)
    index.faiss_index.nprobe = index.faiss_index.nlist  # every list probed: exact
    assert index.measure_recall(k=10, sample=200, seed=seed).recall == pytest.approx(1.0)


@pytest.mark.parametrize("run_length", [2, 3, 15, 40, 200])
def test_long_and_short_runs_of_equal_values_are_ordered_by_index(run_length):
    # Runs longer than the odd-even passes settle take the re-sort; both must give the index order.
    rng = np.random.default_rng(run_length)
    rows = rng.normal(size=(6, 500)).astype(np.float32)
    for row in rows:
        row[rng.choice(500, run_length, replace=False)] = 3.0  # the run is the top of the row
    block = torch.from_numpy(rows)
    for k in (run_length, run_length + 5, 499):
        values, positions = topk_with_index_ties(block.clone(), k)
        expected_values, expected_positions = torch.sort(block, dim=1, descending=True, stable=True)
        np.testing.assert_array_equal(positions.numpy(), expected_positions[:, :k].numpy())
        np.testing.assert_array_equal(values.numpy(), expected_values[:, :k].numpy())


def test_the_numpy_selections_keys_order_signed_zeros_negatives_and_minus_infinity_as_floats_do():
    # Deep lists pack each value and column into an int64 key; -0.0 and +0.0 compare equal as floats,
    # so they must tie (lower column first), and negative values and the -inf of a masked self rank below.
    rng = np.random.default_rng(0)
    rows = rng.choice(np.array([-0.0, 0.0, -0.5, 0.5, -1.0, 1.0, 0.25, -np.inf], dtype=np.float32), size=(5, 2000))
    rows[:, :600] = rng.normal(size=(5, 600)).astype(np.float32)
    block = torch.from_numpy(rows)
    for k in (600, 1000, 1999):
        values, positions = topk_with_index_ties(block.clone(), k)
        expected_values, expected_positions = torch.sort(block, dim=1, descending=True, stable=True)
        np.testing.assert_array_equal(positions.numpy(), expected_positions[:, :k].numpy())
        np.testing.assert_array_equal(values.numpy(), expected_values[:, :k].numpy())
