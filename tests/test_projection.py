"""Tests for ecaml.serve.projection: shapes, shared rows, determinism, alignment and the disk cache.

UMAP's first fit in a process compiles numba code (~10-20 s on two cores), so
the UMAP tests share one small aligned fit (150 points, 10 epochs); everything
else about the cache and the rows is checked with the PCA method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecaml.eval.evaluate import split_for
from ecaml.runs import load_run
from ecaml.serve import projection, projection_store, umap_fit
from ecaml.serve.projection import is_projection_cached, project_runs, warm_projection_cache
from ecaml.serve.projection_store import Projection
from ecaml.store.paths import default_cache_dir
from tests.conftest import tiny_run_pair

UMAP_POINTS, UMAP_EPOCHS = 150, 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return [load_run(path) for path in tiny_run_pair(tmp_path_factory)]


@pytest.fixture(scope="module")
def aligned_umap(runs, tmp_path_factory):
    """(cache dir, projections) of the one aligned UMAP fit the module pays for."""
    cache = tmp_path_factory.mktemp("umap-cache")
    return cache, project_runs(runs, method="umap", aligned=True, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS, cache_dir=cache)


def normalised_gap(projections: list[Projection]) -> float:
    """Median distance between one image's two positions, each panel centred and scaled to unit RMS radius."""
    panels = []
    for p in projections:
        centred = p.coords - p.coords.mean(axis=0)
        panels.append(centred / np.sqrt((centred**2).sum(axis=1).mean()))
    return float(np.median(np.linalg.norm(panels[0] - panels[1], axis=1)))


def assert_same_projections(first: list[Projection], second: list[Projection]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.run_name == b.run_name
        assert np.array_equal(a.coords, b.coords, equal_nan=True)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.indices, b.indices)


# ----------------------------------------------------------------------------- rows and shapes (PCA: fast)


def test_panels_share_a_stratified_subsample_of_the_split(runs, tmp_path):
    projections = project_runs(runs, method="pca", max_points=200, cache_dir=tmp_path)
    split = split_for(runs[0].config)
    unseen = split.indices("unseen")
    assert [p.run_name for p in projections] == [run.name for run in runs]
    for p in projections:
        assert p.coords.dtype == np.float32 and p.coords.shape == (200, 2) and np.isfinite(p.coords).all()
        assert p.labels.shape == p.indices.shape == (200,)
        assert np.array_equal(p.indices, projections[0].indices)  # the same images, in the same order
        assert np.array_equal(p.labels, split.dataset.labels[p.indices])
    assert len(set(projections[0].indices.tolist())) == 200 and set(projections[0].indices) <= set(unseen)
    # Each class keeps its share of the split, to within one image.
    classes, sizes = np.unique(split.dataset.labels[unseen], return_counts=True)
    kept = {c: int(np.sum(projections[0].labels == c)) for c in classes}
    for c, size in zip(classes, sizes):
        assert abs(kept[c] - 200 * size / len(unseen)) < 1
    # Without a cap, every image of the split is there.
    everything = project_runs(runs[:1], method="pca", max_points=None, cache_dir=tmp_path)
    assert np.array_equal(everything[0].indices, unseen)


def test_pca_is_deterministic_and_aligned_panels_match_better(runs, tmp_path):
    first = project_runs(runs, method="pca", max_points=300, cache_dir=tmp_path / "a")
    again = project_runs(runs, method="pca", max_points=300, cache_dir=tmp_path / "b")
    assert_same_projections(first, again)
    other_seed = project_runs(runs, method="pca", max_points=300, seed=1, cache_dir=tmp_path / "a")
    assert not np.array_equal(other_seed[0].indices, first[0].indices)
    independent = project_runs(runs, method="pca", aligned=False, max_points=300, cache_dir=tmp_path / "a")
    assert np.array_equal(independent[0].coords, first[0].coords)  # the first panel is the reference
    assert normalised_gap(first) < normalised_gap(independent)


