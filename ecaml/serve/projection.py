"""2-D projections of runs' embeddings (UMAP, aligned UMAP or PCA), cached on disk.

``project_runs`` gives one ``Projection`` per run. When the runs embed the same
images (same dataset), every panel holds the same rows in the same order, and
with ``aligned=True`` umap-learn's ``AlignedUMAP`` ties each image's position
across panels, so an image lands in comparable places in every panel and what
moves is what the runs do differently. PCA is the fast fallback (panels aligned
by an orthogonal Procrustes rotation onto the first one).

Large maps go through ``landmarks`` (``ecaml.serve.landmark_layout``): UMAP lays out
that many class-stratified images, the same in every panel, and every other
image is placed by its nearest landmarks in its run's embedding space (2 x 35,000
Fashion-MNIST images: minutes become tens of seconds, see
``benchmarks/map_speed.py``). ``landmarks=None`` runs UMAP on every point.

Results are cached as ``.npz`` files (``ecaml.serve.projection_store``) under
``<cache dir>/projections``, keyed by the runs' weights, the split and every
parameter; a second call with the same inputs only reads that file. While a
large UMAP computes, its file first holds a *first layout* (from
``FIRST_LAYOUT_LANDMARKS`` landmarks, seconds), which ``first_layout`` reads and
the final projection then replaces atomically.

``is_projection_cached`` says, without computing anything, whether a call with
the same arguments would only read the final file, and ``warm_projection_cache``
computes and stores one ahead of time (an app can run it in a background thread
when it starts). Within one process, calls with the same inputs compute once:
a second caller waits for the first and then reads its file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from ecaml import __version__
from ecaml.data import SPLIT_PARTS
from ecaml.eval.evaluate import Embeddings
from ecaml.runs import Run
from ecaml.serve.embeddings_cache import cached_embeddings, data_identity, embeddings_key, weights_match_file
from ecaml.serve.landmark_layout import LANDMARKS, landmark_layout
from ecaml.serve.projection_rows import MIN_POINTS, shared_rows, stratified_rows
from ecaml.serve.projection_store import Projection, computing, read_projections, write_projections
from ecaml.store.paths import default_cache_dir

__all__ = [
    "FIRST_LAYOUT_LANDMARKS",
    "METHODS",
    "first_layout",
    "is_projection_cached",
    "project_runs",
    "projection_key",
    "warm_projection_cache",
]

METHODS = ("umap", "pca")
# Bumped when the layout of a cached projection file (or how one is computed) changes.
PROJECTION_CACHE_FORMAT = 2
# Landmarks of the quick first layout a large UMAP writes before its final one (seconds, not tens of seconds);
# a UMAP of fewer than twice as many points writes none.
FIRST_LAYOUT_LANDMARKS = 1000


@dataclass(frozen=True)
class _Settings:
    """Everything that decides a projection's coordinates besides the runs."""

    part: str = "unseen"
    method: str = "umap"
    aligned: bool = True
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    max_points: int | None = 3000
    n_epochs: int | None = None
    landmarks: int | None = LANDMARKS


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
    landmarks: int | None = LANDMARKS,
) -> list[Projection]:
    """One 2-D projection of the ``part`` embeddings per run, in the order of ``runs``.

    Runs on the same dataset share their rows: the images present in all of
    them, subsampled (seeded, stratified by class) to ``max_points`` the same way
    for every run. Runs on different datasets are each projected on their own.
    ``n_epochs`` is UMAP's (None: umap's default); ``landmarks`` caps the images
    UMAP lays out itself (the others are placed by them; None: no cap); ``seed``
    fixes everything, so the same inputs give the same coordinates.
    ``progress(done, total)`` is called in stages: each run's embeddings (by
    images embedded), then the projection.
    """
    settings = _Settings(part, method, aligned, n_neighbors, min_dist, seed, max_points, n_epochs, landmarks)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(runs, settings, cache_dir)
    names = [run.name for run in runs]
    cached = read_projections(path, names)
    if cached is not None:
        return cached
    with computing(path):  # another thread computing the same projection: wait for it, then read its file
        cached = read_projections(path, names)
        if cached is not None:
            return cached
        embeddings = _embeddings_with_progress(runs, part, cache_dir, progress)
        projections = _compute(path, runs, embeddings, settings)
        if progress is not None:
            progress(len(runs) + 1, len(runs) + 1)
        return projections


