"""Nearest-neighbour retrieval for the app: cached embeddings, one faiss index per run, queries.

* ``weights_digest`` names a run's weights by content (sha256 of
  ``model.safetensors``), so caches survive renames and notice retraining.
* ``cached_embeddings`` embeds a split once and keeps it on disk as ``.npz``
  (no pickles), keyed by that digest, the split part and everything in the
  config that decides which images are embedded and how.
* ``RunIndex`` answers "which images does this run put next to that one?",
  for an image of the split or an uploaded one; ``disagreement_queries`` finds
  the images on which several runs differ most.

Similarity is cosine: embeddings are L2-normalised and searched exactly with a
faiss ``IndexFlatIP``, as in ``ecaml.metrics``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from ecaml import __version__
from ecaml.data import ClassSplit, SPLIT_PARTS
from ecaml.data.images import _convert as convert_image_mode
from ecaml.evaluate import Embeddings, embed_part, eval_transform, split_for
from ecaml.metrics import l2_normalise
from ecaml.runs import WEIGHTS_FILE, Run, RunError, atomic_write_bytes, input_channels, open_safetensors

# Bumped when the layout of a cached embeddings file changes; old files are then ignored.
EMBEDDINGS_CACHE_FORMAT = 1
CACHE_ENV = "ECAML_CACHE_DIR"

_digest_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$ECAML_CACHE_DIR`` when set, else ``~/.cache/ecaml``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ecaml"


def weights_digest(run: Run) -> str:
    """sha256 (hex) of the run's ``model.safetensors``, remembered per (path, mtime, size) in this process."""
    path = Path(run.path) / WEIGHTS_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RunError(f"{Path(run.path).name}: missing {WEIGHTS_FILE}") from None
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


def cached_embeddings(run: Run, part: str = "unseen", cache_dir: Path | None = None) -> Embeddings:
    """The run's L2-normalised embeddings of ``part``, from the disk cache or computed (and stored).

    The model is run where its parameters are (the CPU for a loaded run). A cache
    file that cannot be read or does not hold what it should is ignored and
    rewritten. A ``Run`` whose weights file has changed since it was loaded (the
    run is still training) is embedded but not cached, since the digest would
    name other weights than the ones in memory.
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / "embeddings" / f"{embeddings_key(run, part)}.npz"
    cacheable = weights_match_file(run)
    if cacheable:
        loaded = _read_embeddings(path)
        if loaded is not None:
            return loaded
    device = next(run.model.parameters()).device
    embeddings = embed_part(run.model, split_for(run.config), part, run.config, input_channels(run.config), device)
    embeddings = Embeddings(
        l2_normalise(embeddings.vectors), embeddings.labels.astype(np.int64), embeddings.indices.astype(np.int64)
    )
    if cacheable:
        buffer = io.BytesIO()
        np.savez(buffer, vectors=embeddings.vectors, labels=embeddings.labels, indices=embeddings.indices)
        write_cache_file(path, buffer.getvalue())
    return embeddings


def write_cache_file(path: Path, data: bytes) -> None:
    """Atomically write a cache file; a cache that cannot be written (read-only, full disk) only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as error:
        warnings.warn(f"could not write the cache file {path}: {error}", stacklevel=3)


def weights_match_file(run: Run) -> bool:
    """Whether ``model.safetensors`` still holds the checkpoint the Run was loaded from (same step).

    False while the run trains on and has committed a newer checkpoint: caching
    what the in-memory model computes under the new file's digest would be wrong.
    """
    return _weights_step_on_disk(run) == run.step


def _weights_step_on_disk(run: Run) -> int | None:
    try:
        with open_safetensors(Path(run.path) / WEIGHTS_FILE) as handle:
            return int((handle.metadata() or {}).get("step", "0"))
    except (RunError, ValueError, OSError):  # an unreadable file just means "do not cache"
        return None


def _read_embeddings(path: Path) -> Embeddings | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            vectors, labels, indices = archive["vectors"], archive["labels"], archive["indices"]
    except Exception:  # noqa: BLE001 - any unreadable cache file is recomputed
        return None
    count = len(labels)
    if (
        vectors.dtype != np.float32
        or vectors.ndim != 2
        or vectors.shape[0] != count
        or labels.ndim != 1
        or indices.shape != (count,)
        or not np.issubdtype(labels.dtype, np.integer)
        or not np.issubdtype(indices.dtype, np.integer)
        or count == 0
        or not np.isfinite(vectors).all()
    ):
        return None
    return Embeddings(np.ascontiguousarray(vectors), labels.astype(np.int64), indices.astype(np.int64))


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
        vectors = l2_normalise(embeddings.vectors)
        self.embeddings = Embeddings(vectors, np.asarray(embeddings.labels, np.int64), np.asarray(embeddings.indices, np.int64))
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self._row_of = {int(index): row for row, index in enumerate(self.embeddings.indices)}

    def __len__(self) -> int:
        return len(self.embeddings.labels)

    @property
    def run_name(self) -> str:
        return self.run.name

    def row_of(self, dataset_index: int) -> int:
        """The embedding row of a dataset index; ValueError when that image is not in this split."""
        try:
            return self._row_of[int(dataset_index)]
        except KeyError:
            raise ValueError(f"image {dataset_index} is not in the {self.part} split of {self.run_name}") from None

    def query_by_index(self, dataset_index: int, k: int = 8) -> QueryResult:
        """The ``k`` nearest other images of the split to image ``dataset_index`` (itself excluded)."""
        started = time.perf_counter()
        row = self.row_of(dataset_index)
        k = _checked_k(k, len(self) - 1)
        similarities, rows = _search_excluding_self(self.index, self.embeddings.vectors[row : row + 1], np.array([row]), k)
        query_label = int(self.embeddings.labels[row])
        neighbours = self._neighbours(similarities[0], rows[0], query_label)
        return QueryResult(self.run_name, neighbours, time.perf_counter() - started)

    def query_by_image(self, image: Image.Image, k: int = 8) -> QueryResult:
        """The ``k`` nearest images of the split to any image, embedded with the run's model and eval transform."""
        started = time.perf_counter()
        k = _checked_k(k, len(self))
        vector = self.embed_image(image)
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


def disagreement_queries(indexes: list[RunIndex], k: int = 4, limit: int = 50) -> list[int]:
    """Dataset indices of the queries on which the runs disagree most, most first.

    Each image present in every index queries each index (itself excluded).
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
    k = _checked_k(k, min(len(index) for index in indexes) - 1)
    precisions, recalls = [], []
    for index in indexes:
        rows = np.array([index.row_of(i) for i in common], dtype=np.int64)
        _, neighbours = _search_excluding_self(index.index, index.embeddings.vectors[rows], rows, k)
        hits = index.embeddings.labels[neighbours] == index.embeddings.labels[rows][:, None]
        precisions.append(hits.mean(axis=1))
        recalls.append(hits[:, 0].astype(np.float64))
    precision_spread = np.ptp(np.stack(precisions), axis=0)
    recall_spread = np.ptp(np.stack(recalls), axis=0)
    order = np.lexsort((common, -recall_spread, -precision_spread))
    order = [i for i in order if precision_spread[i] > 0 or recall_spread[i] > 0]
    return [int(common[i]) for i in order[:limit]]


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
