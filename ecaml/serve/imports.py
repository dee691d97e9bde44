"""Importing embeddings made elsewhere as a run directory of kind "imported".

``import_embeddings(FILE, OUT)`` reads a ``.npz`` (arrays ``embeddings`` [N, D]
float, ``labels`` [N] int or str, optional ``split`` [N] of seen / unseen / val,
optional ``paths`` [N] under an image root) or a ``.parquet`` file with the same
columns, checks every array, scores the unseen part (the whole set without a
split) with our evaluator (``ecaml.eval.evaluate.score``: the keys of a trained run's
metrics.json) and writes the run directory (layout: ``ecaml.data.imported``).

Safety: ``.npz`` files are read with ``allow_pickle=False`` (an object array is
refused by name), sizes are checked against the memory available before any
array is read, and the run directory is written into a temporary folder beside
``OUT`` and renamed into place: it appears whole or not at all. Every refusal is
an ``ImportInputError`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecaml import __version__
from ecaml.data.imported import (
    IMPORT_FORMAT, IMPORTED_DATASET, ITEMS_FILE, MANIFEST_FILE, SPLIT_NAMES, VECTORS_FILE, ImportInputError,
)
from ecaml.eval.metrics import l2_normalise
from ecaml.store.atomic import atomic_write_bytes, atomic_write_json
from ecaml.store.run_files import HISTORY_FILE, METRICS_FILE, STATUS_FILE

COLUMNS = ("embeddings", "labels", "split", "paths")
DEFAULT_RECALL_KS = (1, 2, 4, 8)
# An import holds the file's vectors, a float32 copy and the search's working set at once.
MEMORY_FACTOR = 3


@dataclass
class ImportedSet:
    vectors: np.ndarray  # float32 [N, D], L2-normalised
    labels: np.ndarray  # int64 codes into class_names
    class_names: list[str]
    split: np.ndarray | None
    paths: np.ndarray | None


# ----------------------------------------------------------------------------- reading


def read_columns(source: str | Path, memory_budget: int | None = None) -> dict[str, np.ndarray]:
    """The file's columns as arrays, after checking that they fit in ``memory_budget`` bytes (default: available)."""
    source = Path(source)
    if not source.is_file():
        raise ImportInputError(f"{source.name}: no such file")
    budget = available_memory() if memory_budget is None else memory_budget
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return _read_npz(source, budget)
    if suffix == ".parquet":
        return _read_parquet(source, budget)
    raise ImportInputError(f"{source.name}: import reads .npz or .parquet files, not {suffix or 'files without a suffix'}")