def first_layout(runs: list[Run], cache_dir: Path | None = None, **settings) -> list[Projection] | None:
    """What the cache holds for ``project_runs(runs, **settings)`` now: the final projection, the quick first layout
    written while the final one computes (``Projection.first_layout`` True), or None. Computes nothing."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(runs, _Settings(**settings), cache_dir)
    return read_projections(path, [run.name for run in runs], first_layout_too=True)


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


def is_projection_cached(runs: list[Run], cache_dir: Path | None = None, **settings) -> bool:
    """Whether ``project_runs`` with these arguments would only read its cache file (nothing is computed).

    Cheap: it hashes the runs' weights files (remembered per file) and reads the
    small cache file if there is one; a missing, unreadable or malformed file,
    or a first layout, is "not cached", just as ``project_runs`` would compute it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(runs, _Settings(**settings), cache_dir)
    return read_projections(path, [run.name for run in runs]) is not None


def warm_projection_cache(
    runs: list[Run], cache_dir: Path | None = None, progress: Callable[[int, int], None] | None = None, **settings
) -> bool:
    """Compute and store the projection ``project_runs`` would give for these arguments, unless already cached.

    Returns True when it computed one, False when the cache already held it. Errors
    are those of ``project_runs``; a caller running this in a background thread
    should catch and log them. Runs still training (weights newer on disk than in
    memory) are projected but, as with ``project_runs``, not cached.
    """
    if is_projection_cached(runs, cache_dir=cache_dir, **settings):
        return False
    project_runs(runs, cache_dir=cache_dir, progress=progress, **settings)
    return True


def _cache_path(runs: list[Run], settings: _Settings, cache_dir: Path) -> Path:
    """The cache file of a projection under ``cache_dir``, after checking the arguments."""
    _validate(runs, settings)
    key = projection_key(runs, **asdict(settings))
    return cache_dir / "projections" / f"{key}.npz"


def _compute(path: Path, runs: list[Run], embeddings: list[Embeddings], settings: _Settings) -> list[Projection]:
    """The projections of the runs' embeddings, stored at ``path`` when the runs' weights are those on disk.

    A large UMAP first stores a quick first layout there, replaced by the final one when it is done.
    """
    if _same_points(runs):
        rows = shared_rows(embeddings, settings.max_points, settings.seed)
        vectors = [e.vectors[r] for e, r in zip(embeddings, rows)]
        labels = embeddings[0].labels[rows[0]]
        coords_with = lambda landmarks: _shared_layouts(vectors, labels, settings, landmarks)  # noqa: E731
    else:
        rows = [stratified_rows(e.labels, settings.max_points, settings.seed) for e in embeddings]
        vectors = [e.vectors[r] for e, r in zip(embeddings, rows)]
        coords_with = lambda landmarks: [  # noqa: E731
            _shared_layouts([v], e.labels[r], settings, landmarks, aligned=False)[0]
            for v, e, r in zip(vectors, embeddings, rows)
        ]
    storable = all(weights_match_file(run) for run in runs)  # else the key names newer weights than the ones projected
    largest = max(len(r) for r in rows)

    def projections_from(coords: list[np.ndarray], first: bool = False) -> list[Projection]:
        return [
            Projection(run.name, np.asarray(c, dtype=np.float32), e.labels[r].astype(np.int64),
                       e.indices[r].astype(np.int64), first)
            for run, c, e, r in zip(runs, coords, embeddings, rows)
        ]

    if storable and settings.method == "umap" and largest >= 2 * FIRST_LAYOUT_LANDMARKS:
        first_landmarks = min(FIRST_LAYOUT_LANDMARKS, settings.landmarks or FIRST_LAYOUT_LANDMARKS)
        write_projections(path, projections_from(coords_with(first_landmarks), first=True), first_layout=True)
    projections = projections_from(coords_with(settings.landmarks))
    if storable:
        write_projections(path, projections)
    return projections


