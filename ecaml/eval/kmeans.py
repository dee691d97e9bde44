"""The k-means behind NMI: one implementation and one setting for every size of set.

NMIs of splits of different sizes (a 900-image unseen split, SOP's 60,502 images) are only
comparable when the same clustering produced them. Earlier, a compute budget switched from
faiss (5 restarts x 20 iterations) to torch (1 x 10) on large sets; now every set gets the
same seeded Lloyd k-means, ``KMEANS_SETTINGS``, whatever its size.

What keeps it affordable on large sets is pruning, not fewer iterations. Each point keeps
its ``_CANDIDATES`` nearest centroids with their squared distances, and a floor: a lower
bound on its distance to every other centroid. After the first iterations only a few
clusters still change (at 1,400 clusters in 512 dimensions, 4-140 of them), so when at
most a third of the centroids moved, one product with the moved ones updates every
point's candidate distances and floor, and a point whose nearest candidate stays below its
floor keeps it without a full pass. (Hamerly's single bound, used before, fell by the
largest drift of any centroid and pruned almost nothing there.) The result is Lloyd's:
bounds are widened by the float32 rounding of a squared distance, so a point is settled
only when no rounding could change its assignment; the others go through the full product.

``"pml"`` mode stays available to compare like for like with pytorch-metric-learning:
faiss k-means with ``AccuracyCalculator``'s default settings.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from ecaml.eval.search import BLOCK_ENTRIES, default_device, product_buffer

NMI_KMEANS = ("ecaml", "pml")
# One run of at most 20 iterations (pytorch-metric-learning's count), stopped early at a fixed point.
KMEANS_SETTINGS = {"implementation": "torch", "niter": 20, "nredo": 1}
PML_KMEANS_SETTINGS = {"implementation": "faiss", "niter": 20, "nredo": 1}
# Largest error of a float32 squared distance |x|^2 - 2 x.c + |c|^2 between points of norm at
# most ~1 (unit points, centroids inside the ball), with a wide margin; bounds are widened by it.
_SQUARED_DISTANCE_SLACK = 1e-4
# Nearest centroids each point keeps, with their distances, between full passes (see _reassign).
_CANDIDATES = 16
# Largest share of moved centroids for which an iteration updates distances to those alone (see _reassign);
# 1/3 rather than 1/8: 0.35 against 0.39 s at 7,500 points in 1,400 clusters (separated), 0.25 against 0.31 s
# (realistic), same clusters (benchmarks/eval_sweep.py --scale quick, idle box, interleaved).
_PARTIAL_UP_TO = 1 / 3


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
    squared-error kept), computed with blocked matrix products, each point measured against its candidate
    centroids only until the floor on the rest says otherwise (see the module docstring).

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
    state = _nearest_candidates(points, centroids)
    clusters = len(centroids)
    for _ in range(niter):
        sums = torch.zeros_like(centroids).index_add_(0, state[0], points)
        counts = torch.bincount(state[0], minlength=clusters)
        filled = counts > 0
        moved = centroids.clone()
        moved[filled] = sums[filled] / counts[filled, None]
        drift = (moved - centroids).norm(dim=1)
        centroids = moved
        changed = _reassign(points, centroids, drift, state)
        if not changed:
            break
    return state[0], centroids


def _reassign(points, centroids, drift, state) -> bool:
    """Update ``state`` (ids, candidates, their squared distances, floors) in place after the centroids
    moved by ``drift``; True if any point changed cluster.

    After the first iterations only a few clusters still change. When at most a third of
    the centroids moved, one product with those alone gives every point's new distances to
    them; a candidate that did not move keeps its distance, and the floor (the nearest
    non-candidate) can only have come down to a moved one. A point keeps its nearest candidate
    when that is nearer than the floor and no rounding could reorder it with the next one;
    the others, or everyone when more centroids moved, go through the full blocked product.
    """
    ids, candidates, candidate_squared, floor = state
    moved = torch.nonzero(drift > 0).flatten()
    if len(moved) == 0:
        return False
    if len(moved) > len(centroids) * _PARTIAL_UP_TO:
        new_state = _nearest_candidates(points, centroids)
        changed = bool((new_state[0] != ids).any())
        for old, new in zip(state, new_state):
            old.copy_(new)
        return changed
    column_of = torch.full((len(centroids),), len(moved), dtype=torch.int64, device=points.device)
    column_of[moved] = torch.arange(len(moved), device=points.device)
    centroid_norms = (centroids[moved] * centroids[moved]).sum(dim=1)
    rows = max(1, BLOCK_ENTRIES // len(moved))
    for start in range(0, len(points), rows):
        block = slice(start, start + rows)
        point_norms = (points[block] * points[block]).sum(dim=1, keepdim=True)
        squared = torch.addmm(centroid_norms[None, :] + point_norms, points[block], centroids[moved].T, alpha=-2.0)
        squared = torch.cat([squared, squared.new_full((len(squared), 1), torch.inf)], dim=1)
        positions = column_of[candidates[block]]
        listed_moved = positions < len(moved)
        candidate_squared[block] = torch.where(listed_moved, squared.gather(1, positions), candidate_squared[block])
        squared.scatter_(1, positions, torch.inf)  # candidates are scored above, not in the floor
        floor[block] = torch.minimum(floor[block], _distance(squared.min(dim=1).values, -_SQUARED_DISTANCE_SLACK))
    values, order = torch.topk(candidate_squared, min(2, candidate_squared.shape[1]), dim=1, largest=False)
    nearest = _distance(values[:, 0], _SQUARED_DISTANCE_SLACK)
    settled = nearest < floor
    if values.shape[1] == 2:
        settled &= _distance(values[:, 1], -_SQUARED_DISTANCE_SLACK) > nearest
    new_ids = candidates.gather(1, order[:, :1])[:, 0]
    unsure = torch.nonzero(~settled).flatten()
    if len(unsure):
        refreshed = _nearest_candidates(points[unsure], centroids)
        new_ids[unsure] = refreshed[0]
        for old, new in zip(state[1:], refreshed[1:]):
            old[unsure] = new
    changed = bool((new_ids != ids).any())
    ids.copy_(new_ids)
    return changed


def _nearest_candidates(points: torch.Tensor, centroids: torch.Tensor):
    """(ids, candidates, candidate_squared, floor): each point's nearest centroid (L2; equal distances:
    the lower id), its ``_CANDIDATES`` nearest centroids with their squared distances, and a floor, a
    lower bound on its distance to every other centroid (inf when the candidates are all of them),
    block by block of points through one matrix product each."""
    centroid_norms = (centroids * centroids).sum(dim=1)
    point_norms = (points * points).sum(dim=1)
    depth = min(_CANDIDATES + 1, len(centroids))
    listed = depth if depth == len(centroids) else depth - 1
    ids = torch.empty(len(points), dtype=torch.int64, device=points.device)
    candidates = torch.empty((len(points), listed), dtype=torch.int64, device=points.device)
    candidate_squared = torch.empty((len(points), listed), dtype=points.dtype, device=points.device)
    floor = torch.full((len(points),), torch.inf, dtype=points.dtype, device=points.device)
    rows = max(1, BLOCK_ENTRIES // len(centroids))
    output = product_buffer(min(rows, len(points)), len(centroids), points.device, points.dtype)
    for start in range(0, len(points), rows):
        block = slice(start, start + rows)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change which centroid wins.
        scores = torch.addmm(centroid_norms[None, :], points[block], centroids.T, alpha=-2.0,
                             out=output[: min(rows, len(points) - start)])
        values, columns = torch.topk(scores, depth, dim=1, largest=False, sorted=True)
        tied = values == values[:, :1]
        ids[block] = torch.where(tied, columns, len(centroids)).min(dim=1).values
        candidates[block] = columns[:, :listed]
        candidate_squared[block] = values[:, :listed] + point_norms[block, None]
        if listed < depth:
            floor[block] = _distance(values[:, listed] + point_norms[block], -_SQUARED_DISTANCE_SLACK)
    return ids, candidates, candidate_squared, floor


def _distance(squared: torch.Tensor, widen_by: float) -> torch.Tensor:
    """sqrt of a rounded squared distance, moved by ``widen_by`` first so that it bounds the true one."""
    return (squared + widen_by).clamp_(min=0.0).sqrt_()
