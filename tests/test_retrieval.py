"""Tests for ecaml.serve.retrieval: the embeddings cache, per-run faiss indexes, queries, disagreement ranking."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecaml.eval.evaluate import Embeddings, split_for
from ecaml.runs import load_run
from ecaml.serve import embeddings_cache as retrieval  # the cache: embedding, reading back, its folder
from ecaml.serve.embeddings_cache import cached_embeddings, weights_digest
from ecaml.serve.retrieval import RunIndex, build_index, disagreement_queries, telling_query
from tests.conftest import tiny_run_pair


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return [load_run(path) for path in tiny_run_pair(tmp_path_factory)]


@pytest.fixture(scope="module")
def index(runs, tmp_path_factory):
    return build_index(runs[0], "unseen", cache_dir=tmp_path_factory.mktemp("cache"))


# ----------------------------------------------------------------------------- digest and embeddings cache


def test_weights_digest_is_the_sha256_of_the_weights_file(runs, tmp_path):
    run = runs[0]
    assert weights_digest(run) == hashlib.sha256((run.path / "model.safetensors").read_bytes()).hexdigest()
    # A changed file (new size and mtime) is hashed again rather than served from the memo.
    copy = load_run(run.path)
    copy.path = tmp_path
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    assert weights_digest(copy) == hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "model.safetensors").write_bytes(b"abcd")
    assert weights_digest(copy) == hashlib.sha256(b"abcd").hexdigest()


def test_cached_embeddings_are_computed_once_then_read_from_disk(runs, tmp_path, monkeypatch):
    run = runs[0]
    first = cached_embeddings(run, "unseen", cache_dir=tmp_path)
    split = split_for(run.config)
    assert np.array_equal(first.indices, split.indices("unseen"))
    assert np.array_equal(first.labels, split.dataset.labels[first.indices])
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (len(first.indices), run.config.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-5)
    assert len(list((tmp_path / "embeddings").glob("*.rows.npz"))) == 1
    assert len([f for f in (tmp_path / "embeddings").glob("*.npy")]) == 1

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded again although the cache holds these embeddings")

    monkeypatch.setattr(retrieval, "embed_indices", no_embedding)
    second = cached_embeddings(run, "unseen", cache_dir=tmp_path)
    assert np.array_equal(second.vectors, first.vectors) and np.array_equal(second.indices, first.indices)
    # Read back, the vectors are a read-only memory map of the cache file, not a copy in memory.
    assert isinstance(second.vectors, np.memmap) and not second.vectors.flags.writeable
    assert retrieval.is_embedded(run, "unseen", cache_dir=tmp_path)
    assert not retrieval.is_embedded(run, "train", cache_dir=tmp_path)

    # Another part, or another run's weights, is another cache entry.
    with pytest.raises(AssertionError, match="embedded again"):
        cached_embeddings(run, "train", cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="embedded again"):
        cached_embeddings(runs[1], "unseen", cache_dir=tmp_path)


def test_a_corrupt_embeddings_cache_file_is_recomputed(runs, tmp_path):
    run = runs[0]
    expected = cached_embeddings(run, "unseen", cache_dir=tmp_path)
    (path,) = (tmp_path / "embeddings").glob("*.npy")
    (rows_path,) = (tmp_path / "embeddings").glob("*.rows.npz")
    for damaged, damage in ((path, b"not an npy file"), (path, path.read_bytes()[:200]),
                            (rows_path, b"not an npz"), (rows_path, rows_path.read_bytes()[:100])):
        damaged.write_bytes(damage)
        again = cached_embeddings(run, "unseen", cache_dir=tmp_path)
        assert np.array_equal(again.vectors, expected.vectors)
        assert np.array_equal(np.load(path, allow_pickle=False), expected.vectors)  # and the file is whole again
    # A readable file that holds the wrong things is not trusted either: NaN vectors, or fewer rows than labels.
    for wrong in (np.full_like(expected.vectors, np.nan), expected.vectors[:-1]):
        np.save(path, wrong)
        assert np.array_equal(cached_embeddings(run, "unseen", cache_dir=tmp_path).vectors, expected.vectors)
    # A missing rows file is a missing entry.
    rows_path.unlink()
    assert not retrieval.is_embedded(run, "unseen", cache_dir=tmp_path)


def test_embedding_in_chunks_reports_progress_and_equals_one_pass(runs, tmp_path, monkeypatch):
    run = runs[0]
    whole = cached_embeddings(run, "unseen", cache_dir=tmp_path / "whole")
    for chunk in (1, 7, 64, 10_000):
        monkeypatch.setattr(retrieval, "EMBED_CHUNK", chunk)
        seen = []
        chunked = cached_embeddings(run, "unseen", cache_dir=tmp_path / f"chunk{chunk}", progress=lambda d, t: seen.append((d, t)))
        total = len(whole.indices)
        assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert len(seen) == -(-total // chunk)
        np.testing.assert_allclose(chunked.vectors, whole.vectors, atol=1e-6)
        assert np.array_equal(chunked.indices, whole.indices)


def test_a_run_whose_weights_file_moved_on_is_embedded_but_not_cached(runs, tmp_path):
    import shutil

    from ecaml.store.run_files import save_weights

    shutil.copytree(runs[0].path, tmp_path / "live")
    run = load_run(tmp_path / "live")
    # The run trains on: a newer checkpoint replaces the weights the Run object was loaded from.
    newer = {name: tensor + 1 for name, tensor in run.model.state_dict().items()}
    save_weights(tmp_path / "live" / "model.safetensors", newer, {"step": str(run.step + 15), "format": "ecaml"})
    embeddings = cached_embeddings(run, "unseen", cache_dir=tmp_path / "cache")
    expected = cached_embeddings(runs[0], "unseen", cache_dir=tmp_path / "other")  # same in-memory weights
    assert np.array_equal(embeddings.vectors, expected.vectors)
    assert not (tmp_path / "cache" / "embeddings").exists() or not any((tmp_path / "cache" / "embeddings").iterdir())


def test_the_cache_dir_defaults_to_the_environment_variable(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path / "from-env"))
    assert retrieval.default_cache_dir() == tmp_path / "from-env"
    cached_embeddings(runs[0], "unseen")
    assert len(list((tmp_path / "from-env" / "embeddings").glob("*.npy"))) == 1
    monkeypatch.delenv("ECAML_CACHE_DIR")
    assert retrieval.default_cache_dir() == Path.home() / ".cache" / "ecaml"


# ----------------------------------------------------------------------------- queries


def brute_force_neighbours(index: RunIndex, row: int, k: int) -> list[int]:
    similarities = index.embeddings.vectors @ index.embeddings.vectors[row]
    similarities[row] = -np.inf
    return [int(index.embeddings.indices[r]) for r in np.argsort(-similarities, kind="stable")[:k]]


def test_query_by_index_excludes_the_query_and_matches_brute_force(index):
    split = index.split
    assert len(index) == len(split.indices("unseen"))
    for dataset_index in split.indices("unseen")[::97]:
        result = index.query_by_index(int(dataset_index), k=8)
        assert result.run_name == index.run.name and result.seconds >= 0
        found = [n.dataset_index for n in result.neighbours]
        assert len(found) == 8 and int(dataset_index) not in found
        similarities = [n.similarity for n in result.neighbours]
        assert similarities == sorted(similarities, reverse=True)
        row = index.row_of(int(dataset_index))
        expected = brute_force_neighbours(index, row, 8)
        # The same set up to float ties at the cut-off: compare similarities, not only ids.
        exact = index.embeddings.vectors[[index.row_of(i) for i in expected]] @ index.embeddings.vectors[row]
        np.testing.assert_allclose(similarities, exact, atol=1e-5)
        query_label = int(split.dataset.labels[dataset_index])
        for neighbour in result.neighbours:
            assert neighbour.label == int(split.dataset.labels[neighbour.dataset_index])
            assert neighbour.class_name == split.dataset.class_names[neighbour.label]
            assert neighbour.correct == (neighbour.label == query_label)


def test_query_by_index_clips_k_and_refuses_images_outside_the_split(index):
    assert len(index.query_by_index(int(index.embeddings.indices[0]), k=10_000).neighbours) == len(index) - 1
    seen_image = int(index.split.indices("train")[0])
    with pytest.raises(ValueError, match="not in the unseen split"):
        index.query_by_index(seen_image)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.query_by_index(int(index.embeddings.indices[0]), k=0)


def test_query_by_image_of_a_dataset_image_finds_that_image_first(index):
    vectors = index.embeddings.vectors
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    # Only images with no near-duplicate embedding make "finds itself first" a real test.
    distinct_rows = np.flatnonzero(similarity.max(axis=1) < 0.999)
    assert len(distinct_rows) > 10
    row = int(distinct_rows[len(distinct_rows) // 2])
    dataset_index = int(index.embeddings.indices[row])
    image = index.split.dataset.image(dataset_index)
    by_index = [n.dataset_index for n in index.query_by_index(dataset_index, k=5).neighbours]
    # The same picture as greyscale, RGB and RGBA must all be converted back to what the model saw.
    for variant in (image, image.convert("RGB"), image.convert("RGBA")):
        result = index.query_by_image(variant, k=6)
        first = result.neighbours[0]
        assert first.dataset_index == dataset_index
        assert first.similarity > 0.9999
        assert all(n.correct is None for n in result.neighbours)
        assert [n.dataset_index for n in result.neighbours[1:]] == by_index


def test_query_by_image_of_a_new_picture_returns_sorted_neighbours(index):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8), "RGB")
    result = index.query_by_image(picture, k=4)
    similarities = [n.similarity for n in result.neighbours]
    assert len(similarities) == 4 and similarities == sorted(similarities, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in similarities)


# ----------------------------------------------------------------------------- disagreement


def constructed_index(run, split, dataset_indices, vectors) -> RunIndex:
    labels = split.dataset.labels[dataset_indices]
    return RunIndex(run, Embeddings(np.asarray(vectors, np.float32), labels, np.asarray(dataset_indices)), split)


def clustered_vectors(labels: np.ndarray, seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[: labels.max() + 1] * 4
    return centres[labels] + spread * rng.normal(size=(len(labels), 16))


def misplacing_vectors(split, moved: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dataset indices, good, bad): vectors of 200 unseen images, ``bad`` putting each ``moved`` row among another
    class (next to a different image of it each)."""
    dataset_indices = split.indices("unseen")[:200]
    labels = split.dataset.labels[dataset_indices]
    good = clustered_vectors(labels, seed=seed, spread=0.3)
    bad = good.copy()
    for number, row in enumerate(moved):
        host = int(np.flatnonzero(labels != labels[row])[10 * number])  # an image of another class, one per moved row
        bad[row] = good[host] + 0.01
    return dataset_indices, good, bad


