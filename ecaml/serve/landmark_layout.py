"""A large map fast: lay out a class-stratified sample of landmark images, then place every other image by them.

UMAP's cost grows with the points (the neighbour graph, then hundreds of epochs
over its edges), and umap-learn's AlignedUMAP also fits a full UMAP per panel
that it throws away: 2 x 35,000 points took about 4.5 minutes on two cores.
Here only ``landmarks`` images per panel go through the layout; each other
image is then put at the similarity-weighted mean position of its nearest
landmarks *in that run's embedding space* (an exact cosine search,
``ecaml.eval.search.exact_topk``), which keeps who-is-near-whom: an image's map
neighbours are the images that share its nearest landmarks. Since the
landmarks are the same images in every panel, the panels stay aligned.
``benchmarks/map_speed.py`` measures time and neighbourhood preservation
against the full AlignedUMAP.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ecaml.eval.metrics import l2_normalise
from ecaml.eval.search import exact_topk
from ecaml.serve.projection_rows import stratified_rows

# Landmark images per panel: the layout of 5,000 keeps the classes' inner structure (measured in
# benchmarks/map_speed.py) at about a seventh of the points of a 35,000-image split.
LANDMARKS = 5000
# Nearest landmarks whose positions an image's position averages.
PLACING_NEIGHBOURS = 10

Layout = Callable[[list[np.ndarray]], list[np.ndarray]]


def landmark_layout(
    vectors: list[np.ndarray], labels: np.ndarray, layout: Layout, landmarks: int, seed: int,
    neighbours: int = PLACING_NEIGHBOURS,
) -> list[np.ndarray]:
    """``layout`` of the same ``landmarks`` rows of every panel, every other row placed by its nearest landmarks.

    ``vectors`` are the panels (row i the same image in each), ``labels`` their
    shared classes (the landmarks keep each class's share). With no more rows
    than ``landmarks``, this is ``layout`` itself.
    """
    rows = stratified_rows(labels, landmarks, seed)
    if len(rows) == len(labels):
        return layout(vectors)
    landmark_coords = layout([panel[rows] for panel in vectors])
    return [place_by_landmarks(panel, rows, coords, neighbours) for panel, coords in zip(vectors, landmark_coords)]


def place_by_landmarks(
    vectors: np.ndarray, landmark_rows: np.ndarray, landmark_coords: np.ndarray, neighbours: int = PLACING_NEIGHBOURS
) -> np.ndarray:
    """2-D positions of every row: landmarks keep theirs, the others the weighted mean of their nearest landmarks'.

    Weights fall off with cosine distance beyond the nearest landmark's, on the
    scale of that row's own neighbour distances, so an image right by one
    landmark sits by it and one between two sits between them. Landmarks the
    layout left unplaced (NaN) get no weight; a row with no placed landmark
    among its neighbours stays NaN, as UMAP leaves its unconnected points.
    """
    unit = l2_normalise(vectors)
    placed = np.isfinite(landmark_coords).all(axis=1)
    usable_rows, usable_coords = landmark_rows[placed], landmark_coords[placed]
    coords = np.full((len(vectors), 2), np.nan, dtype=np.float32)
    if len(usable_rows):
        k = min(int(neighbours), len(usable_rows))
        similarities, nearest = exact_topk(unit, unit[usable_rows], k)
        distances = 1.0 - similarities.astype(np.float64)
        nearest_distance = distances[:, :1]
        scale = np.maximum(distances.mean(axis=1, keepdims=True) - nearest_distance, 1e-6)
        weights = np.exp(-(distances - nearest_distance) / scale)
        weights /= weights.sum(axis=1, keepdims=True)
        coords[:] = np.einsum("nk,nkc->nc", weights, usable_coords[nearest].astype(np.float64))
    coords[landmark_rows] = landmark_coords  # the landmarks exactly where the layout put them
    return coords
