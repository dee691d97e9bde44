#!/usr/bin/env python
"""The training film's layout time with t-SNE's affinities over all points against over each point's nearest ones.

    python benchmarks/film_layout.py        # the shipped featured pairs' films (about 2 minutes on 2 cores)

For each shipped EC-off / EC-on pair with a film (digits: 896 points a frame; Fashion-MNIST: 2,000), lays out the
whole film (``ecaml.serve.film.film_frames``) twice, interleaved: with the affinities over all N points (the layout
before this benchmark's change, kept here as ``all_points_affinities``) and with the library's, which keep each
point's 3 x perplexity nearest points. Prints the wall seconds of each, their ratio, the share of P's mass that
moves (half the L1 distance between the two P, on the EC-on run's last frame) and, for each layout of that frame,
the share of each point's 10 nearest neighbours in the embedding that are among its 10 nearest on the frame.
One JSON line at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ecaml.serve import neighbour_layout  # noqa: E402
from ecaml.serve.film import film_frames, read_film  # noqa: E402

PAIRS = {"digits (896 points)": ("digits-triplet-ec0-seed0", "digits-triplet-ec1-seed0"),
         "fashion-mnist (2,000 points)": ("fashion-mnist-triplet-ec0-seed0", "fashion-mnist-triplet-ec1-seed0")}


def all_points_affinities(vectors: np.ndarray, perplexity: float = neighbour_layout.PERPLEXITY) -> torch.Tensor:
    """t-SNE's P with every row's bisection over all N points (the library's function before it kept neighbours)."""
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(vectors), dtype=torch.float32), dim=1)
    count = len(x)
    distances = (2 - 2 * x @ x.T).clamp_min(0)
    distances.fill_diagonal_(float("inf"))
    target = np.log(min(perplexity, (count - 1) / 3))
    shifted = distances - distances.min(dim=1, keepdim=True).values
    finite = torch.nan_to_num(shifted, posinf=0.0)
    low, high = torch.zeros(count), torch.full((count,), np.inf)
    beta = torch.ones(count)
    for _ in range(40):
        weights = torch.exp(-shifted * beta[:, None])
        total = weights.sum(dim=1)
        entropy = torch.log(total) + beta * (finite * weights).sum(dim=1) / total
        too_wide = entropy > target
        low = torch.where(too_wide, beta, low)
        high = torch.where(too_wide, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, (low + high) / 2)
    conditional = weights / total[:, None]
    return ((conditional + conditional.T) / (2 * count)).clamp_min(1e-12)


def timed_film(films, affinities) -> tuple[float, list]:
    kept = neighbour_layout.affinities
    neighbour_layout.affinities = affinities
    try:
        started = time.perf_counter()
        _, frames = film_frames(films)
        return time.perf_counter() - started, frames
    finally:
        neighbour_layout.affinities = kept


def nearest(points: np.ndarray, k: int = 10) -> np.ndarray:
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1)[:, :k]


def kept_neighbours(embedding: np.ndarray, coords: np.ndarray, k: int = 10) -> float:
    """The share of each point's k nearest neighbours in the (L2-normalised) embedding that are among its k nearest
    on the 2-D frame: how well the frame keeps neighbourhoods."""
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(nearest(unit, k), nearest(coords, k))]))


def main() -> None:
    results = {}
    for title, names in PAIRS.items():
        films = [read_film(REPO_ROOT / "checkpoints" / name) for name in names]
        if any(film is None for film in films):
            print(f"{title}: no shipped film, skipped")
            continue
        exact_s, exact_frames = timed_film(films, all_points_affinities)
        kept_s, kept_frames = timed_film(films, neighbour_layout.affinities)
        last = films[1].embeddings[-1]
        moved = 0.5 * float((all_points_affinities(last) - neighbour_layout.affinities(last)).abs().sum())
        kept_all = kept_neighbours(last, exact_frames[1][-1])
        kept_nearest = kept_neighbours(last, kept_frames[1][-1])
        results[title] = {"frames": 2 * len(films[0].steps), "all_points_s": round(exact_s, 2),
                          "nearest_s": round(kept_s, 2), "ratio": round(exact_s / kept_s, 2),
                          "p_mass_moved": round(moved, 4),
                          "neighbours_kept_all_points": round(kept_all, 3),
                          "neighbours_kept_nearest": round(kept_nearest, 3)}
        print(title, results[title], flush=True)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
