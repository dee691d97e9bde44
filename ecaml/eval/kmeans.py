"""The k-means behind NMI: one implementation and one setting for every size of set.

NMIs of splits of different sizes (a 900-image unseen split, SOP's 60,502 images) are only
comparable when the same clustering produced them. Earlier, a compute budget switched from
faiss (5 restarts x 20 iterations) to torch (1 x 10) on large sets; now every set gets the
same seeded Lloyd k-means, ``KMEANS_SETTINGS``, whatever its size.

What keeps it affordable on large sets is pruning, not fewer iterations: Hamerly's bounds
(G. Hamerly, "Making k-means even faster", SDM 2010). Each point keeps an upper bound on
the distance to its own centroid and a lower bound on the distance to any other; after a
centroid update the bounds move by how far the centroids moved, and a point whose upper
bound stays below its lower bound cannot change cluster, so its distances are not
computed. Only the remaining points go through the blocked matrix product. The result is
Lloyd's: the bounds are widened by the float32 rounding of a squared distance, so a point
is skipped only when no rounding could change its assignment.

``"pml"`` mode stays available to compare like for like with pytorch-metric-learning:
faiss k-means with ``AccuracyCalculator``'s default settings.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from ecaml.eval.search import BLOCK_ENTRIES, default_device

NMI_KMEANS = ("ecaml", "pml")
# One run of at most 20 iterations (pytorch-metric-learning's count), stopped early at a fixed point.
KMEANS_SETTINGS = {"implementation": "torch", "niter": 20, "nredo": 1}
PML_KMEANS_SETTINGS = {"implementation": "faiss", "niter": 20, "nredo": 1}
# Largest error of a float32 squared distance |x|^2 - 2 x.c + |c|^2 between points of norm at
# most ~1 (unit points, centroids inside the ball), with a wide margin; bounds are widened by it.
_SQUARED_DISTANCE_SLACK = 1e-4


def kmeans_settings(count: int, clusters: int, dim: int, mode: str = "ecaml") -> dict:
    """The k-means NMI runs for ``count`` points of ``dim`` dimensions in ``clusters`` clusters.

    ``"ecaml"`` (default): ``KMEANS_SETTINGS`` for every size (the arguments do not change
    it; they stay so that callers can record the settings of a set). ``"pml"``:
    pytorch-metric-learning's ``AccuracyCalculator`` default, one faiss run of 20 iterations
    with faiss's defaults (seed 1234, at most 256 points per centroid sampled).
    """
    if mode == "pml":
        return dict(PML_KMEANS_SETTINGS)
    if mode != "ecaml":
        raise ValueError(f"unknown nmi_kmeans {mode!r}; choose one of {', '.join(NMI_KMEANS)}")
    return dict(KMEANS_SETTINGS)


def clustering_nmi(vectors: np.ndarray, class_codes: np.ndarray, class_count: int, seed: int, mode: str,
                   device: torch.device | None = None) -> float:
    """NMI between the labels and a k-means of ``vectors`` into ``class_count`` clusters."""
    settings = kmeans_settings(len(vectors), class_count, vectors.shape[1], mode)
    if settings.pop("implementation") == "torch":
        cluster_ids = lloyd_kmeans(vectors, class_count, seed=seed, device=device, **settings)
    else:
        kmeans = faiss.Kmeans(vectors.shape[1], class_count, verbose=False, **settings)
        kmeans.train(vectors)
        cluster_ids = kmeans.index.search(vectors, 1)[1][:, 0]
    return float(normalized_mutual_info_score(class_codes, cluster_ids))


def lloyd_kmeans(vectors: np.ndarray, clusters: int, niter: int = 20, nredo: int = 1, seed: int = 0,
                 device: torch.device | None = None) -> np.ndarray:
    """Cluster ids [N] of seeded Lloyd k-means (``nredo`` restarts of ``niter`` iterations, the best
    squared-error kept), computed with blocked matrix products and Hamerly's pruning.

    Each restart starts from ``clusters`` distinct points drawn by a generator seeded with
    ``seed`` + restart; a cluster left empty keeps its previous centroid. A restart stops
    as soon as an iteration leaves every assignment as it was (nothing would change after).
    """
    device = device or default_device()
    points = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    best_error, best_ids = np.inf, None
    for restart in range(nredo):
        generator = torch.Generator().manual_seed(int(seed) + restart)
        centroids = points[torch.randperm(len(points), generator=generator)[:clusters].to(device)].clone()
        ids, centroids = _lloyd_run(points, centroids, niter)
        error = float(((points - centroids[ids]) ** 2).sum())
        if error < best_error:
            best_error, best_ids = error, ids
    return best_ids.cpu().numpy()


def _lloyd_run(points: torch.Tensor, centroids: torch.Tensor, niter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lloyd run from ``centroids``: the final assignment and centroids."""
    ids, upper, lower = _two_nearest(points, centroids)
    clusters = len(centroids)
    for _ in range(niter):
        sums = torch.zeros_like(centroids).index_add_(0, ids, points)
        counts = torch.bincount(ids, minlength=clusters)
        filled = counts > 0
        moved = centroids.clone()
        moved[filled] = sums[filled] / counts[filled, None]
        drift = (moved - centroids).norm(dim=1)
        centroids = moved
        upper += drift[ids]
        lower -= drift.max()
        changed = _reassign(points, centroids, ids, upper, lower)
        if not changed:
            break
    return ids, centroids


