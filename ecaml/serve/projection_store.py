"""Projection cache files (``.npz``, never pickles) and the per-file lock that makes one thread compute each.

A file holds one panel per run and whether it is the *first layout* (a quick
one from few landmark images, written while the final one computes) or the
final one; each write replaces the file atomically, so a reader sees the first
layout or the final one, never a mix.
"""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecaml.serve.embeddings_cache import rows_well_formed
from ecaml.store.atomic import write_cache_file


@dataclass
class Projection:
    run_name: str
    coords: np.ndarray  # float32 [N, 2]; NaN for the rare point UMAP leaves unconnected
    labels: np.ndarray  # class id per row
    indices: np.ndarray  # dataset index per row (same order in every Projection of one call on one dataset)
    first_layout: bool = False  # a quick first layout from fewer landmark images; the final one is being computed


def write_projections(path: Path, projections: list[Projection], first_layout: bool = False) -> None:
    arrays = {"panels": np.array([len(projections)], dtype=np.int64), "first_layout": np.array([first_layout])}
    for i, p in enumerate(projections):
        arrays[f"coords_{i}"], arrays[f"labels_{i}"], arrays[f"indices_{i}"] = p.coords, p.labels, p.indices
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_cache_file(path, buffer.getvalue())


def read_projections(path: Path, run_names: list[str], first_layout_too: bool = False) -> list[Projection] | None:
    """The cached projections, or None when the file is missing, unreadable, not what it should be, or (unless
    ``first_layout_too``) only a first layout."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["panels"][0]) != len(run_names):
                return None
            first = bool(archive["first_layout"][0]) if "first_layout" in archive.files else False
            panels = [(archive[f"coords_{i}"], archive[f"labels_{i}"], archive[f"indices_{i}"])
                      for i in range(len(run_names))]
    except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed
        return None
    if first and not first_layout_too:
        return None
    projections = []
    for name, (coords, labels, indices) in zip(run_names, panels):
        if not rows_well_formed(labels, indices) or coords.dtype != np.float32 or coords.shape != (len(labels), 2):
            return None
        projections.append(Projection(name, coords, labels.astype(np.int64), indices.astype(np.int64), first))
    return projections


_locks_guard = threading.Lock()
_locks: dict[str, list] = {}  # cache file -> [lock, number of threads using it]


@contextmanager
def computing(path: Path):
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
