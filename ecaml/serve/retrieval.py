"""Nearest-neighbour retrieval for the app: one faiss index per run over its cached embeddings, queries.

* The embeddings come from ``ecaml.serve.embeddings_cache`` (embedded once, kept on disk).
* ``RunIndex`` answers "which images does this run put next to that one?",
  for an image of the split or an uploaded one; ``disagreement_queries`` finds
  the images on which several runs differ most.

Similarity is cosine: embeddings are L2-normalised and searched exactly with a
faiss ``IndexFlatIP``, as in ``ecaml.eval.metrics``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from ecaml.data import ClassSplit
from ecaml.data.images import _convert as convert_image_mode
from ecaml.eval.evaluate import Embeddings, eval_transform, split_for
from ecaml.eval.metrics import l2_normalise
from ecaml.runs import Run, input_channels
from ecaml.serve.embeddings_cache import cached_embeddings

# ----------------------------------------------------------------------------- queries


@dataclass
class Neighbour:
    dataset_index: int
    label: int
    class_name: str
    similarity: float
    correct: bool | None  # None when the query's label is unknown (an upload)


@dataclass
class QueryResult:
    run_name: str
    neighbours: list[Neighbour]
    seconds: float


class RunIndex:
    """A run's embeddings of one split in an exact cosine index."""

    def __init__(self, run: Run, embeddings: Embeddings, split: ClassSplit, part: str = "unseen"):
        if len(embeddings.labels) < 2:
            raise ValueError(f"{run.name}: the {part} split has fewer than 2 images; nothing to retrieve")
        self.run = run
        self.split = split
        self.part = part
        # faiss keeps the one in-memory copy of the vectors; ``embeddings.vectors`` stays what it was given (for a
        # cached split, a read-only memory map of the cache file), and query rows are normalised as they are read.
        self.embeddings = Embeddings(
            embeddings.vectors, np.asarray(embeddings.labels, np.int64), np.asarray(embeddings.indices, np.int64)
        )
        self.index = faiss.IndexFlatIP(embeddings.vectors.shape[1])
        for start in range(0, len(embeddings.labels), 16384):  # normalised chunk by chunk: no second full copy
            self.index.add(l2_normalise(np.asarray(embeddings.vectors[start : start + 16384], dtype=np.float32)))
        order = np.argsort(self.embeddings.indices, kind="stable")
        self._sorted_indices, self._sorted_rows = self.embeddings.indices[order], order

    def __len__(self) -> int:
        return len(self.embeddings.labels)

    @property
    def run_name(self) -> str:
        return self.run.name

    def row_of(self, dataset_index: int) -> int:
        """The embedding row of a dataset index; ValueError when that image is not in this split."""
        position = int(np.searchsorted(self._sorted_indices, int(dataset_index)))
        if position == len(self._sorted_indices) or self._sorted_indices[position] != int(dataset_index):
            raise ValueError(f"image {dataset_index} is not in the {self.part} split of {self.run_name}")
        return int(self._sorted_rows[position])

    def rows_of(self, dataset_indices: np.ndarray) -> np.ndarray:
        """The embedding rows of many dataset indices at once (each must be in this split)."""
        positions = np.searchsorted(self._sorted_indices, dataset_indices)
        positions = np.minimum(positions, len(self._sorted_indices) - 1)
        if not np.array_equal(self._sorted_indices[positions], dataset_indices):
            raise ValueError(f"some images are not in the {self.part} split of {self.run_name}")
        return self._sorted_rows[positions]

    def query_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The L2-normalised vectors of some rows, as faiss queries them."""
        return l2_normalise(np.asarray(self.embeddings.vectors[np.asarray(rows)], dtype=np.float32))

    def class_members(self, label: int) -> np.ndarray:
        """Dataset indices of this split's images of class ``label``, in dataset order (vectorised: no Python loop)."""
        return np.sort(self.embeddings.indices[self.embeddings.labels == int(label)])

    def query_by_index(self, dataset_index: int, k: int = 8) -> QueryResult:
        """The ``k`` nearest other images of the split to image ``dataset_index`` (itself excluded)."""
        started = time.perf_counter()
        row = self.row_of(dataset_index)
        k = _checked_k(k, len(self) - 1)
        with _one_thread():
            similarities, rows = _search_excluding_self(self.index, self.query_vectors([row]), np.array([row]), k)
        query_label = int(self.embeddings.labels[row])
        neighbours = self._neighbours(similarities[0], rows[0], query_label)
        return QueryResult(self.run_name, neighbours, time.perf_counter() - started)

    def query_by_image(self, image: Image.Image, k: int = 8) -> QueryResult:
        """The ``k`` nearest images of the split to any image, embedded with the run's model and eval transform."""
        started = time.perf_counter()
        if self.run.model is None:
            raise ValueError(f"{self.run_name} holds imported vectors, not a model: it cannot embed a new image")
        k = _checked_k(k, len(self))
        vector = self.embed_image(image)
        with _one_thread():
            similarities, rows = self.index.search(vector, k)
        neighbours = self._neighbours(similarities[0], rows[0], None)
        return QueryResult(self.run_name, neighbours, time.perf_counter() - started)

    @torch.no_grad()
    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The L2-normalised embedding [1, D] of one PIL image (converted to the run's channels, alpha on black)."""
        channels = input_channels(self.run.config)
        image = convert_image_mode(image, "L" if channels == 1 else "RGB")
        tensor = eval_transform(self.run.config, channels)(image).unsqueeze(0)
        model = self.run.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            raw = model(tensor.to(device)).float()
        finally:
            model.train(was_training)
        return l2_normalise(raw.cpu().numpy())

    def _neighbours(self, similarities: np.ndarray, rows: np.ndarray, query_label: int | None) -> list[Neighbour]:
        result = []
        for similarity, row in zip(similarities, rows):
            if row < 0:  # faiss pads with -1 when asked for more than it holds
                continue
            label = int(self.embeddings.labels[row])
            result.append(
                Neighbour(
                    dataset_index=int(self.embeddings.indices[row]),
                    label=label,
                    class_name=self.split.dataset.class_names[label],
                    similarity=float(similarity),
                    correct=None if query_label is None else label == query_label,
                )
            )
        return result


def build_index(run: Run, part: str = "unseen", cache_dir: Path | None = None) -> RunIndex:
    """A ``RunIndex`` of the run's ``part`` split, its embeddings from the cache when there."""
    return RunIndex(run, cached_embeddings(run, part, cache_dir), split_for(run.config), part)


def disagreement_queries(
    indexes: list[RunIndex], k: int = 4, limit: int = 50, max_queries: int | None = 4000, seed: int = 0
) -> list[int]:
    """Dataset indices of the queries on which the runs disagree most, most first.

    Each image present in every index queries each index (itself excluded); on a
    large split, a seeded sample of ``max_queries`` of them (None: all), which
    keeps this to a second on 60,000 images while still finding plenty.
    Queries are ranked by the spread (max - min over the runs) of precision@k,
    ties by the spread of recall@1, then by dataset index. Queries on which all
    runs score the same on both are left out, so the list can be shorter than
    ``limit`` (empty for fewer than two indexes, or runs that agree everywhere).
    """
    if limit < 1 or len(indexes) < 2:
        return []
    datasets = {(index.split.dataset.name, len(index.split.dataset)) for index in indexes}
    if len(datasets) > 1:
        raise ValueError("the runs use different datasets; their images cannot be compared")
    common = indexes[0].embeddings.indices
    for index in indexes[1:]:
        common = np.intersect1d(common, index.embeddings.indices)
    common = np.unique(common)
    if len(common) == 0:
        return []
    if max_queries is not None and len(common) > max_queries:
        common = np.sort(np.random.default_rng(seed).choice(common, size=max_queries, replace=False))
    k = _checked_k(k, min(len(index) for index in indexes) - 1)
    precisions, recalls = [], []
    for index in indexes:
        rows = index.rows_of(common)
        _, neighbours = _search_excluding_self(index.index, index.query_vectors(rows), rows, k)
        hits = index.embeddings.labels[neighbours] == index.embeddings.labels[rows][:, None]
        precisions.append(hits.mean(axis=1))
        recalls.append(hits[:, 0].astype(np.float64))
    precision_spread = np.ptp(np.stack(precisions), axis=0)
    recall_spread = np.ptp(np.stack(recalls), axis=0)
    order = np.lexsort((common, -recall_spread, -precision_spread))
    order = [i for i in order if precision_spread[i] > 0 or recall_spread[i] > 0]
    return [int(common[i]) for i in order[:limit]]


def telling_query(indexes: list[RunIndex], candidates: np.ndarray, batch: int = 256, limit: int = 1024) -> int | None:
    """The first of ``candidates`` (dataset indices, in the order given) whose nearest neighbour is of its class in
    one run and not in another; failing that, the first every run gets right; failing that, the first candidate.

    A page opening on it shows the runs differing (or, where they never do, a success) rather than an image every
    run gets wrong. Only the first ``limit`` candidates present in every index are looked at, a batch at a time.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    for index in indexes:
        candidates = candidates[np.isin(candidates, index.embeddings.indices)]
    candidates = candidates[:limit]
    if len(candidates) == 0:
        return None
    first_all_right = None
    for start in range(0, len(candidates), batch):
        chunk = candidates[start : start + batch]
        verdicts = np.stack([_nearest_is_right(index, chunk) for index in indexes])
        split = verdicts.any(axis=0) & ~verdicts.all(axis=0)
        if split.any():
            return int(chunk[np.argmax(split)])
        if first_all_right is None and verdicts.all(axis=0).any():
            first_all_right = int(chunk[np.argmax(verdicts.all(axis=0))])
    return first_all_right if first_all_right is not None else int(candidates[0])


def _nearest_is_right(index: RunIndex, dataset_indices: np.ndarray) -> np.ndarray:
    """Per image: whether its nearest other image in ``index`` is of its class (recall@1 of each query)."""
    rows = index.rows_of(dataset_indices)
    _, neighbours = _search_excluding_self(index.index, index.query_vectors(rows), rows, _checked_k(1, len(index) - 1))
    return index.embeddings.labels[neighbours[:, 0]] == index.embeddings.labels[rows]


_threads_lock = threading.Lock()


@contextmanager
def _one_thread():
    """One query is one pass over the gallery: faiss's OpenMP threads only fight over a busy CPU (measured: p95 of a
    60,000 x 512 search 78 ms with one thread against 84 ms with two, on 2 shared cores), so single queries use one."""
    with _threads_lock:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def _checked_k(k: int, largest: int) -> int:
    """``k`` as an int clipped to what the index holds; ValueError for k < 1."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if largest < 1:
        raise ValueError("the index holds no other image to return")
    return min(int(k), largest)


def _search_excluding_self(
    index: faiss.IndexFlatIP, queries: np.ndarray, self_rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` rows per query without the query's own row (dropped by row, not by similarity)."""
    similarities, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    is_self = rows == self_rows[:, None]
    # Exact duplicates can push the query out of its own top k+1: then the last entry goes.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return similarities[keep].reshape(-1, k), rows[keep].reshape(-1, k)