def test_a_second_call_reads_the_cache_instead_of_projecting(runs, tmp_path, monkeypatch):
    first = project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path)
    files = list((tmp_path / "projections").glob("*.npz"))
    assert len(files) == 1

    def no_projection(*args, **kwargs):
        raise AssertionError("projected again although the cache holds this projection")

    monkeypatch.setattr(projection, "_pca", no_projection)
    monkeypatch.setattr(projection, "cached_embeddings", no_projection)
    assert_same_projections(first, project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path))
    # Any change of input is a different entry: here another max_points, and the runs in another order.
    with pytest.raises(AssertionError, match="projected again"):
        project_runs(runs, method="pca", max_points=101, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="projected again"):
        project_runs(runs[::-1], method="pca", max_points=100, cache_dir=tmp_path)


def test_is_projection_cached_answers_without_computing(runs, tmp_path, monkeypatch):
    def no_projection(*args, **kwargs):
        raise AssertionError("is_projection_cached computed something")

    with monkeypatch.context() as patched:
        for name in ("_pca", "cached_embeddings"):
            patched.setattr(projection, name, no_projection)
        for name in ("umap_layout", "aligned_layout"):
            patched.setattr(umap_fit, name, no_projection)
        assert not is_projection_cached(runs, method="pca", max_points=100, cache_dir=tmp_path)
        assert not is_projection_cached(runs, method="umap", max_points=100, cache_dir=tmp_path)
        assert not (tmp_path / "projections").exists() and not (tmp_path / "embeddings").exists()
    project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path)
    assert is_projection_cached(runs, method="pca", max_points=100, cache_dir=tmp_path)
    # The same key as project_runs: any other argument (or order of runs) is another entry.
    assert not is_projection_cached(runs, method="pca", max_points=101, cache_dir=tmp_path)
    assert not is_projection_cached(runs[::-1], method="pca", max_points=100, cache_dir=tmp_path)
    assert not is_projection_cached(runs, method="pca", aligned=False, max_points=100, cache_dir=tmp_path)
    assert not is_projection_cached(runs, method="umap", max_points=100, cache_dir=tmp_path)
    # A file that project_runs would recompute does not count as cached.
    (path,) = (tmp_path / "projections").glob("*.npz")
    path.write_bytes(b"\x00not a zip file")
    assert not is_projection_cached(runs, method="pca", max_points=100, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown projection method"):
        is_projection_cached(runs, method="tsne", cache_dir=tmp_path)


def test_the_default_cache_dir_is_used_when_none_is_given(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path))
    assert not is_projection_cached(runs, method="pca", max_points=50)
    project_runs(runs, method="pca", max_points=50)
    assert is_projection_cached(runs, method="pca", max_points=50)
    assert is_projection_cached(runs, method="pca", max_points=50, cache_dir=tmp_path)


def test_warm_projection_cache_fills_the_cache_once(runs, tmp_path, monkeypatch):
    assert warm_projection_cache(runs, method="pca", max_points=100, cache_dir=tmp_path) is True
    assert is_projection_cached(runs, method="pca", max_points=100, cache_dir=tmp_path)
    monkeypatch.setattr(projection, "_pca", lambda *args: pytest.fail("warmed again although cached"))
    assert warm_projection_cache(runs, method="pca", max_points=100, cache_dir=tmp_path) is False
    warmed = project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path)  # reads what the warm-up stored
    assert [p.coords.shape for p in warmed] == [(100, 2), (100, 2)]


def test_concurrent_calls_with_the_same_inputs_compute_once(runs, tmp_path, monkeypatch):
    import threading
    import time

    calls = []
    real_pca = projection._pca

    def slow_pca(vectors):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other thread to arrive while this one computes
        return real_pca(vectors)

    monkeypatch.setattr(projection, "_pca", slow_pca)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(project_runs(runs, method="pca", max_points=80, cache_dir=tmp_path))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2
    assert len(set(calls)) == 1 and len(calls) == len(runs)  # one thread projected (one PCA per run)
    assert_same_projections(results[0], results[1])
    assert not projection_store._locks  # nothing left behind


def test_a_corrupt_projection_cache_file_is_recomputed(runs, tmp_path):
    expected = project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path)
    (path,) = (tmp_path / "projections").glob("*.npz")
    wrong_shape = {"panels": np.array([2]), **{f"{name}_{i}": np.zeros(3, np.float32) for i in range(2)
                                                 for name in ("coords", "labels", "indices")}}
    for damage in ("garbage", "truncated", "wrong shape"):
        if damage == "garbage":
            path.write_bytes(b"\x00not a zip file")
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:150])
        else:
            np.savez(path, **wrong_shape)
        assert_same_projections(expected, project_runs(runs, method="pca", max_points=100, cache_dir=tmp_path))
        with np.load(path, allow_pickle=False) as archive:  # rewritten whole
            assert np.array_equal(archive["coords_1"], expected[1].coords)


