"""Nearest-neighbour retrieval for the app: cached embeddings, one faiss index per run, queries.

* ``weights_digest`` names a run's weights by content (sha256 of
  ``model.safetensors``), so caches survive renames and notice retraining.
* ``cached_embeddings`` embeds a split once (in chunks, with progress) and keeps it
  on disk as a memory-mappable ``.npy`` (no pickles), keyed by that digest, the split part and everything in the
  config that decides which images are embedded and how.
* ``RunIndex`` answers "which images does this run put next to that one?",
  for an image of the split or an uploaded one; ``disagreement_queries`` finds
  the images on which several runs differ most.

Similarity is cosine: embeddings are L2-normalised and searched exactly with a
faiss ``IndexFlatIP``, as in ``ecaml.eval.metrics``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch
from PIL import Image

from ecaml import __version__
from ecaml.data import ClassSplit, SPLIT_PARTS
from ecaml.data.images import _convert as convert_image_mode
from ecaml.data.imported import IMPORTED_DATASET, read_vectors
from ecaml.eval.evaluate import Embeddings, embed_indices, eval_transform, split_for
from ecaml.eval.metrics import l2_normalise
from ecaml.store.atomic import write_cache_file
from ecaml.store.run_files import Run, RunError, input_channels, open_safetensors

# Bumped when the layout of a cached embeddings file changes; old files are then ignored.
EMBEDDINGS_CACHE_FORMAT = 2  # 2: vectors in a memory-mappable .npy beside a .rows.npz
CACHE_ENV = "ECAML_CACHE_DIR"

_digest_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$ECAML_CACHE_DIR`` when set, else ``~/.cache/ecaml``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ecaml"


def weights_digest(run: Run) -> str:
    """sha256 (hex) of the run's weights file (an imported run's vectors), remembered per (path, mtime, size)."""
    path = run.weights_path
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RunError(f"{Path(run.path).name}: missing {run.weights_file}") from None
    key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
    with _digest_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _digest_lock:
        _digests[key] = value
    return value


def data_identity(run: Run) -> dict:
    """The config fields that decide which images a split holds and how they are fed to the model."""
    config = run.config
    return {
        "dataset": config.dataset,
        "data_root": str(Path(config.data_root).expanduser().resolve()) if config.data_root else None,
        "val_classes": config.val_classes,
        "split_seed": config.split_seed,
        "image_size": config.image_size,
        "backbone": config.backbone,
        "channels": input_channels(config),
    }


def embeddings_key(run: Run, part: str) -> str:
    """The cache key of a run's embeddings of ``part``: weights digest, part and data identity."""
    record = {
        "format": EMBEDDINGS_CACHE_FORMAT,
        "ecaml": __version__,
        "weights": weights_digest(run),
        "part": part,
        "data": data_identity(run),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def embeddings_cache_path(run: Run, part: str, cache_dir: Path | None = None) -> Path:
    """Where the run's embeddings of ``part`` are cached: ``<key>.npy`` (the vectors, memory-mappable) plus
    ``<key>.rows.npz`` (labels and dataset indices) under ``<cache dir>/embeddings``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / "embeddings" / f"{embeddings_key(run, part)}.npy"


def is_embedded(run: Run, part: str = "unseen", cache_dir: Path | None = None) -> bool:
    """Whether ``cached_embeddings`` would only read its cache (cheap: the weights digest and two small reads)."""
    return weights_match_file(run) and _read_embeddings(embeddings_cache_path(run, part, cache_dir)) is not None


def cached_embeddings(
    run: Run,
    part: str = "unseen",
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str | None = None,
    split: ClassSplit | None = None,
) -> Embeddings:
    """The run's L2-normalised embeddings of ``part``, from the disk cache or computed (and stored).

    Read from the cache, the vectors are a read-only memory map of the cache file,
    so several pages (and several runs) share one copy in the page cache instead
    of each holding its own. Computed, they are embedded in chunks of
    ``EMBED_CHUNK`` images and ``progress(done, total)`` is called after each, so
    a background job can show how far it got. ``device``: where to run the model
    (default: a CUDA GPU when present, the model's own device otherwise; the run's
    model itself is never moved). A cache file that cannot be read or does not
    hold what it should is ignored and rewritten. A ``Run`` whose weights file
    has changed since it was loaded (the run is still training) is embedded but
    not cached, since the digest would name other weights than the ones in memory.
    ``split``: the run's class split when the caller holds it already (loading a
    large image folder checks every image), else it is loaded.
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    if run.kind == IMPORTED_DATASET:  # the stored vectors are the embeddings: nothing to compute or cache
        return imported_embeddings(run, part, split)
    path = embeddings_cache_path(run, part, cache_dir)
    cacheable = weights_match_file(run)
    if cacheable:
        loaded = _read_embeddings(path)
        if loaded is not None:
            return loaded
    embeddings = _embed_in_chunks(run, part, progress, device, split or split_for(run.config))
    if cacheable:
        _write_embeddings(path, embeddings)
    return embeddings


