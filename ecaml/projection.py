"""2-D projections of runs' embeddings (UMAP, aligned UMAP or PCA), cached on disk.

``project_runs`` gives one ``Projection`` per run. When the runs embed the same
images (same dataset), every panel holds the same rows in the same order, and
with ``aligned=True`` umap-learn's ``AlignedUMAP`` ties each image's position
across panels, so an image lands in comparable places in every panel and what
moves is what the runs do differently. PCA is the fast fallback (panels aligned
by an orthogonal Procrustes rotation onto the first one).

Results are cached as ``.npz`` files (never pickles) under
``<cache dir>/projections``, keyed by the runs' weights, the split and every
parameter; a second call with the same inputs only reads that file. umap is
imported only when a projection is actually computed (importing it costs
seconds: numba).

``is_projection_cached`` says, without computing anything, whether a call with
the same arguments would only read that file, and ``warm_projection_cache``
computes and stores one ahead of time (an app can run it in a background thread
when it starts). Within one process, calls with the same inputs compute once:
a second caller waits for the first and then reads its file.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from ecaml import __version__
from ecaml.data import SPLIT_PARTS
from ecaml.evaluate import Embeddings
from ecaml.retrieval import (
    cached_embeddings,
    data_identity,
    default_cache_dir,
    embeddings_key,
    weights_match_file,
)
from ecaml.atomic import write_cache_file
from ecaml.runs import Run

__all__ = [
    "METHODS",
    "Projection",
    "default_cache_dir",
    "is_projection_cached",
    "project_runs",
    "projection_key",
    "warm_projection_cache",
]

METHODS = ("umap", "pca")
# Bumped when the layout of a cached projection file (or how one is computed) changes.
PROJECTION_CACHE_FORMAT = 1
MIN_POINTS = 5


@dataclass
class Projection:
    run_name: str
    coords: np.ndarray  # float32 [N, 2]; NaN for the rare point UMAP leaves unconnected
    labels: np.ndarray  # class id per row
    indices: np.ndarray  # dataset index per row (same order in every Projection of one call on one dataset)


def project_runs(
    runs: list[Run],
    part: str = "unseen",
    method: str = "umap",
    aligned: bool = True,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    max_points: int | None = 3000,
    cache_dir: Path | None = None,
    n_epochs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Projection]:
    """One 2-D projection of the ``part`` embeddings per run, in the order of ``runs``.

    Runs on the same dataset share their rows: the images present in all of
    them, subsampled (seeded, stratified by class) to ``max_points`` the same way
    for every run. Runs on different datasets are each projected on their own.
    ``n_epochs`` is UMAP's (None: umap's default); ``seed`` fixes everything, so
    the same inputs give the same coordinates. ``progress(done, total)`` is called
    in stages: each run's embeddings (by images embedded), then the projection.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(runs, part, method, aligned, n_neighbors, min_dist, seed, max_points, cache_dir, n_epochs)
    cached = _read_projections(path, runs)
    if cached is not None:
        return cached
    with _computing(path):  # another thread computing the same projection: wait for it, then read its file
        cached = _read_projections(path, runs)
        if cached is not None:
            return cached
        embeddings = _embeddings_with_progress(runs, part, cache_dir, progress)
        projections = _compute(path, runs, embeddings, method, aligned, n_neighbors, min_dist, seed, max_points, n_epochs)
        if progress is not None:
            progress(len(runs) + 1, len(runs) + 1)
        return projections


def _embeddings_with_progress(runs: list[Run], part: str, cache_dir: Path, progress) -> list[Embeddings]:
    """Each run's cached embeddings; progress counts runs done (plus the projection still to come) in stages."""
    stages = len(runs) + 1
    embeddings = []
    for number, run in enumerate(runs):
        report = None if progress is None else (lambda done, total, n=number: progress(n * total + done, stages * total))
        embeddings.append(cached_embeddings(run, part, cache_dir, progress=report))
        if progress is not None:
            progress(number + 1, stages)
    return embeddings


