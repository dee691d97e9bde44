"""Embeddings of a run's split, computed once and kept on disk for every reader (retrieval, projections, the app).

* ``weights_digest`` names a run's weights by content (sha256 of
  ``model.safetensors``), so caches survive renames and notice retraining.
* ``cached_embeddings`` embeds a split once (in chunks, with progress) and keeps it
  on disk as a memory-mappable ``.npy`` (no pickles), keyed by that digest, the split part and everything in the
  config that decides which images are embedded and how; an imported run's vectors are read as they are.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ecaml import __version__
from ecaml.data import ClassSplit, SPLIT_PARTS
from ecaml.data.imported import IMPORTED_DATASET, read_items, read_vectors
from ecaml.eval.evaluate import Embeddings, embed_indices, split_for
from ecaml.eval.metrics import l2_normalise
from ecaml.runs import Run, input_channels
from ecaml.store.atomic import write_cache_file
from ecaml.store.paths import default_cache_dir
from ecaml.store.run_files import RunError, open_safetensors


# Bumped when the layout of a cached embeddings file changes; old files are then ignored.
EMBEDDINGS_CACHE_FORMAT = 2  # 2: vectors in a memory-mappable .npy beside a .rows.npz


_digest_lock = threading.Lock()


_digests: dict[tuple[str, int, int], str] = {}


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
    positions = _imported_rows(run, rows, len(split.dataset), len(vectors), part)
    chosen = vectors if np.array_equal(positions, np.arange(len(vectors))) else np.ascontiguousarray(vectors[positions])
    return Embeddings(chosen, split.dataset.labels[rows], rows.astype(np.int64))


def _imported_rows(run: Run, wanted: np.ndarray, items: int, stored: int, part: str) -> np.ndarray:
    """The rows of an imported run's vectors that hold dataset images ``wanted``: the same numbers for an import of
    its own items, looked up by each row's dataset index for one over a trained run's images (--same-items-as)."""
    if run.config.dataset == IMPORTED_DATASET:
        if stored != items:
            raise RunError(f"{run.name}: {run.weights_file} holds {stored} rows, its items {items}")
        return wanted
    indices = read_items(run.path).dataset_indices
    if indices is None or len(indices) != stored:
        raise RunError(f"{run.name}: {run.weights_file} holds {stored} rows without their dataset indices")
    order = np.argsort(indices, kind="stable")
    found = np.searchsorted(indices[order], wanted).clip(max=len(order) - 1)
    if not np.array_equal(indices[order][found], wanted):
        raise ValueError(f"the {part!r} part of {run.name} was not imported (it holds {run.config.dataset}'s unseen images)")
    return order[found]


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