def _read_npz(source: Path, budget: int) -> dict[str, np.ndarray]:
    try:
        archive = np.load(source, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ImportInputError(f"{source.name}: not a readable .npz file ({_first_line(error)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ImportInputError(f"{source.name}: a single .npy array, not an .npz archive of named arrays")
    with archive:
        if "embeddings" not in archive.files:
            raise ImportInputError(f"{source.name}: no 'embeddings' array (it holds: {', '.join(archive.files) or 'nothing'})")
        _check_fits(source, _npz_member_bytes(source, "embeddings"), budget)
        columns = {}
        for name in COLUMNS:
            if name not in archive.files:
                continue
            try:
                columns[name] = archive[name]
            except ValueError as error:
                if "allow_pickle" in str(error):
                    raise ImportInputError(
                        f"{source.name}: '{name}' is a pickled object array; refused (ecaml never unpickles): "
                        f"save it as numbers or fixed-width strings, e.g. np.asarray({name}, dtype=str)"
                    ) from None
                raise ImportInputError(f"{source.name}: '{name}' cannot be read ({_first_line(error)})") from None
            except (OSError, zipfile.BadZipFile, EOFError) as error:
                raise ImportInputError(f"{source.name}: '{name}' cannot be read ({_first_line(error)})") from None
    return columns


def _npz_member_bytes(source: Path, name: str) -> int:
    """The in-memory size of array ``name`` from its .npy header, before reading it."""
    try:
        with zipfile.ZipFile(source) as archive, archive.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ImportInputError(f"{source.name}: '{name}' has no readable header ({_first_line(error)})") from None
    return int(np.prod(shape, dtype=np.int64)) * max(dtype.itemsize, 4)


def _read_parquet(source: Path, budget: int) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as parquet

        handle = parquet.ParquetFile(source)
        _check_fits(source, handle.metadata.serialized_size + _parquet_bytes(handle), budget)
        present = [name for name in COLUMNS if name in handle.schema_arrow.names]
        table = handle.read(columns=present)
    except ImportInputError:
        raise
    except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds for a damaged or foreign file
        raise ImportInputError(f"{source.name}: not a readable .parquet file ({_first_line(error)})") from None
    if "embeddings" not in present:
        raise ImportInputError(f"{source.name}: no 'embeddings' column")
    columns = {}
    for name in present:
        column = table.column(name).combine_chunks()
        if name == "embeddings":
            columns[name] = _parquet_matrix(source, column)
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
            if columns[name].dtype == object:  # strings: fixed-width unicode, as the .npz route gives
                columns[name] = np.asarray([str(v) if v is not None else "" for v in columns[name]], dtype=str)
    return columns


def _parquet_bytes(handle) -> int:
    return sum(handle.metadata.row_group(i).total_byte_size for i in range(handle.metadata.num_row_groups))


def _parquet_matrix(source: Path, column) -> np.ndarray:
    """A list<float> (or fixed_size_list) column as an [N, D] array; rows of different lengths are refused."""
    import pyarrow as pa

    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)):
        raise ImportInputError(f"{source.name}: 'embeddings' must be a list-of-floats column, got {column.type}")
    if column.null_count:
        raise ImportInputError(f"{source.name}: 'embeddings' has {column.null_count} empty rows")
    lengths = np.asarray(column.value_lengths()) if not pa.types.is_fixed_size_list(column.type) else None
    if lengths is not None and len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ImportInputError(f"{source.name}: 'embeddings' row {row} has {lengths[row]} values, row 0 {lengths[0]}")
    width = int(lengths[0]) if lengths is not None and len(lengths) else getattr(column.type, "list_size", 0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), width)


def _check_fits(source: Path, needed_bytes: int, budget: int) -> None:
    if needed_bytes * MEMORY_FACTOR > budget:
        raise ImportInputError(
            f"{source.name}: too large for memory (its vectors need about {needed_bytes * MEMORY_FACTOR / 2**30:.1f} "
            f"GiB to import, {budget / 2**30:.1f} GiB is available)"
        )


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or a generous guess where /proc is missing."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 16 * 2**30


# ----------------------------------------------------------------------------- checking


def validated(columns: dict[str, np.ndarray], name: str = "input") -> ImportedSet:
    """The columns checked and normalised; every problem is an ImportInputError naming the column."""
    vectors = _checked_vectors(columns["embeddings"], name)
    count = len(vectors)
    for column in ("labels", "split", "paths"):
        if column in columns:
            array = np.asarray(columns[column])
            if array.ndim != 1 or len(array) != count:
                raise ImportInputError(f"{name}: '{column}' has shape {array.shape}, expected ({count},) like the embeddings")
    if "labels" not in columns:
        raise ImportInputError(f"{name}: no 'labels' (one class per row, int or str)")
    class_names, labels = _checked_labels(columns["labels"], name)
    split = _checked_split(columns.get("split"), labels, class_names, name)
    paths = _checked_paths(columns.get("paths"), name)
    scored = np.flatnonzero(split == "unseen") if split is not None else np.arange(count)
    if len(np.unique(labels[scored])) < 2:
        raise ImportInputError(f"{name}: the {'unseen part' if split is not None else 'set'} holds one class; "
                               "retrieval needs at least 2")
    return ImportedSet(vectors, labels, class_names, split, paths)