def test_disagreement_queries_put_the_images_one_run_misplaces_first(runs):
    run = runs[0]
    split = split_for(run.config)
    moved = [17, 120, 42]  # rows that the second run puts among another class
    dataset_indices, good, bad = misplacing_vectors(split, moved, seed=0)
    indexes = [constructed_index(run, split, dataset_indices, good), constructed_index(run, split, dataset_indices, bad)]
    ranked = disagreement_queries(indexes, k=4, limit=50)
    assert sorted(ranked[:3]) == sorted(int(dataset_indices[r]) for r in moved)
    assert ranked[:3] == sorted(ranked[:3])  # equal spreads: by dataset index
    assert len(ranked) <= 50 and len(set(ranked)) == len(ranked)
    # Identical runs disagree nowhere; one run alone has nothing to disagree with.
    assert disagreement_queries([indexes[0], indexes[0]]) == []
    assert disagreement_queries(indexes[:1]) == []
    assert disagreement_queries(indexes, limit=2) == ranked[:2]


def test_telling_query_opens_on_an_image_one_run_gets_right_and_the_other_wrong(runs):
    run = runs[0]
    split = split_for(run.config)
    both_wrong, one_wrong = 3, 150  # rows: misplaced by both runs, misplaced only by the second
    dataset_indices, good, bad = misplacing_vectors(split, [both_wrong, one_wrong], seed=1)
    good[both_wrong] = bad[both_wrong]
    indexes = [constructed_index(run, split, dataset_indices, good), constructed_index(run, split, dataset_indices, bad)]
    # Asked one at a time, as the page does: the first image the runs split on, skipping the one both get wrong.
    nearest_right = [[index.query_by_index(int(i), 1).neighbours[0].correct for i in dataset_indices] for index in indexes]
    split_on = [int(i) for i, a, b in zip(dataset_indices, *nearest_right) if a != b]
    assert int(dataset_indices[one_wrong]) in split_on
    assert telling_query(indexes, dataset_indices, batch=16) == split_on[0]
    # Runs that never split open on the first image they all get right, not on one they all get wrong.
    assert not nearest_right[0][both_wrong]
    order = np.r_[dataset_indices[both_wrong], np.delete(dataset_indices, both_wrong)]
    first_right = next(int(i) for i in order if indexes[0].query_by_index(int(i), 1).neighbours[0].correct)
    assert telling_query([indexes[0], indexes[0]], order) == first_right
    assert telling_query(indexes, dataset_indices[:0]) is None