def is_projection_cached(
    runs: list[Run],
    part: str = "unseen",
    method: str = "umap",
    aligned: bool = True,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    max_points: int | None = 3000,
    cache_dir: Path | None = None,
    n_epochs: int | None = None,
) -> bool:
    """Whether ``project_runs`` with these arguments would only read its cache file (nothing is computed).

    Cheap: it hashes the runs' weights files (remembered per file) and reads the
    small cache file if there is one; a missing, unreadable or malformed file
    is "not cached", just as ``project_runs`` would recompute it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(runs, part, method, aligned, n_neighbors, min_dist, seed, max_points, cache_dir, n_epochs)
    return _read_projections(path, runs) is not None


def warm_projection_cache(
    runs: list[Run],
    part: str = "unseen",
    method: str = "umap",
    aligned: bool = True,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    max_points: int | None = 3000,
    cache_dir: Path | None = None,
    n_epochs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> bool:
    """Compute and store the projection ``project_runs`` would give for these arguments, unless already cached.

    Returns True when it computed one, False when the cache already held it. Errors
    are those of ``project_runs``; a caller running this in a background thread
    should catch and log them. Runs still training (weights newer on disk than in
    memory) are projected but, as with ``project_runs``, not cached.
    """
    arguments = dict(part=part, method=method, aligned=aligned, n_neighbors=n_neighbors, min_dist=min_dist,
                     seed=seed, max_points=max_points, cache_dir=cache_dir, n_epochs=n_epochs)
    if is_projection_cached(runs, **arguments):
        return False
    project_runs(runs, progress=progress, **arguments)
    return True


def _cache_path(
    runs, part, method, aligned, n_neighbors, min_dist, seed, max_points, cache_dir: Path, n_epochs
) -> Path:
    """The cache file of a projection under ``cache_dir``, after checking the arguments."""
    _validate(runs, part, method, n_neighbors, min_dist, max_points, n_epochs)
    key = projection_key(runs, part, method, aligned, n_neighbors, min_dist, seed, max_points, n_epochs)
    return cache_dir / "projections" / f"{key}.npz"


_locks_guard = threading.Lock()
_locks: dict[str, list] = {}  # cache file -> [lock, number of threads using it]


@contextmanager
def _computing(path: Path):
    """Hold the lock of one cache file while its projection is computed; the lock goes when no thread needs it."""
    name = str(path)
    with _locks_guard:
        entry = _locks.setdefault(name, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _locks_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _locks[name]


def _compute(
    path: Path, runs: list[Run], embeddings: list[Embeddings], method, aligned, n_neighbors, min_dist, seed, max_points,
    n_epochs,
) -> list[Projection]:
    """The projections of the runs' embeddings, stored at ``path`` when the runs' weights are those on disk."""
    if _same_points(runs):
        rows = _shared_rows(embeddings, max_points, seed)
        vectors = [e.vectors[r] for e, r in zip(embeddings, rows)]
        if method == "pca":
            coords = [_pca(v) for v in vectors]
            if aligned:
                coords = [coords[0]] + [_procrustes(c, coords[0]) for c in coords[1:]]
        elif aligned and len(runs) > 1:
            coords = _aligned_umap(vectors, n_neighbors, min_dist, seed, n_epochs)
        else:
            coords = [_umap(v, n_neighbors, min_dist, seed, n_epochs) for v in vectors]
    else:
        rows = [_subsample(e.labels, max_points, seed) for e in embeddings]
        vectors = [e.vectors[r] for e, r in zip(embeddings, rows)]
        project = _pca if method == "pca" else (lambda v: _umap(v, n_neighbors, min_dist, seed, n_epochs))
        coords = [project(v) for v in vectors]
    projections = [
        Projection(run.name, np.asarray(c, dtype=np.float32), e.labels[r].astype(np.int64), e.indices[r].astype(np.int64))
        for run, c, e, r in zip(runs, coords, embeddings, rows)
    ]
    if all(weights_match_file(run) for run in runs):  # else the key names newer weights than the ones projected
        _write_projections(path, projections)
    return projections


def projection_key(
    runs: list[Run],
    part: str,
    method: str,
    aligned: bool,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    max_points: int | None,
    n_epochs: int | None = None,
) -> str:
    """sha256 over each run's weights and data, the split, the method, every parameter and the library versions."""
    record = {
        "format": PROJECTION_CACHE_FORMAT,
        "runs": [embeddings_key(run, part) for run in runs],
        "part": part,
        "method": method,
        "aligned": bool(aligned),
        "n_neighbors": int(n_neighbors),
        "min_dist": float(min_dist),
        "seed": int(seed),
        "max_points": None if max_points is None else int(max_points),
        "n_epochs": None if n_epochs is None else int(n_epochs),
        "versions": {"ecaml": __version__, **{name: _version(name) for name in ("umap-learn", "scikit-learn", "numpy")}},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _validate(runs, part, method, n_neighbors, min_dist, max_points, n_epochs) -> None:
    if not runs:
        raise ValueError("no runs to project")
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(n_neighbors, bool) or int(n_neighbors) != n_neighbors or n_neighbors < 2:
        raise ValueError("n_neighbors must be an integer of at least 2")
    if not np.isfinite(min_dist) or min_dist < 0:
        raise ValueError("min_dist must be a number >= 0")
    if max_points is not None and (int(max_points) != max_points or max_points < MIN_POINTS):
        raise ValueError(f"max_points must be None or an integer of at least {MIN_POINTS}")
    if n_epochs is not None and (int(n_epochs) != n_epochs or n_epochs < 1):
        raise ValueError("n_epochs must be None or a positive integer")


def _same_points(runs: list[Run]) -> bool:
    """Whether the runs' dataset indices name the same images (same dataset and data folder)."""
    identities = {(data_identity(run)["dataset"], data_identity(run)["data_root"]) for run in runs}
    return len(identities) == 1


def _shared_rows(embeddings: list[Embeddings], max_points: int | None, seed: int) -> list[np.ndarray]:
    """For each run, the rows of the images present in every run, subsampled, in one common order."""
    common = embeddings[0].indices
    for e in embeddings[1:]:
        common = np.intersect1d(common, e.indices)
    common = np.unique(common)
    if len(common) < MIN_POINTS:
        raise ValueError(f"the runs share only {len(common)} images of this split; at least {MIN_POINTS} are needed")
    first = embeddings[0]
    common_labels = first.labels[_rows_of(first.indices, common)]
    chosen = common[_subsample(common_labels, max_points, seed)]
    return [_rows_of(e.indices, chosen) for e in embeddings]


def _rows_of(indices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The rows of ``indices`` that hold each of ``wanted`` (all present), vectorised for 60k-image splits."""
    order = np.argsort(indices, kind="stable")
    return order[np.searchsorted(indices[order], wanted)].astype(np.int64)


def _subsample(labels: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` rows, each class keeping its share (largest remainder), seeded."""
    count = len(labels)
    if count < MIN_POINTS:
        raise ValueError(f"only {count} images to project; at least {MIN_POINTS} are needed")
    if max_points is None or count <= max_points:
        return np.arange(count)
    classes, sizes = np.unique(labels, return_counts=True)
    shares = sizes * (max_points / count)
    quotas = np.floor(shares).astype(np.int64)
    remainder = max_points - int(quotas.sum())
    by_fraction = np.lexsort((classes, -(shares - quotas)))  # largest fraction first, ties by class id
    quotas[by_fraction[:remainder]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quotas) if q]
    return np.sort(np.concatenate(chosen))


def _pca(vectors: np.ndarray) -> np.ndarray:
    """2-D PCA with each axis's sign fixed (its largest-magnitude loading positive), so the result is deterministic."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full")
    coords = pca.fit_transform(vectors.astype(np.float64))
    for axis, component in enumerate(pca.components_):
        if component[np.argmax(np.abs(component))] < 0:
            coords[:, axis] = -coords[:, axis]
    return coords.astype(np.float32)


def _procrustes(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``coords`` rotated (or reflected) about its centre to best match ``reference`` row for row."""
    centred, centred_ref = coords - coords.mean(axis=0), reference - reference.mean(axis=0)
    u, _, vt = np.linalg.svd(centred.T.astype(np.float64) @ centred_ref.astype(np.float64))
    return (centred @ (u @ vt) + coords.mean(axis=0)).astype(np.float32)


def _umap_kwargs(count: int, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None) -> dict:
    return dict(
        n_neighbors=min(int(n_neighbors), count - 1),
        min_dist=float(min_dist),
        metric="cosine",
        random_state=int(seed),
        n_epochs=None if n_epochs is None else int(n_epochs),
    )


# umap's numba functions that are compiled on every process's first fit (10-30 s on two cores) because
# umap does not ask numba to cache them; caching them on disk makes a later process's first fit take about
# a second. Only the per-call layout optimisers, which umap re-jits on every fit, are still compiled.
_UNCACHED_NUMBA_FUNCTIONS = (
    ("umap.utils", "fast_knn_indices"),
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.aligned_umap", "build_neighborhood_similarities"),
    ("umap.aligned_umap", "procrustes_align"),
    ("umap.aligned_umap", "in1d"),
)
_numba_caching_enabled = False


def _import_umap():
    """umap, imported on first use, with numba's disk cache turned on for its uncached hot functions."""
    global _numba_caching_enabled
    import importlib

    import umap

    if not _numba_caching_enabled:
        _numba_caching_enabled = True
        for module_name, function_name in _UNCACHED_NUMBA_FUNCTIONS:
            try:
                function = getattr(importlib.import_module(module_name), function_name)
                if type(function._cache).__name__ == "NullCache":
                    function.enable_caching()
            except Exception:  # noqa: BLE001 - another umap or numba version, or no writable cache: just slower
                pass
    return umap


def _umap(vectors: np.ndarray, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None) -> np.ndarray:
    umap = _import_umap()

    with _quiet_umap():
        reducer = umap.UMAP(**_umap_kwargs(len(vectors), n_neighbors, min_dist, seed, n_epochs))
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)