def _checked_vectors(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ImportInputError(f"{name}: 'embeddings' must be 2-D [N, D], got shape {array.shape}")
    if array.shape[1] == 0:
        raise ImportInputError(f"{name}: 'embeddings' have D = 0 dimensions")
    if array.shape[0] < 2:
        raise ImportInputError(f"{name}: 'embeddings' hold {array.shape[0]} rows; retrieval needs at least 2")
    if not np.issubdtype(array.dtype, np.floating):
        raise ImportInputError(f"{name}: 'embeddings' must be floating point, got {array.dtype}")
    vectors = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ImportInputError(f"{name}: 'embeddings' row {int(np.flatnonzero(~finite)[0])} holds NaN or inf "
                               f"({int((~finite).sum())} rows in all); also check for values beyond float32's range")
    norms = np.linalg.norm(vectors, axis=1)
    if (norms == 0).any():
        raise ImportInputError(f"{name}: 'embeddings' row {int(np.flatnonzero(norms == 0)[0])} is all zeros (no direction)")
    return l2_normalise(vectors)


def _checked_labels(array: np.ndarray, name: str) -> tuple[list[str], np.ndarray]:
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype.kind == "U"):
        raise ImportInputError(f"{name}: 'labels' must be integers or strings, got {array.dtype}")
    values, codes = np.unique(array, return_inverse=True)
    return [str(v) for v in values], codes.astype(np.int64)


def _checked_split(array, labels: np.ndarray, class_names: list[str], name: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.dtype.kind != "U":
        raise ImportInputError(f"{name}: 'split' must be strings ({', '.join(SPLIT_NAMES)}), got {array.dtype}")
    unknown = sorted(set(np.unique(array)) - set(SPLIT_NAMES))
    if unknown:
        raise ImportInputError(f"{name}: 'split' holds {unknown[0]!r}; use {', '.join(SPLIT_NAMES)}")
    # Parts are sets of classes (unseen classes are never trained on): a class in two parts is refused.
    parts_per_class = np.zeros((len(class_names), len(SPLIT_NAMES)), bool)
    for position, part in enumerate(SPLIT_NAMES):
        parts_per_class[labels[array == part], position] = True
    mixed = np.flatnonzero(parts_per_class.sum(axis=1) > 1)
    if len(mixed):
        raise ImportInputError(f"{name}: class {class_names[mixed[0]]!r} is in more than one split part; "
                               "a class belongs to one of seen, val, unseen")
    return array.astype(str)


def _checked_paths(array, name: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.dtype.kind != "U":
        raise ImportInputError(f"{name}: 'paths' must be strings, got {array.dtype}")
    for row, path in enumerate(array):  # lexical: an image path may not leave the image root
        parts = Path(path).parts
        if not path or "\0" in path or Path(path).is_absolute() or ".." in parts:
            raise ImportInputError(f"{name}: 'paths' row {row} ({path[:80]!r}) is outside the image root "
                                   "(paths must be relative, without '..')")
    return array


# ----------------------------------------------------------------------------- writing


def import_embeddings(
    source: str | Path,
    out: str | Path,
    image_root: str | Path | None = None,
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS,
    memory_budget: int | None = None,
    timings: dict[str, float] | None = None,
    same_items_as: str | Path | None = None,
) -> Path:
    """Read, check, score and write ``source`` as the imported run directory ``out``; returns its path.

    ``same_items_as``: a trained run whose unseen images the rows are (``ecaml.serve.import_alignment``). ``timings``, when given, receives the seconds of each stage (read, check, score, write): benchmarks/import_scale.py.
    """
    source, out = Path(source), Path(out)
    clock = _StageClock(timings)
    _check_target(out)
    if image_root is not None and not Path(image_root).is_dir():
        raise ImportInputError(f"--image-root {Path(image_root).name}: no such folder")
    columns = clock.stage("read", read_columns, source, memory_budget)
    imported = clock.stage("check", validated, columns, source.name)
    if imported.paths is not None and image_root is None:
        raise ImportInputError(f"{source.name}: has 'paths'; give --image-root, the folder they are relative to")
    alignment = None
    if same_items_as is not None:
        from ecaml.serve.import_alignment import align_with_run

        alignment = clock.stage("align", align_with_run, imported, same_items_as, source.name, image_root)
    metrics = clock.stage("score", score_imported, imported, recall_ks)
    manifest = _manifest(source, imported, image_root, recall_ks, alignment)
    clock.stage("write", write_run_atomically, out,
                lambda folder: _write_files(folder, imported, manifest, metrics, alignment))
    return out


class _StageClock:
    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    def stage(self, name: str, function, *args):
        started = time.perf_counter()
        result = function(*args)
        if self.timings is not None:
            self.timings[name] = time.perf_counter() - started
        return result


def score_imported(imported: ImportedSet, recall_ks) -> dict[str, float]:
    """Our evaluator's metrics of the unseen part (all rows without a split), as a trained run's metrics.json."""
    from ecaml.eval.evaluate import Embeddings, score

    rows = np.flatnonzero(imported.split == "unseen") if imported.split is not None else np.arange(len(imported.labels))
    vectors = imported.vectors if len(rows) == len(imported.labels) else imported.vectors[rows]
    return score(Embeddings(vectors, imported.labels[rows], rows), list(recall_ks))


def _check_target(out: Path) -> None:
    if out.exists():
        raise ImportInputError(f"{out.name}: already exists; choose a new run folder")
    if not out.parent.is_dir():
        raise ImportInputError(f"{out.parent.name or out.parent}: no such folder to write {out.name} into")


def write_run_atomically(out: Path, write) -> None:
    """``write(folder)`` into a temporary folder beside ``out``, then one rename: ``out`` appears whole or not at all."""
    temporary = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".importing"))
    try:
        write(temporary)
        os.chmod(temporary, 0o755)
        os.rename(temporary, out)  # refuses a non-empty ``out`` that appeared meanwhile
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _manifest(source: Path, imported: ImportedSet, image_root, recall_ks, alignment) -> dict:
    return {**(alignment.manifest_entry() if alignment else {}),
        "kind": IMPORTED_DATASET, "format": IMPORT_FORMAT, "ecaml_version": __version__, "imported": time.time(),
        "source": source.name, "count": int(len(imported.labels)), "dim": int(imported.vectors.shape[1]),
        "classes": len(imported.class_names), "has_split": imported.split is not None,
        "image_root": str(Path(image_root).resolve()) if image_root is not None else None,
        "recall_ks": [int(k) for k in recall_ks], "items_digest": _items_digest(imported, image_root),
    }