def test_disagreement_ranking_matches_brute_force_and_uses_only_shared_images(runs):
    run = runs[0]
    split = split_for(run.config)
    all_indices = split.indices("unseen")[:150]
    labels = split.dataset.labels[all_indices]
    vectors = [clustered_vectors(labels, seed=s, spread=1.6) for s in (1, 2, 3)]
    missing_from_third = set(range(0, 150, 7))
    keep = np.array([r for r in range(150) if r not in missing_from_third])
    indexes = [
        constructed_index(run, split, all_indices, vectors[0]),
        constructed_index(run, split, all_indices, vectors[1]),
        constructed_index(run, split, all_indices[keep], vectors[2][keep]),
    ]
    k = 5
    ranked = disagreement_queries(indexes, k=k, limit=1000)
    assert not set(ranked) & {int(all_indices[r]) for r in missing_from_third}

    common = all_indices[keep]
    precision, recall = [], []
    for index in indexes:
        unit = index.query_vectors(np.arange(len(index)))  # the vectors as the index holds them (unit rows)
        rows = [index.row_of(i) for i in common]
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        hits = index.embeddings.labels[top] == index.embeddings.labels[rows][:, None]
        precision.append(hits.mean(axis=1))
        recall.append(hits[:, 0])
    p_spread = np.ptp(precision, axis=0)
    r_spread = np.ptp(np.array(recall, dtype=float), axis=0)
    expected = [
        int(common[i]) for i in np.lexsort((common, -r_spread, -p_spread)) if p_spread[i] > 0 or r_spread[i] > 0
    ]
    assert ranked == expected
    # The tie-break by recall@1 spread is exercised: some equal precision spreads differ in recall spread.
    pairs = {(p_spread[i], r_spread[i]) for i in range(len(common))}
    assert any((p, 0.0) in pairs and (p, 1.0) in pairs for p, _ in pairs)


