"""Tests for ecaml.eval.metrics: brute force, pytorch-metric-learning, hand-worked cases, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans

from ecaml.eval.kmeans import kmeans_settings, lloyd_kmeans
from ecaml.eval.metrics import (
    DEFAULT_RECALL_KS,
    l2_normalise,
    nearest_neighbours,
    query_gallery_metrics,
    retrieval_metrics,
)
from ecaml.eval.pair_distances import pair_distance_samples

# Seed 1 of _clustered_data(100, 8, 6) has no two neighbours of any query closer
# in cosine than 6.6e-6, far above float32 search noise, so rankings are unambiguous.
BRUTE_FORCE_SEED = 1
SINGLETON_LABEL = 99


def _clustered_data(n: int, dim: int, classes: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    embeddings = centres[labels] + spread * rng.normal(size=(n, dim))
    return embeddings.astype(np.float32), labels


def _brute_force_data():
    embeddings, labels = _clustered_data(100, 8, 6, BRUTE_FORCE_SEED)
    labels[17] = SINGLETON_LABEL  # a lone query that must be skipped but stays in the gallery
    # Unnormalised on purpose, with varied norms: the metrics must normalise.
    embeddings *= np.linspace(0.5, 3.0, len(embeddings), dtype=np.float32)[:, None]
    return embeddings, labels


def _brute_force_ranking(query: np.ndarray, gallery: np.ndarray, exclude_self: bool):
    """Gallery indices per query, most similar first, from the full similarity matrix."""
    q = query.astype(np.float64) / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery.astype(np.float64) / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = q @ g.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    ranking = np.argsort(-similarity, axis=1, kind="stable")
    ranked_similarity = np.take_along_axis(similarity, ranking, axis=1)
    gaps = -np.diff(ranked_similarity[:, : len(g) - int(exclude_self)], axis=1)
    assert gaps.min() > 1e-6, "test data has near-ties; the expected ranking would be ambiguous"
    return ranking[:, : len(g) - 1] if exclude_self else ranking


def _brute_force_scores(ranking, query_labels, gallery_labels, relevant_counts, ks):
    """Per-definition Recall@K, MAP@R, R-Precision over queries with R > 0, loop by loop."""
    recalls = {k: [] for k in ks}
    average_precisions, r_precisions = [], []
    for row, label, r in zip(ranking, query_labels, relevant_counts):
        if r == 0:
            continue
        relevant = gallery_labels[row] == label
        for k in ks:
            recalls[k].append(float(relevant[:k].any()))
        precision_sum = sum(relevant[: i + 1].sum() / (i + 1) for i in range(r) if relevant[i])
        average_precisions.append(precision_sum / r)
        r_precisions.append(relevant[:r].sum() / r)
    scores = {f"recall@{k}": np.mean(recalls[k]) for k in ks}
    scores["map@r"] = np.mean(average_precisions)
    scores["r_precision"] = np.mean(r_precisions)
    return scores


def _assert_scores_match(actual, expected):
    assert set(actual) - {"nmi"} == set(expected)
    for key, value in expected.items():
        # Recall is a count over queries and comes out exact; the others differ only
        # by summation order.
        assert actual[key] == pytest.approx(value, rel=0, abs=1e-12), key


# --- brute force ---------------------------------------------------------------


def test_retrieval_metrics_match_brute_force():
    embeddings, labels = _brute_force_data()
    ks = (1, 2, 4, 8, 16)
    ranking = _brute_force_ranking(embeddings, embeddings, exclude_self=True)
    relevant_counts = np.array([np.sum(labels == label) - 1 for label in labels])
    expected = _brute_force_scores(ranking, labels, labels, relevant_counts, ks)

    actual = retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)

    _assert_scores_match(actual, expected)
    for k in ks:
        assert actual[f"recall@{k}"] == expected[f"recall@{k}"]
    assert 0.2 < actual["map@r"] < 0.95, "data should make MAP@R informative, not trivial"


def test_query_gallery_metrics_match_brute_force():
    embeddings, labels = _brute_force_data()
    query, gallery = embeddings[:40], embeddings[40:]
    query_labels, gallery_labels = labels[:40], labels[40:]
    query_labels = query_labels.copy()
    query_labels[3] = 1234  # class absent from the gallery: skipped
    ks = (1, 5, 10)
    ranking = _brute_force_ranking(query, gallery, exclude_self=False)
    relevant_counts = np.array([np.sum(gallery_labels == label) for label in query_labels])
    expected = _brute_force_scores(ranking, query_labels, gallery_labels, relevant_counts, ks)

    actual = query_gallery_metrics(query, query_labels, gallery, gallery_labels, ks)

    assert list(actual) == ["recall@1", "recall@5", "recall@10", "map@r", "r_precision"]
    _assert_scores_match(actual, expected)


def test_nearest_neighbours_match_brute_force():
    embeddings, _ = _brute_force_data()
    ranking = _brute_force_ranking(embeddings, embeddings, exclude_self=True)
    unit = l2_normalise(embeddings).astype(np.float64)

    similarities, indices = nearest_neighbours(embeddings, embeddings, k=10, exclude_self=True)

    assert indices.shape == similarities.shape == (100, 10)
    np.testing.assert_array_equal(indices, ranking[:, :10])
    expected_similarities = np.einsum("id,ikd->ik", unit, unit[indices])
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_nearest_neighbours_without_self_exclusion_finds_self_first():
    embeddings, _ = _brute_force_data()
    similarities, indices = nearest_neighbours(embeddings, embeddings, k=3, exclude_self=False)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(embeddings)))
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)


# --- many seeds and shapes, with exact ties ------------------------------------------


def _tied_data(rng, count, classes, dim=8):
    """Rows with four entries of +-1 and the rest 0: unit length after dividing by 2, so every
    cosine is a multiple of 1/4, exact in float32, and ties (and duplicates) are everywhere."""
    embeddings = np.zeros((count, dim), dtype=np.float32)
    for row in embeddings:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    labels = rng.integers(0, classes, count)
    return embeddings, labels


def _stable_ranking(query, gallery, exclude_self):
    """Gallery indices per query, most similar first, equal similarities by lower index."""
    similarity = l2_normalise(query).astype(np.float64) @ l2_normalise(gallery).astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    ranking = np.argsort(-similarity, axis=1, kind="stable")
    return ranking[:, : len(gallery) - 1] if exclude_self else ranking


@pytest.mark.parametrize("seed", range(12))
def test_retrieval_metrics_match_brute_force_with_ties_over_many_shapes(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(3, 160))
    embeddings, labels = _tied_data(rng, count, classes=int(rng.integers(1, 12)))
    labels[rng.integers(0, count)] = 1000  # a lone query
    relevant_counts = np.array([np.sum(labels == label) - 1 for label in labels])
    if not relevant_counts.any():
        labels[:2] = 7
        relevant_counts = np.array([np.sum(labels == label) - 1 for label in labels])
    ks = sorted({1, 2, max(1, count // 3), count - 1})
    expected = _brute_force_scores(_stable_ranking(embeddings, embeddings, True), labels, labels, relevant_counts, ks)

    actual = retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)

    _assert_scores_match(actual, expected)


@pytest.mark.parametrize("seed", range(8))
def test_query_gallery_metrics_match_brute_force_with_ties_over_many_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    gallery, gallery_labels = _tied_data(rng, int(rng.integers(2, 120)), classes=6)
    query, query_labels = _tied_data(rng, int(rng.integers(1, 40)), classes=7)  # class 6 may be absent
    query[: len(query) // 2] = gallery[: len(query) // 2]  # duplicates across the two sets
    query_labels[0] = gallery_labels[0]
    ks = sorted({1, 3, len(gallery)} & set(range(1, len(gallery) + 1)))
    relevant_counts = np.array([np.sum(gallery_labels == label) for label in query_labels])
    expected = _brute_force_scores(_stable_ranking(query, gallery, False), query_labels, gallery_labels,
                                   relevant_counts, ks)

    actual = query_gallery_metrics(query, query_labels, gallery, gallery_labels, ks)

    _assert_scores_match(actual, expected)


def test_large_k_is_answered_beyond_the_depth_of_r():
    # Tiny classes (R = 1) but K up to N - 1: recall for K far beyond R comes from the
    # rank of the first relevant neighbour, which must match the full brute-force ranking.
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(300, 6)).astype(np.float32)
    labels = np.repeat(np.arange(150), 2)
    ks = (1, 10, 100, 250, 299)
    relevant_counts = np.ones(300, dtype=int)
    expected = _brute_force_scores(_stable_ranking(embeddings, embeddings, True), labels, labels, relevant_counts, ks)
    actual = retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)
    _assert_scores_match(actual, expected)
    assert 0 < actual["recall@10"] < actual["recall@250"] < 1.0 == actual["recall@299"]


def test_approximate_search_above_the_threshold_is_close_and_reports_its_recall(caplog):
    embeddings, labels = _clustered_data(600, 16, 8, seed=4, spread=1.0)
    exact = retrieval_metrics(embeddings, labels, recall_ks=(1, 10), nmi=False)
    with caplog.at_level("WARNING", logger="ecaml.eval.metrics"):
        approximate = retrieval_metrics(embeddings, labels, recall_ks=(1, 10), nmi=False, approximate_above=500)
    assert list(approximate) == list(exact)
    for key in exact:
        assert approximate[key] == pytest.approx(exact[key], abs=0.03), key
    assert "approximate search (hnsw, 600 vectors)" in caplog.text
    assert "of the exact top 10" in caplog.text
    assert retrieval_metrics(embeddings, labels, recall_ks=(1, 10), nmi=False, approximate_above=600) == exact


# --- pytorch-metric-learning ---------------------------------------------------


def test_agrees_with_pytorch_metric_learning():
    embeddings, labels = _clustered_data(400, 32, 10, seed=7, spread=1.2)
    unit = l2_normalise(embeddings)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    # reference=None makes pml search the query set against itself with
    # ref_includes_query=True, dropping each query's own index.
    reference = calculator.get_accuracy(torch.from_numpy(unit), torch.from_numpy(labels))

    ours = retrieval_metrics(embeddings, labels, seed=0)

    assert ours["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)
    assert 0.3 < ours["map@r"] < 0.95, "data should be clustered but not trivially"
    # NMI: one k-means run, as pml's default; a run's local minimum depends on its seed, so
    # the two are compared over eight seeds each.
    ours_nmi = [retrieval_metrics(embeddings, labels, recall_ks=(1,), seed=seed)["nmi"] for seed in range(8)]
    pml_nmi = [AccuracyCalculator(include=("NMI",), k="max_bin_count", device=torch.device("cpu"),
                                  kmeans_func=FaissKMeans(niter=20, nredo=1, seed=seed),
                                  ).get_accuracy(torch.from_numpy(unit), torch.from_numpy(labels))["NMI"]
               for seed in range(8)]
    assert np.mean(ours_nmi) == pytest.approx(np.mean(pml_nmi), abs=0.02)
    assert min(ours_nmi) > 0.6


def test_singleton_handling_agrees_with_pytorch_metric_learning():
    embeddings, labels = _clustered_data(150, 16, 5, seed=3, spread=1.5)
    labels[[0, 1, 2]] = [50, 51, 52]  # three lone queries
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    unit = torch.from_numpy(l2_normalise(embeddings))
    reference = calculator.get_accuracy(unit, torch.from_numpy(labels))

    ours = retrieval_metrics(embeddings, labels, nmi=False)

    assert ours["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)


# --- hand-worked examples --------------------------------------------------------


def _points_on_circle(degrees, scales=None):
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    points = np.stack([np.cos(radians), np.sin(radians)], axis=1)
    if scales is not None:
        points *= np.asarray(scales, dtype=np.float64)[:, None]
    return points.astype(np.float32)


def test_hand_worked_example():
    # Angles 0, 10, 30, 55, 65, 90 degrees; classes A A B B A B; R = 2 for everyone.
    # Neighbour classes, nearest first (by angular gap):
    #   0:  A(10) B(30) B(55) ...  -> hit@1, AP@R = 1/2,     R-prec = 1/2
    #   10: A(10) B(20) B(45) ...  -> hit@1, AP@R = 1/2,     R-prec = 1/2
    #   30: A(20) B(25) A(30) ...  -> hit@2, AP@R = (1/2)/2, R-prec = 1/2
    #   55: A(10) B(25) B(35) ...  -> hit@2, AP@R = (1/2)/2, R-prec = 1/2
    #   65: B(10) B(25) B(35) ...  -> miss,  AP@R = 0,       R-prec = 0
    #   90: A(25) B(35) B(60) ...  -> hit@2, AP@R = (1/2)/2, R-prec = 1/2
    embeddings = _points_on_circle([0, 10, 30, 55, 65, 90], scales=[1, 2, 3, 0.5, 5, 7])
    labels = np.array([0, 0, 1, 1, 0, 1])

    scores = retrieval_metrics(embeddings, labels, recall_ks=(1, 2), nmi=False)

    assert scores["recall@1"] == pytest.approx(2 / 6)
    assert scores["recall@2"] == pytest.approx(5 / 6)
    assert scores["map@r"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25 + 0 + 0.25) / 6)
    assert scores["r_precision"] == pytest.approx(2.5 / 6)


def test_hand_worked_query_gallery_example():
    # Query at 0 degrees (class 0) against a gallery at 10 (1), 20 (0), 40 (0), 80 (1):
    # ranking 1 0 0 1, R = 2 -> recall@1 = 0, recall@2 = 1,
    # AP@R = (1/2) / 2, R-precision = 1/2.
    gallery = _points_on_circle([80, 20, 10, 40])
    gallery_labels = np.array([1, 0, 1, 0])
    query = _points_on_circle([0])

    scores = query_gallery_metrics(query, np.array([0]), gallery, gallery_labels, recall_ks=(1, 2))

    expected = {"recall@1": 0.0, "recall@2": 1.0, "map@r": 0.25, "r_precision": 0.5}
    assert scores == pytest.approx(expected)


def test_output_keys_types_and_range():
    embeddings, labels = _clustered_data(120, 16, 4, seed=5)
    scores = retrieval_metrics(embeddings, labels, recall_ks=(8, 1, 4, 2))
    assert list(scores) == [
        "recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision"
    ]
    assert all(type(value) is float and 0.0 <= value <= 1.0 for value in scores.values())
    assert "nmi" not in retrieval_metrics(embeddings, labels, nmi=False)
    assert DEFAULT_RECALL_KS == (1, 2, 4, 8)


# --- duplicates, singletons, zero vectors -----------------------------------------


def test_exact_duplicate_of_the_query_counts_as_neighbour():
    # Rows 0 and 1 are identical (class 0); row 2 (class 1) is the nearest other point.
    # Excluding by similarity instead of by index would drop row 1 too and miss.
    embeddings = _points_on_circle([0, 0, 5, 90, 95])
    labels = np.array([0, 0, 1, 1, 1])

    scores = retrieval_metrics(embeddings, labels, recall_ks=(1,), nmi=False)

    # Rows 0, 1: hit via the duplicate. Row 2 (5 deg): nearest are rows 0/1 -> miss.
    # Rows 3, 4: each other's nearest -> hit.
    assert scores["recall@1"] == pytest.approx(4 / 5)
    _, indices = nearest_neighbours(embeddings, embeddings, k=1, exclude_self=True)
    assert indices[0, 0] == 1 and indices[1, 0] == 0


def test_query_pushed_out_by_its_own_duplicates_never_lists_itself():
    embeddings = np.ones((6, 4), dtype=np.float32)
    similarities, indices = nearest_neighbours(embeddings, embeddings, k=3, exclude_self=True)
    assert indices.shape == (6, 3)
    for row, neighbours in enumerate(indices):
        assert row not in neighbours
        assert len(set(neighbours)) == 3
    np.testing.assert_allclose(similarities, 1.0, atol=1e-6)


def test_singleton_class_is_skipped_as_query_but_stays_in_gallery():
    # Class 2 (row 4, at 3 deg) is a singleton. It is the nearest neighbour of row 0,
    # so row 0 misses at K=1. Queries are rows 0..3 only:
    #   row 0 (0 deg):  singleton(3) then row 1(6)  -> miss@1
    #   row 1 (6 deg):  singleton(3) then row 0(6)  -> miss@1 (3 < 6)
    #   rows 2, 3 (90, 95 deg): each other          -> hit@1
    embeddings = _points_on_circle([0, 6, 90, 95, 3])
    labels = np.array([0, 0, 1, 1, 2])

    scores = retrieval_metrics(embeddings, labels, recall_ks=(1, 2), nmi=False)

    assert scores["recall@1"] == pytest.approx(2 / 4)  # would be 2/5 if the singleton were a query
    assert scores["recall@2"] == pytest.approx(4 / 4)
    assert scores["map@r"] == pytest.approx(2 / 4)


def test_zero_vectors_are_kept_and_do_not_produce_nan():
    unit = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])
    embeddings = np.array([[1, 0], [1, 0.1], [0, 0], [0, 1], [0.1, 1]], dtype=np.float32)
    scores = retrieval_metrics(embeddings, np.array([0, 0, 1, 1, 1]), recall_ks=(1,))
    assert all(np.isfinite(value) for value in scores.values())


def test_l2_normalise_returns_unit_float32_rows_without_touching_input():
    embeddings = np.array([[3.0, 4.0], [-2.0, 0.0]])
    unit = l2_normalise(embeddings)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(embeddings, [[3.0, 4.0], [-2.0, 0.0]])


# --- NMI ----------------------------------------------------------------------------


def test_nmi_is_deterministic_for_a_seed_and_high_on_separated_classes():
    embeddings, labels = _clustered_data(300, 16, 6, seed=11, spread=0.2)
    first = retrieval_metrics(embeddings, labels, seed=4)["nmi"]
    again = retrieval_metrics(embeddings, labels, seed=4)["nmi"]
    assert first == again
    # One k-means run can merge two classes (a local minimum); over seeds it finds them.
    assert max(retrieval_metrics(embeddings, labels, seed=seed)["nmi"] for seed in range(8)) > 0.99
    assert np.mean([retrieval_metrics(embeddings, labels, seed=seed)["nmi"] for seed in range(8)]) > 0.85


def test_nmi_is_low_when_labels_ignore_the_geometry():
    embeddings, _ = _clustered_data(300, 16, 6, seed=11, spread=0.2)
    shuffled_labels = np.random.default_rng(0).integers(0, 6, 300)
    assert retrieval_metrics(embeddings, shuffled_labels)["nmi"] < 0.1


def test_nmi_with_pml_settings_is_pytorch_metric_learnings_own():
    for seed in (0, 1, 2):
        embeddings, labels = _clustered_data(500, 16, 12, seed=seed, spread=1.4)
        unit = l2_normalise(embeddings)
        calculator = AccuracyCalculator(include=("NMI",), k="max_bin_count", device=torch.device("cpu"))
        reference = calculator.get_accuracy(torch.from_numpy(unit), torch.from_numpy(labels))["NMI"]
        ours = retrieval_metrics(embeddings, labels, nmi_kmeans="pml")["nmi"]
        assert ours == pytest.approx(reference, abs=1e-12)
        assert ours != retrieval_metrics(embeddings, labels)["nmi"], "the two settings should differ somewhere"


def test_kmeans_settings_are_the_same_for_every_size_of_set():
    # Issue 17 item 5: a compute budget used to switch implementation and settings with the
    # set's size, so NMIs of a small split and of SOP's test set came from different k-means.
    shapes = ((900, 5, 64), (5000, 100, 128), (35_000, 10, 128), (30_000, 5_600, 512), (60_502, 11_316, 512))
    settings = [kmeans_settings(count, clusters, dim) for count, clusters, dim in shapes]
    assert all(each == settings[0] for each in settings)
    assert settings[0]["implementation"] == "torch"
    assert kmeans_settings(60_502, 11_316, 512, "pml") == {"implementation": "faiss", "niter": 20, "nredo": 1}
    with pytest.raises(ValueError, match="unknown nmi_kmeans 'sklearn'"):
        kmeans_settings(10, 2, 2, "sklearn")
    with pytest.raises(ValueError, match="unknown nmi_kmeans"):
        retrieval_metrics(np.ones((4, 2)), np.array([0, 0, 1, 1]), nmi_kmeans="fast")


@pytest.mark.parametrize("count, classes", [(300, 6), (3000, 1000)])
def test_nmi_of_small_and_large_sets_comes_from_the_same_lloyd_kmeans(count, classes):
    # Whatever the size, the reported NMI is the NMI of lloyd_kmeans with the one setting.
    from sklearn.metrics import normalized_mutual_info_score

    embeddings, labels = _clustered_data(count, 32, classes, seed=2, spread=0.3)
    settings = kmeans_settings(count, classes, 32)
    ids = lloyd_kmeans(l2_normalise(embeddings), len(np.unique(labels)), niter=settings["niter"],
                       nredo=settings["nredo"], seed=5)
    expected = normalized_mutual_info_score(np.unique(labels, return_inverse=True)[1], ids)
    assert retrieval_metrics(embeddings, labels, recall_ks=(1,), seed=5)["nmi"] == pytest.approx(expected, abs=1e-12)


def _lloyd_reference(points, initial, iterations):
    """Plain numpy Lloyd iterations from given centroids (float64), empty clusters kept."""
    centroids = initial.astype(np.float64).copy()
    for _ in range(iterations):
        ids = np.argmin(((points[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        for cluster in range(len(centroids)):
            if np.any(ids == cluster):
                centroids[cluster] = points[ids == cluster].mean(axis=0)
    return np.argmin(((points[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_lloyd_kmeans_follows_lloyds_iterations_and_is_seeded(seed):
    embeddings, labels = _clustered_data(240, 6, 8, seed=seed, spread=0.6)
    unit = l2_normalise(embeddings)
    initial = unit[torch.randperm(240, generator=torch.Generator().manual_seed(seed))[:8].numpy()]
    for iterations in (1, 5):
        ids = lloyd_kmeans(unit, 8, niter=iterations, nredo=1, seed=seed)
        np.testing.assert_array_equal(ids, _lloyd_reference(unit.astype(np.float64), initial, iterations))
    np.testing.assert_array_equal(lloyd_kmeans(unit, 8, niter=5, nredo=3, seed=seed),
                                  lloyd_kmeans(unit, 8, niter=5, nredo=3, seed=seed))
    # Restarts keep the lowest squared error, so they never do worse than the first run alone.
    def error(ids):
        return sum(((unit[ids == c] - unit[ids == c].mean(0)) ** 2).sum() for c in np.unique(ids))
    single = error(lloyd_kmeans(unit, 8, niter=5, seed=seed))
    assert error(lloyd_kmeans(unit, 8, niter=5, nredo=4, seed=seed)) <= single + 1e-9


# --- errors ---------------------------------------------------------------------------


_INTS5 = np.zeros(5, dtype=int)
_WITH_NAN = np.array([[1.0, 0], [np.nan, 1], [0, 1]])
_WITH_INF = np.array([[1.0, 0], [0, 1], [np.inf, 1]])


@pytest.mark.parametrize(
    ("embeddings", "labels", "kwargs", "message"),
    [
        (np.zeros((5, 3)), np.zeros(4, dtype=int), {}, "got 5 embeddings but 4 labels"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), {}, "embeddings are empty"),
        (np.zeros(5), _INTS5, {}, "must be a 2-D array"),
        (np.ones((5, 3)), _INTS5[:, None], {}, "labels must be a 1-D array"),
        (np.ones((5, 3)), np.zeros(5), {}, "labels must be integers"),
        (_WITH_NAN, np.zeros(3, dtype=int), {}, "NaN or inf in 1 row(s), first at row 1"),
        (_WITH_INF, np.zeros(3, dtype=int), {}, "NaN or inf in 1 row(s), first at row 2"),
        (np.ones((5, 3)), _INTS5, {"recall_ks": (1, 5)}, "the largest K allowed here is 4"),
        (np.ones((5, 3)), _INTS5, {"recall_ks": (0,)}, "must be a positive integer"),
        (np.ones((5, 3)), _INTS5, {"recall_ks": (True,)}, "must be a positive integer"),
        (np.ones((5, 3)), _INTS5, {"recall_ks": ()}, "recall_ks is empty"),
        (np.ones((3, 2)), np.arange(3), {"recall_ks": (1,)}, "every class has a single sample"),
    ],
)
def test_retrieval_metrics_rejects_bad_input(embeddings, labels, kwargs, message):
    with pytest.raises(ValueError) as raised:
        retrieval_metrics(embeddings, labels, **kwargs)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_query_gallery_metrics_rejects_bad_input():
    query, gallery = np.ones((2, 3)), np.ones((4, 3))
    labels_q, labels_g = np.array([0, 1]), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="dimensions differ: 2 vs 3"):
        query_gallery_metrics(np.ones((2, 2)), labels_q, gallery, labels_g, (1,))
    with pytest.raises(ValueError, match="largest K allowed here is 4"):
        query_gallery_metrics(query, labels_q, gallery, labels_g, (1, 5))
    with pytest.raises(ValueError, match="got 4 gallery_embeddings but 3 gallery_labels"):
        query_gallery_metrics(query, labels_q, gallery, labels_g[:3], (1,))
    with pytest.raises(ValueError, match="no query's class appears in the gallery"):
        query_gallery_metrics(query, np.array([7, 8]), gallery, labels_g, (1,))


def test_nearest_neighbours_rejects_bad_input():
    points = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="needs the query to be the gallery"):
        nearest_neighbours(points[:2], points, k=1, exclude_self=True)
    with pytest.raises(ValueError, match="largest K allowed here is 3"):
        nearest_neighbours(points, points, k=4, exclude_self=True)
    with pytest.raises(ValueError, match="largest K allowed here is 4"):
        nearest_neighbours(points, points, k=5, exclude_self=False)


def test_pair_distance_samples_rejects_bad_max_pairs():
    with pytest.raises(ValueError, match="max_pairs must be a positive integer"):
        pair_distance_samples(np.ones((4, 2)), np.array([0, 0, 1, 1]), max_pairs=0)


# --- pair distances ---------------------------------------------------------------------


def _all_pair_distances(embeddings, labels):
    unit = l2_normalise(embeddings).astype(np.float64)
    first, second = np.triu_indices(len(labels), k=1)
    distances = 1.0 - np.einsum("ij,ij->i", unit[first], unit[second])
    same = labels[first] == labels[second]
    return distances[same], distances[~same]


def test_pair_distances_are_all_pairs_when_few():
    embeddings, labels = _clustered_data(60, 8, 4, seed=2)
    positives, negatives = pair_distance_samples(embeddings, labels, max_pairs=10_000)
    expected_positives, expected_negatives = _all_pair_distances(embeddings, labels)
    assert len(positives) + len(negatives) == 60 * 59 // 2
    np.testing.assert_allclose(np.sort(positives), np.sort(expected_positives), atol=1e-5)
    np.testing.assert_allclose(np.sort(negatives), np.sort(expected_negatives), atol=1e-5)


def test_pair_distances_subsample_without_replacement_and_deterministically():
    embeddings, labels = _clustered_data(120, 8, 3, seed=2)
    expected_positives, expected_negatives = _all_pair_distances(embeddings, labels)
    assert len(expected_positives) > 1000 and len(expected_negatives) > 1000

    positives, negatives = pair_distance_samples(embeddings, labels, max_pairs=1000, seed=3)

    assert len(positives) == len(negatives) == 1000
    for sample, population in ((positives, expected_positives), (negatives, expected_negatives)):
        assert len(np.unique(sample)) == len(sample)  # every pair distance here is distinct
        nearest = np.abs(sample[:, None] - population[None, :]).min(axis=1)
        assert nearest.max() < 1e-5  # each sample is one of the real pairs
    again = pair_distance_samples(embeddings, labels, max_pairs=1000, seed=3)
    np.testing.assert_array_equal(positives, again[0])
    np.testing.assert_array_equal(negatives, again[1])
    other_seed = pair_distance_samples(embeddings, labels, max_pairs=1000, seed=4)
    assert not np.array_equal(np.sort(positives), np.sort(other_seed[0]))


def test_pair_distances_are_in_range_and_separate_clustered_classes():
    embeddings, labels = _clustered_data(200, 16, 5, seed=9, spread=0.5)
    positives, negatives = pair_distance_samples(embeddings, labels, max_pairs=500)
    for distances in (positives, negatives):
        assert distances.dtype == np.float32
        assert distances.min() >= 0.0 and distances.max() <= 2.0
    assert positives.mean() + 0.3 < negatives.mean()
    # Antipodal and identical points reach the ends of the range exactly.
    positives, negatives = pair_distance_samples(
        np.array([[1.0, 0], [2.0, 0], [-1.0, 0]]), np.array([0, 0, 1])
    )
    np.testing.assert_allclose(positives, [0.0], atol=1e-6)
    np.testing.assert_allclose(negatives, [2.0, 2.0], atol=1e-6)


def test_pair_distance_sampling_is_uniform_over_pairs_not_classes():
    # Class 0: 50 points in one tight blob, 1225 positive pairs, all near distance 0.
    # Class 1: two blobs of 5, 45 positive pairs, of which the 25 across blobs are
    # far apart (cos 135 deg). Uniform over all 1270 pairs, 500 draws take about
    # 500 * 25 / 1270 = 10 far pairs; sampling per class would take about 139.
    rng = np.random.default_rng(0)
    tight_blob = np.array([1.0, 0.0]) + 0.01 * rng.normal(size=(50, 2))
    blob_up = np.array([0.0, 1.0]) + 0.01 * rng.normal(size=(5, 2))
    blob_down = np.array([1.0, -1.0]) + 0.01 * rng.normal(size=(5, 2))
    embeddings = np.concatenate([tight_blob, blob_up, blob_down]).astype(np.float32)
    labels = np.array([0] * 50 + [1] * 10)

    positives, _ = pair_distance_samples(embeddings, labels, max_pairs=500, seed=0)

    assert 2 <= np.count_nonzero(positives > 1.0) <= 20


@pytest.mark.parametrize("count, dim, clusters", [(2400, 16, 160), (3000, 8, 240)])
def test_pruned_lloyd_kmeans_gives_plain_lloyds_clusters_while_skipping_settled_points(monkeypatch, count, dim,
                                                                                        clusters):
    # Points keep their nearest candidates' distances and a floor on the rest, and only the centroids
    # that moved are measured again; the result must stay plain Lloyd's (float64 numpy reference), and
    # the skipping must really happen: fewer rows through the full product than 12 iterations' worth.
    import ecaml.eval.kmeans

    rows_searched = []
    nearest_candidates = ecaml.eval.kmeans._nearest_candidates
    monkeypatch.setattr(ecaml.eval.kmeans, "_nearest_candidates",
                        lambda points, centroids: rows_searched.append(len(points)) or nearest_candidates(points,
                                                                                                         centroids))
    for seed in range(3):
        embeddings, _ = _clustered_data(count, dim, clusters, seed=seed, spread=0.5)
        unit = l2_normalise(embeddings)
        initial = unit[torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:clusters].numpy()]
        rows_searched.clear()
        ids = lloyd_kmeans(unit, clusters, niter=12, nredo=1, seed=seed)
        np.testing.assert_array_equal(ids, _lloyd_reference(unit.astype(np.float64), initial, 12))
        assert sum(rows_searched) < 0.8 * count * 13


def test_lloyd_kmeans_puts_duplicate_points_together_and_ties_go_to_the_lower_centroid():
    # Every point twice, and two centroids drawn on equal points: distances tie exactly.
    base = l2_normalise(np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    unit = np.concatenate([base, base])
    for seed in range(4):
        ids = lloyd_kmeans(unit, 6, niter=10, seed=seed)
        np.testing.assert_array_equal(ids[:40], ids[40:])