def _items_digest(imported: ImportedSet, image_root) -> str:
    """Names the items (labels, split, paths, image root), so runs over the same items line up row by row."""
    digest = hashlib.sha256()
    digest.update(np.asarray(imported.class_names, dtype=str)[imported.labels].tobytes())
    for array in (imported.split, imported.paths):
        digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    digest.update(str(Path(image_root).resolve() if image_root else "").encode())
    return digest.hexdigest()


def _write_files(folder: Path, imported: ImportedSet, manifest: dict, metrics: dict, alignment) -> None:
    vectors = io.BytesIO()
    np.save(vectors, np.ascontiguousarray(imported.vectors, np.float32), allow_pickle=False)
    atomic_write_bytes(folder / VECTORS_FILE, vectors.getvalue())
    items = {"labels": imported.labels, "class_names": np.asarray(imported.class_names, dtype=str)}
    if imported.split is not None:
        items["split"] = imported.split
    if imported.paths is not None:
        items["paths"] = imported.paths
    items.update(alignment.items_entry() if alignment else {})
    buffer = io.BytesIO()
    np.savez(buffer, **items)
    atomic_write_bytes(folder / ITEMS_FILE, buffer.getvalue())
    atomic_write_json(folder / METRICS_FILE, metrics)
    atomic_write_bytes(folder / HISTORY_FILE, b"")
    atomic_write_json(folder / STATUS_FILE, {"state": "completed", "updated": time.time(), "kind": IMPORTED_DATASET})
    atomic_write_json(folder / MANIFEST_FILE, manifest)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else error.__class__.__name__


def summary(out: Path) -> str:
    manifest = json.loads((Path(out) / MANIFEST_FILE).read_text())
    return f"imported {manifest['count']:,} vectors of size {manifest['dim']} ({manifest['classes']:,} classes) into {out}"
