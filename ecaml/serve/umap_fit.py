"""UMAP fits behind ``ecaml.serve.projection``: one panel (``umap_layout``) or panels tied image by image
(``aligned_layout``).

umap is imported only when a layout is actually computed (importing it costs
seconds: numba), with numba's disk cache turned on for the functions umap
compiles on every process's first fit.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np

__all__ = ["aligned_layout", "import_umap", "umap_layout"]

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
# AlignedUMAP's defaults: epochs when none are asked for, how far relations reach and how strongly they pull.
DEFAULT_ALIGNED_EPOCHS = 200
ALIGNMENT_WINDOW = 3
ALIGNMENT_REGULARISATION = 1.0e-2


def import_umap():
    """umap, imported on first use, with numba's disk cache turned on for its uncached hot functions."""
    global _numba_caching_enabled
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


def umap_kwargs(count: int, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None) -> dict:
    return dict(
        n_neighbors=min(int(n_neighbors), count - 1),
        min_dist=float(min_dist),
        metric="cosine",
        random_state=int(seed),
        n_epochs=None if n_epochs is None else int(n_epochs),
    )


def umap_layout(vectors: np.ndarray, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None) -> np.ndarray:
    """One panel's UMAP (cosine), seeded."""
    umap = import_umap()
    with quiet_umap():
        reducer = umap.UMAP(**umap_kwargs(len(vectors), n_neighbors, min_dist, seed, n_epochs))
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)


def aligned_layout(
    vectors: list[np.ndarray], n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None
) -> list[np.ndarray]:
    """Aligned UMAP of the panels, row i of every panel being the same image (cosine), seeded.

    umap-learn's ``AlignedUMAP`` with identity relations, minus its waste: it fits a
    whole UMAP per panel (neighbour search *and* a layout of every point) only to keep
    its graph, then lays the panels out again together. Here each panel's graph is
    built from an exact neighbour search (``ecaml.eval.search.exact_topk``: one matrix
    product, no approximate index to build), and only the joint layout is optimised,
    with the curve that ``min_dist`` asks for (AlignedUMAP keeps umap's default one).
    """
    import_umap()
    import numba
    from umap.aligned_umap import build_neighborhood_similarities, expand_relations, procrustes_align
    from umap.spectral import spectral_layout
    from umap.umap_ import INT32_MAX, INT32_MIN, find_ab_params, make_epochs_per_sample

    count = len(vectors[0])
    n_epochs = DEFAULT_ALIGNED_EPOCHS if n_epochs is None else int(n_epochs)
    with quiet_umap():
        graphs = [neighbour_graph(panel, min(int(n_neighbors), count - 1), seed) for panel in vectors]
        relations = expand_relations([{i: i for i in range(count)}] * (len(vectors) - 1), ALIGNMENT_WINDOW)
        typed = {name: numba.typed.List.empty_list(kind) for name, kind in (
            ("indptr", numba.types.int32[::1]), ("indices", numba.types.int32[::1]), ("heads", numba.types.int32[::1]),
            ("tails", numba.types.int32[::1]), ("epochs", numba.types.float64[::1]))}
        for graph in graphs:
            edges = graph.tocoo()
            typed["indptr"].append(graph.indptr)
            typed["indices"].append(graph.indices)
            typed["heads"].append(edges.row)
            typed["tails"].append(edges.col)
            typed["epochs"].append(make_epochs_per_sample(edges.data, n_epochs))
        weights = build_neighborhood_similarities(typed["indptr"], typed["indices"], relations)
        random_state = np.random.RandomState(seed)
        embeddings = numba.typed.List.empty_list(numba.types.float32[:, ::1])
        for number, (panel, graph) in enumerate(zip(vectors, graphs)):
            start = spectral_layout(panel, graph, 2, random_state)
            start = (start * (10.0 / np.abs(start).max())).astype(np.float32, order="C")
            if number:  # each panel starts turned onto the one before it
                anchors = np.arange(count)
                start = procrustes_align(embeddings[-1], start, np.vstack([anchors, anchors]))
            embeddings.append(start)
        a, b = find_ab_params(1.0, float(min_dist))
        laid_out = _optimise_aligned(
            embeddings, typed["heads"], typed["tails"], n_epochs, typed["epochs"], weights, relations,
            random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64), a, b,
        )
    coords = [np.asarray(e, dtype=np.float32) for e in laid_out]
    for graph, panel in zip(graphs, coords):
        panel[np.asarray(graph.sum(axis=1)).ravel() == 0] = np.nan  # unconnected: no place to put it, as umap does
    return coords


_epoch_optimiser = None


def _optimise_aligned(embeddings, heads, tails, n_epochs, epochs_per_sample, weights, relations, rng_state, a, b):
    """umap's ``optimize_layout_aligned_euclidean`` (move_other, no progress bar), with its one-epoch step compiled
    once per process and cached on disk: umap compiles it anew on every call (seconds each)."""
    global _epoch_optimiser
    import numba
    from umap import layouts

    if _epoch_optimiser is None:
        step = layouts._optimize_layout_aligned_euclidean_single_epoch
        _epoch_optimiser = numba.njit(step, fastmath=True, cache=True)
    negative_rate = 5.0
    per_negative, next_negative, next_sample = (numba.typed.List.empty_list(numba.types.float32[::1]) for _ in range(3))
    with np.errstate(over="ignore"):  # an edge too weak to sample in n_epochs waits forever (inf), as in umap
        for every in epochs_per_sample:
            per_negative.append((every / negative_rate).astype(np.float32))
            next_negative.append((every / negative_rate).astype(np.float32))
            next_sample.append(every.astype(np.float32))
    for epoch in range(n_epochs):
        alpha = 1.0 - max(epoch - 1, 0) / n_epochs  # umap's learning rate, falling linearly from 1
        _epoch_optimiser(
            embeddings, embeddings, heads, tails, epochs_per_sample, a, b, weights, relations, rng_state, 1.0,
            ALIGNMENT_REGULARISATION, 2, True, alpha, per_negative, next_negative, next_sample, epoch,
        )
    return embeddings


def neighbour_graph(vectors: np.ndarray, n_neighbors: int, seed: int):
    """UMAP's fuzzy graph of one panel (cosine), from the exact ``n_neighbors`` nearest rows (itself first)."""
    from umap.umap_ import fuzzy_simplicial_set

    from ecaml.eval.metrics import l2_normalise
    from ecaml.eval.search import exact_topk

    unit = l2_normalise(vectors)
    similarities, nearest = exact_topk(unit, unit, n_neighbors)
    distances = np.maximum(1.0 - similarities, 0.0).astype(np.float32)
    graph, _, _ = fuzzy_simplicial_set(
        unit, n_neighbors, np.random.RandomState(seed), "cosine", knn_indices=nearest.astype(np.int32),
        knn_dists=distances,
    )
    return graph.tocsr()


class quiet_umap(warnings.catch_warnings):
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