EMBED_CHUNK = 4096


def imported_embeddings(run: Run, part: str, split: ClassSplit | None = None) -> Embeddings:
    """An imported run's stored vectors of ``part`` (a read-only memory map when the part is every row)."""
    split = split or split_for(run.config)
    rows = split.indices(part)
    if len(rows) == 0:
        raise ValueError(f"the {part!r} part of {run.name} is empty")
    vectors = read_vectors(run.path)
    if len(vectors) != len(split.dataset):
        raise RunError(f"{run.name}: {run.weights_file} holds {len(vectors)} rows, its items {len(split.dataset)}")
    chosen = vectors if len(rows) == len(vectors) else np.ascontiguousarray(vectors[rows])
    return Embeddings(chosen, split.dataset.labels[rows], rows.astype(np.int64))


def _embed_in_chunks(run: Run, part: str, progress, device, split: ClassSplit) -> Embeddings:
    """Embed the split chunk by chunk (progress after each) on ``device``; a GPU gets its own copy of the model."""
    indices = split.indices(part)
    if len(indices) == 0:
        raise ValueError(f"the {part!r} split of {run.config.dataset} is empty")
    model = run.model
    own_device = next(model.parameters()).device
    target = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else own_device
    )
    if target != own_device:
        model = copy.deepcopy(model).to(target)  # the run's model stays where the app keeps it
    channels = input_channels(run.config)
    parts = []
    for start in range(0, len(indices), EMBED_CHUNK):
        parts.append(embed_indices(model, split, indices[start : start + EMBED_CHUNK], run.config, channels, target))
        if progress is not None:
            progress(min(start + EMBED_CHUNK, len(indices)), len(indices))
    vectors = l2_normalise(np.concatenate([p.vectors for p in parts]).astype(np.float32, copy=False))
    labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
    rows = np.concatenate([p.indices for p in parts]).astype(np.int64)
    return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), labels, rows)


def _rows_path(vectors_path: Path) -> Path:
    return vectors_path.with_suffix(".rows.npz")


def _write_embeddings(path: Path, embeddings: Embeddings) -> None:
    """The rows file first, then the vectors (the commit: a reader needs both, and checks that they agree)."""
    rows = io.BytesIO()
    np.savez(rows, labels=embeddings.labels, indices=embeddings.indices)
    write_cache_file(_rows_path(path), rows.getvalue())
    vectors = io.BytesIO()
    np.save(vectors, np.ascontiguousarray(embeddings.vectors, dtype=np.float32), allow_pickle=False)
    write_cache_file(path, vectors.getvalue())


def weights_match_file(run: Run) -> bool:
    """Whether ``model.safetensors`` still holds the checkpoint the Run was loaded from (same step).

    False while the run trains on and has committed a newer checkpoint: caching
    what the in-memory model computes under the new file's digest would be wrong.
    """
    return run.kind == IMPORTED_DATASET or _weights_step_on_disk(run) == run.step


def _weights_step_on_disk(run: Run) -> int | None:
    try:
        with open_safetensors(run.weights_path) as handle:
            return int((handle.metadata() or {}).get("step", "0"))
    except (RunError, ValueError, OSError):  # an unreadable file just means "do not cache"
        return None


# The finiteness check reads every vector once; it is remembered per file (path, mtime, size) in this process.
_checked_files: set[tuple[str, int, int]] = set()


def rows_well_formed(labels: np.ndarray, indices: np.ndarray) -> bool:
    """Whether a cache file's rows are usable: some, each with an integer class and an integer dataset index."""
    return (
        labels.ndim == 1
        and len(labels) > 0
        and indices.shape == labels.shape
        and np.issubdtype(labels.dtype, np.integer)
        and np.issubdtype(indices.dtype, np.integer)
    )


def _read_embeddings(path: Path) -> Embeddings | None:
    """The cached embeddings (vectors memory-mapped, read-only), or None when missing, unreadable or inconsistent."""
    rows_path = _rows_path(path)
    if not path.is_file() or not rows_path.is_file():
        return None
    try:
        with np.load(rows_path, allow_pickle=False) as archive:
            labels, indices = archive["labels"], archive["indices"]
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        info = path.stat()
    except Exception:  # noqa: BLE001 - any unreadable cache file is recomputed
        return None
    count = len(labels)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != count:
        return None
    if not rows_well_formed(labels, indices):
        return None
    stamp = (str(path), info.st_mtime_ns, info.st_size)
    if stamp not in _checked_files:
        if not all(np.isfinite(vectors[i : i + 65536]).all() for i in range(0, count, 65536)):
            return None
        _checked_files.add(stamp)
    return Embeddings(vectors, labels.astype(np.int64), indices.astype(np.int64))


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