def _aligned_umap(
    vectors: list[np.ndarray], n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None
) -> list[np.ndarray]:
    """AlignedUMAP over the panels, row i of every panel being the same image (identity relations)."""
    umap = _import_umap()

    count = len(vectors[0])
    identity = {i: i for i in range(count)}
    with _quiet_umap():
        reducer = umap.AlignedUMAP(**_umap_kwargs(count, n_neighbors, min_dist, seed, n_epochs))
        reducer.fit(list(vectors), relations=[identity] * (len(vectors) - 1))
    return [np.asarray(e, dtype=np.float32) for e in reducer.embeddings_]


class _quiet_umap(warnings.catch_warnings):
    """Silence umap's notices that a seed turns off parallelism (that is the point) and numba's chatter."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*n_neighbors is larger than the dataset size.*")
        try:
            from numba.core.errors import NumbaWarning

            warnings.filterwarnings("ignore", category=NumbaWarning)
        except ImportError:
            pass
        return self


# ----------------------------------------------------------------------------- cache files


def _write_projections(path: Path, projections: list[Projection]) -> None:
    arrays = {"panels": np.array([len(projections)], dtype=np.int64)}
    for i, p in enumerate(projections):
        arrays[f"coords_{i}"], arrays[f"labels_{i}"], arrays[f"indices_{i}"] = p.coords, p.labels, p.indices
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_cache_file(path, buffer.getvalue())


def _read_projections(path: Path, runs: list[Run]) -> list[Projection] | None:
    """The cached projections, or None when the file is missing, unreadable or not what it should be."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["panels"][0]) != len(runs):
                return None
            panels = [(archive[f"coords_{i}"], archive[f"labels_{i}"], archive[f"indices_{i}"]) for i in range(len(runs))]
    except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed
        return None
    projections = []
    for run, (coords, labels, indices) in zip(runs, panels):
        count = len(labels)
        if (
            coords.dtype != np.float32
            or coords.shape != (count, 2)
            or labels.ndim != 1
            or indices.shape != (count,)
            or not np.issubdtype(labels.dtype, np.integer)
            or not np.issubdtype(indices.dtype, np.integer)
            or count == 0
        ):
            return None
        projections.append(Projection(run.name, coords, labels.astype(np.int64), indices.astype(np.int64)))
    return projections