def test_bad_arguments_are_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="unknown projection method"):
        project_runs(runs, method="tsne", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        project_runs(runs, part="test", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no runs"):
        project_runs([], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n_neighbors"):
        project_runs(runs, n_neighbors=1, cache_dir=tmp_path)
    assert not (tmp_path / "projections").exists()


def test_the_default_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("ECAML_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "ecaml"


# ----------------------------------------------------------------------------- UMAP (one aligned fit, then cheap calls)


def test_aligned_umap_places_each_image_alike_in_every_panel(runs, aligned_umap, tmp_path):
    _, projections = aligned_umap
    assert len(projections) == 2
    for p in projections:
        assert p.coords.dtype == np.float32 and p.coords.shape == (UMAP_POINTS, 2) and np.isfinite(p.coords).all()
        assert np.array_equal(p.indices, projections[0].indices) and np.array_equal(p.labels, projections[0].labels)
    independent = project_runs(runs, method="umap", aligned=False, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS,
                               cache_dir=tmp_path)
    assert np.array_equal(independent[0].indices, projections[0].indices)
    # Measured: about 0.5 aligned against 1.2 independent (unrelated layouts give about 1.4).
    assert normalised_gap(projections) < 0.75 * normalised_gap(independent)
    # Independent UMAP is seeded too: the same inputs, computed again, give the same coordinates.
    assert_same_projections(
        independent,
        project_runs(runs, method="umap", aligned=False, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS,
                     cache_dir=tmp_path / "again"),
    )


def test_aligned_umap_is_deterministic(runs, aligned_umap, tmp_path):
    _, projections = aligned_umap
    again = project_runs(runs, method="umap", aligned=True, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS, cache_dir=tmp_path)
    assert_same_projections(projections, again)


def test_a_cached_umap_projection_runs_no_umap(runs, aligned_umap, monkeypatch):
    cache, projections = aligned_umap

    def refuse(*args, **kwargs):
        raise AssertionError("UMAP ran although the projection was cached")

    monkeypatch.setattr(umap_fit, "aligned_layout", refuse)
    monkeypatch.setattr(umap_fit, "umap_layout", refuse)
    cached = project_runs(runs, method="umap", aligned=True, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS, cache_dir=cache)
    assert_same_projections(projections, cached)
    with pytest.raises(AssertionError, match="UMAP ran"):  # the patch is live: a new input does reach UMAP
        project_runs(runs, method="umap", aligned=True, max_points=UMAP_POINTS, n_epochs=UMAP_EPOCHS, min_dist=0.2,
                     cache_dir=cache)


def test_the_whole_split_is_projected_with_progress_in_stages(runs, tmp_path):
    reports = []
    projections = project_runs(runs, method="pca", max_points=None, cache_dir=tmp_path,
                               progress=lambda done, total: reports.append((done, total)))
    unseen = split_for(runs[0].config).indices("unseen")
    assert all(np.array_equal(np.sort(p.indices), unseen) for p in projections)  # every image, none left out
    assert np.array_equal(projections[0].indices, projections[1].indices)  # row i is one image in every panel
    fractions = [done / total for done, total in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(reports) > len(runs)
    # Read from the cache the second time: nothing left to report but the end.
    reports.clear()
    again = project_runs(runs, method="pca", max_points=None, cache_dir=tmp_path, progress=lambda d, t: reports.append((d, t)))
    assert reports == [] and np.array_equal(again[0].coords, projections[0].coords)


# ----------------------------------------------------------------------------- large maps: landmarks, first layout


def test_a_large_umap_stores_a_first_layout_then_replaces_it_atomically_with_the_final_one(runs, tmp_path, monkeypatch):
    from ecaml.serve import umap_fit

    monkeypatch.setattr(projection, "FIRST_LAYOUT_LANDMARKS", 100)  # the 896-image split counts as large
    settings = dict(method="umap", aligned=True, max_points=None, n_epochs=UMAP_EPOCHS, landmarks=300)
    seen_meanwhile = {}
    real_layout = umap_fit.aligned_layout

    def layout_watching_the_cache(vectors, *args):
        if len(vectors[0]) == 300:  # the final layout's landmarks: the first layout must be on disk by now
            (path,) = (tmp_path / "projections").glob("*.npz")
            seen_meanwhile.update(
                first=projection.first_layout(runs, cache_dir=tmp_path, **settings),
                cached=is_projection_cached(runs, cache_dir=tmp_path, **settings),
                files=sorted(p.name for p in path.parent.iterdir()),
                handle=path.open("rb"),  # an open file: an in-place rewrite would change what it reads
            )
        return real_layout(vectors, *args)

    monkeypatch.setattr(umap_fit, "aligned_layout", layout_watching_the_cache)
    final = project_runs(runs, cache_dir=tmp_path, **settings)
    first = seen_meanwhile["first"]
    assert first is not None and not seen_meanwhile["cached"]  # a first layout is not the projection
    assert len(seen_meanwhile["files"]) == 1 and seen_meanwhile["files"][0].endswith(".npz")  # no half-written file
    assert all(p.first_layout for p in first) and not any(p.first_layout for p in final)
    for before, after in zip(first, final):
        assert np.array_equal(before.indices, after.indices) and np.isfinite(before.coords).all()
        assert before.coords.shape == after.coords.shape == (len(after.indices), 2)
        assert not np.allclose(before.coords, after.coords)
    with seen_meanwhile["handle"] as handle, np.load(handle, allow_pickle=False) as archive:  # replaced, not rewritten
        assert bool(archive["first_layout"][0]) and np.array_equal(archive["coords_0"], first[0].coords)
    assert is_projection_cached(runs, cache_dir=tmp_path, **settings)
    assert_same_projections(final, projection.first_layout(runs, cache_dir=tmp_path, **settings))
    assert_same_projections(final, project_runs(runs, cache_dir=tmp_path, **settings))


def test_landmarks_bound_what_umap_lays_out_and_the_panels_stay_aligned(runs, tmp_path, monkeypatch):
    from ecaml.serve import umap_fit

    laid_out = []
    real_layout = umap_fit.aligned_layout
    monkeypatch.setattr(umap_fit, "aligned_layout",
                        lambda vectors, *a: laid_out.append(len(vectors[0])) or real_layout(vectors, *a))
    settings = dict(method="umap", aligned=True, max_points=None, n_epochs=60)
    with_landmarks = project_runs(runs, cache_dir=tmp_path, landmarks=200, **settings)
    assert laid_out == [200]  # the 896-image split is below the first layout's size: one layout
    everything = project_runs(runs, cache_dir=tmp_path, landmarks=None, **settings)
    assert laid_out[1:] == [len(everything[0].indices)]
    for fast, full in zip(with_landmarks, everything):
        assert np.array_equal(fast.indices, full.indices) and np.isfinite(fast.coords).all()
    # Each class sits where it sits in the other panel: nearest centroid across panels is its own.
    panels = [(p.coords - p.coords.mean(axis=0)) / p.coords.std() for p in with_landmarks]
    classes = np.unique(with_landmarks[0].labels)
    centroids = [np.array([p[with_landmarks[0].labels == c].mean(axis=0) for c in classes]) for p in panels]
    gaps = np.linalg.norm(centroids[0][:, None] - centroids[1][None], axis=2)
    assert (gaps.argmin(axis=1) == np.arange(len(classes))).all()
    assert normalised_gap(with_landmarks) < 0.75 * normalised_gap(
        project_runs(runs, cache_dir=tmp_path, landmarks=200, **{**settings, "aligned": False}))


@pytest.mark.parametrize("rows", [1797, 30])  # D = 64 <= N (the scatter matrix's route), and D > N (the SVD's)
def test_pca_draws_what_scikit_learns_pca_draws_on_real_images(rows):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    pixels = load_digits().data[:rows].astype(np.float32)
    reference = PCA(n_components=2, svd_solver="full").fit(pixels.astype(np.float64))
    expected = reference.transform(pixels.astype(np.float64))
    for axis, component in enumerate(reference.components_):  # the sign rule: largest-magnitude loading positive
        expected[:, axis] *= np.sign(component[np.argmax(np.abs(component))])
    coords = projection._pca(pixels)
    assert coords.shape == (rows, 2) and coords.dtype == np.float32
    assert np.allclose(coords, expected, atol=1e-3 * np.abs(expected).max())