def _reassign(points, centroids, ids, upper, lower) -> bool:
    """Update ``ids`` and the bounds in place for the points whose cluster may have changed; True if any did."""
    unsure = torch.nonzero(upper >= lower).flatten()
    if len(unsure) == 0:
        return False
    # Tighten the upper bound to the exact distance first: often that settles the point.
    own = (points[unsure] - centroids[ids[unsure]]).norm(dim=1)
    upper[unsure] = own
    unsure = unsure[own >= lower[unsure]]
    if len(unsure) == 0:
        return False
    new_ids, upper[unsure], lower[unsure] = _two_nearest(points[unsure], centroids)
    changed = bool((new_ids != ids[unsure]).any())
    ids[unsure] = new_ids
    return changed


def _two_nearest(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each point's nearest centroid (L2; equal distances: the lower id), an upper bound on its distance
    to it and a lower bound on its distance to every other centroid, block by block of points."""
    centroid_norms = (centroids * centroids).sum(dim=1)
    point_norms = (points * points).sum(dim=1)
    ids = torch.empty(len(points), dtype=torch.int64, device=points.device)
    upper = torch.empty(len(points), dtype=points.dtype, device=points.device)
    lower = torch.full((len(points),), torch.inf, dtype=points.dtype, device=points.device)
    rows = max(1, BLOCK_ENTRIES // len(centroids))
    depth = min(2, len(centroids))
    for start in range(0, len(points), rows):
        block = slice(start, start + rows)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change which centroid wins.
        scores = torch.addmm(centroid_norms[None, :], points[block], centroids.T, alpha=-2.0)
        values, columns = torch.topk(scores, depth, dim=1, largest=False, sorted=True)
        first = columns[:, 0]
        if depth == 2:
            first = torch.where(values[:, 0] == values[:, 1], columns.min(dim=1).values, first)
            lower[block] = _distance(values[:, 1] + point_norms[block], -_SQUARED_DISTANCE_SLACK)
        ids[block] = first
        upper[block] = _distance(values[:, 0] + point_norms[block], _SQUARED_DISTANCE_SLACK)
    return ids, upper, lower


def _distance(squared: torch.Tensor, widen_by: float) -> torch.Tensor:
    """sqrt of a rounded squared distance, moved by ``widen_by`` first so that it bounds the true one."""
    return (squared + widen_by).clamp_(min=0.0).sqrt_()