def _shared_layouts(
    vectors: list[np.ndarray], labels: np.ndarray, settings: _Settings, landmarks: int | None,
    aligned: bool | None = None,
) -> list[np.ndarray]:
    """2-D coordinates of panels whose row i is the same image, by ``settings.method``."""
    from ecaml.serve import umap_fit  # imports umap only when called: seconds of numba

    aligned = settings.aligned if aligned is None else aligned
    if settings.method == "pca":
        coords = [_pca(v) for v in vectors]
        return [coords[0]] + [_procrustes(c, coords[0]) for c in coords[1:]] if aligned else coords
    umap_settings = (settings.n_neighbors, settings.min_dist, settings.seed, settings.n_epochs)
    if aligned and len(vectors) > 1:
        layout = lambda panels: umap_fit.aligned_layout(panels, *umap_settings)  # noqa: E731
    else:
        layout = lambda panels: [umap_fit.umap_layout(v, *umap_settings) for v in panels]  # noqa: E731
    if landmarks is None:
        return layout(vectors)
    return landmark_layout(vectors, labels, layout, landmarks, settings.seed)


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
    landmarks: int | None = LANDMARKS,
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
        # PCA draws every point itself: the landmark count changes nothing there.
        "landmarks": None if landmarks is None or method == "pca" else int(landmarks),
        "versions": {"ecaml": __version__, **{name: _version(name) for name in ("umap-learn", "scikit-learn", "numpy")}},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _validate(runs: list[Run], settings: _Settings) -> None:
    if not runs:
        raise ValueError("no runs to project")
    if settings.part not in SPLIT_PARTS:
        raise ValueError(f"unknown split {settings.part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    if settings.method not in METHODS:
        raise ValueError(f"unknown projection method {settings.method!r}; choose one of {', '.join(METHODS)}")
    n_neighbors = settings.n_neighbors
    if isinstance(n_neighbors, bool) or int(n_neighbors) != n_neighbors or n_neighbors < 2:
        raise ValueError("n_neighbors must be an integer of at least 2")
    if not np.isfinite(settings.min_dist) or settings.min_dist < 0:
        raise ValueError("min_dist must be a number >= 0")
    for name, least in (("max_points", MIN_POINTS), ("landmarks", MIN_POINTS), ("n_epochs", 1)):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or int(value) != value or value < least):
            raise ValueError(f"{name} must be None or an integer of at least {least}")


def _same_points(runs: list[Run]) -> bool:
    """Whether the runs' dataset indices name the same images (same dataset and data folder)."""
    identities = {(data_identity(run)["dataset"], data_identity(run)["data_root"]) for run in runs}
    return len(identities) == 1


def _pca(vectors: np.ndarray) -> np.ndarray:
    """2-D PCA with each axis's sign fixed (its largest-magnitude loading positive), so the result is deterministic.

    From the D x D scatter matrix's eigenvectors when D <= N: at SOP's size (60,502 x 512) a few seconds, against
    about 6x that for the full SVD of the N x D matrix (benchmarks/import_scale.py measures both).
    """
    centred = vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64)
    if centred.shape[1] <= centred.shape[0]:
        _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues: the last two lead
        components = eigenvectors[:, ::-1][:, :2].T
    else:
        components = np.linalg.svd(centred, full_matrices=False)[2][:2]
    signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
    coords = centred @ (components * signs[:, None]).T
    if coords.shape[1] < 2:  # one-dimensional vectors: a flat second axis, so the map still has two
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords.astype(np.float32)


def _procrustes(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``coords`` rotated (or reflected) about its centre to best match ``reference`` row for row."""
    centred, centred_ref = coords - coords.mean(axis=0), reference - reference.mean(axis=0)
    u, _, vt = np.linalg.svd(centred.T.astype(np.float64) @ centred_ref.astype(np.float64))
    return (centred @ (u @ vt) + coords.mean(axis=0)).astype(np.float32)