def test_build_index_on_a_run_covers_its_split(runs, tmp_path):
    index = build_index(runs[1], "train", cache_dir=tmp_path)
    assert index.part == "train"
    assert np.array_equal(np.sort(index.embeddings.indices), index.split.indices("train"))
    result = index.query_by_index(int(index.embeddings.indices[3]), k=3)
    assert all(n.label in index.split.classes("train") for n in result.neighbours)


def test_row_and_class_look_ups_match_a_python_scan(index):
    indices, labels = index.embeddings.indices, index.embeddings.labels
    rng = np.random.default_rng(0)
    for dataset_index in rng.choice(indices, size=20, replace=False):
        assert index.row_of(int(dataset_index)) == int(np.flatnonzero(indices == dataset_index)[0])
    wanted = rng.choice(indices, size=50, replace=False)
    assert np.array_equal(index.rows_of(wanted), [index.row_of(int(i)) for i in wanted])
    for label in np.unique(labels):
        assert np.array_equal(index.class_members(label), sorted(int(i) for i, l in zip(indices, labels) if l == label))
    with pytest.raises(ValueError, match="not in the"):
        index.rows_of(np.array([int(indices.max()) + 1]))


def test_disagreement_on_a_sample_of_queries_ranks_within_that_sample(runs, tmp_path):
    indexes = [build_index(run, "unseen", cache_dir=tmp_path) for run in runs]
    everything = disagreement_queries(indexes, k=4, limit=10_000, max_queries=None)
    for seed in range(3):
        sampled = disagreement_queries(indexes, k=4, limit=10_000, max_queries=200, seed=seed)
        assert sampled == disagreement_queries(indexes, k=4, limit=10_000, max_queries=200, seed=seed)
        assert set(sampled) <= set(everything)
        # The sample's ranking is the full ranking restricted to the sample's disagreeing images.
        assert sampled == [i for i in everything if i in set(sampled)]
