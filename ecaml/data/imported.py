"""Reading an imported run's items: vectors made elsewhere, with their labels, split and image paths.

An imported run directory (written by ``ecaml.serve.imports``) holds::

    imported.json   manifest: kind "imported", format, source file, sizes, digests, image root
    vectors.npy     float32 [N, D], L2-normalised (memory-mapped when read)
    items.npz       labels int64 [N], class_names str [C], optional split str [N], optional paths str [N]
    metrics.json    our evaluator's metrics of the unseen part (the whole set without a split)

Its items become an ``ImageSet`` (image files under the image root when paths
were given, else a blank 1x1 image per item) and a ``ClassSplit`` whose parts
are the rows the file marked seen / val / unseen, so every page reads an
imported run like any other: only where the vectors come from differs.
Nothing here unpickles: ``np.load(..., allow_pickle=False)`` throughout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecaml.data.base import ClassSplit, DatasetError, ImageSet
from ecaml.store.run_files import IMPORTED_MANIFEST as MANIFEST_FILE, IMPORTED_VECTORS as VECTORS_FILE

IMPORTED_DATASET = "imported"
ITEMS_FILE = "items.npz"
IMPORT_FORMAT = 1
SPLIT_NAMES = ("seen", "val", "unseen")
MAX_MANIFEST_BYTES = 1024 * 1024


class ImportInputError(ValueError):
    """An input that cannot be imported (embeddings, a model file, an alignment), with a one-line reason."""


# An import of a trained run's unseen images (``ecaml.serve.import_alignment``): the manifest names the run and its
# config ({"run": name, "config": config.json}); items.npz holds each row's index in that run's data set.
SAME_ITEMS_KEY, DATASET_INDICES = "same_items_as", "dataset_indices"


@dataclass
class ImportedItems:
    labels: np.ndarray  # int64 codes into class_names
    class_names: list[str]
    split: np.ndarray | None  # str per row: seen / val / unseen
    paths: np.ndarray | None  # str per row, relative to image_root
    image_root: str | None
    # Row i's index in a trained run's data set, for an import of that run's items (``--same-items-as``), else None.
    dataset_indices: np.ndarray | None = None


def is_imported_run(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(data.decode("utf-8")) if len(data) <= MAX_MANIFEST_BYTES else None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{Path(folder).name}: {MANIFEST_FILE} cannot be read ({error.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != IMPORTED_DATASET:
        raise DatasetError(f"{Path(folder).name}: {MANIFEST_FILE} is not the manifest of an imported run")
    if not isinstance(manifest.get("format"), int) or manifest["format"] > IMPORT_FORMAT:
        raise DatasetError(f"{Path(folder).name}: imported-run format {manifest.get('format')!r} is not one this ecaml reads")
    return manifest


def read_items(folder: str | Path) -> ImportedItems:
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        with np.load(folder / ITEMS_FILE, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(f"{folder.name}: {ITEMS_FILE} cannot be read ({_first_line(error)})") from None
    labels, names = arrays.get("labels"), arrays.get("class_names")
    if labels is None or names is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{folder.name}: {ITEMS_FILE} has no valid labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DatasetError(f"{folder.name}: {ITEMS_FILE} has labels outside its class names")
    indices = arrays.get(DATASET_INDICES)
    if indices is not None and (indices.shape != labels.shape or not np.issubdtype(indices.dtype, np.integer)):
        raise DatasetError(f"{folder.name}: {ITEMS_FILE} has dataset indices that do not match its rows")
    return ImportedItems(labels.astype(np.int64), [str(n) for n in names], arrays.get("split"), arrays.get("paths"),
                         manifest.get("image_root"), None if indices is None else indices.astype(np.int64))


def read_vectors(folder: str | Path) -> np.ndarray:
    """The run's L2-normalised float32 vectors, memory-mapped read-only."""
    path = Path(folder) / VECTORS_FILE
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{Path(folder).name}: {VECTORS_FILE} cannot be read ({_first_line(error)})") from None
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise DatasetError(f"{Path(folder).name}: {VECTORS_FILE} is not a float32 [N, D] array")
    return vectors


def imported_split(folder: str | Path) -> ClassSplit:
    """The items as a ClassSplit: seen rows train, val rows validation, unseen rows (all rows without a split) test."""
    folder = Path(folder)
    manifest, items = read_manifest(folder), read_items(folder)
    count = len(items.labels)
    if items.paths is not None and items.image_root:
        root = Path(items.image_root)
        dataset = ImageSet(_dataset_name(manifest), items.labels, items.class_names, 3,
                           paths=[str(root / p) for p in items.paths])
    else:  # no images: a blank one per item, so pages that show images show a placeholder
        dataset = ImageSet(_dataset_name(manifest), items.labels, items.class_names, 1,
                           arrays=np.full((count, 1, 1), 200, np.uint8))
    classes = {name: sorted({int(c) for c in items.labels[_rows(items, name)]}) for name in SPLIT_NAMES}
    return ClassSplit(dataset, classes["seen"], classes["val"], classes["unseen"])


def _rows(items: ImportedItems, name: str) -> np.ndarray:
    if items.split is None:
        return np.arange(len(items.labels)) if name == "unseen" else np.zeros(0, np.int64)
    return np.flatnonzero(items.split == name)


def _dataset_name(manifest: dict) -> str:
    return f"{IMPORTED_DATASET}:{manifest.get('items_digest', '')[:16]}"


def items_identity(folder: str | Path) -> str:
    """What two imported runs must share to be the same items (labels, split, paths, image root)."""
    return str(read_manifest(folder).get("items_digest", ""))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else error.__class__.__name__
