"""Checking that every image of a dataset decodes, once per version of each file, remembered on disk.

Decoding 120,000 images takes minutes; doing it in every process (each training
run, each DDP rank, the app) is what made large folders slow to open. The result
of each check is stored under the library cache folder
(``$ECAML_CACHE_DIR/image-checks/``, default ``~/.cache/ecaml``), one JSON file per
dataset root (columns: paths relative to the root, sizes, mtimes, and the
problem of each unusable file), keyed by each file's (path, size, mtime). A later load only
``stat``s the files and decodes the new or changed ones. The cache is written
atomically; a cache file that is unreadable, of another format or of another root
is ignored and rebuilt, and an entry is trusted only while the file's size and
mtime are those it was made from.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ecaml.data.images import ImageError, check_image
from ecaml.store.atomic import write_cache_file  # atomic, and only warns when the cache cannot be written

CACHE_FORMAT = 2
CACHE_SUBDIR = "image-checks"
# Below this many files to decode, a process pool costs more than it saves.
PARALLEL_THRESHOLD = 2000
MAX_CHECK_WORKERS = 8
SHOWN_PROBLEMS = 3  # bad files named in the error; the rest are counted


def image_problems(root: Path, paths: Sequence[str | os.PathLike], cache_dir: Path | None = None) -> list[str]:
    """One line per image of ``paths`` that cannot be used (naming it), in the order of ``paths``; [] when all decode."""
    root = Path(root)
    cache_file = _cache_file(root, cache_dir)
    known = _read_cache(cache_file, root)
    prefix = os.fspath(root) + os.sep
    entries: dict[str, tuple[int, int, str | None]] = {}
    problems: dict[int, str] = {}
    to_check: list[tuple[int, str, int, int]] = []
    for position, path in enumerate(map(os.fspath, paths)):
        key = path.removeprefix(prefix)
        try:
            stat = os.stat(path)
        except OSError as error:
            problems[position] = f"{path}: cannot be read ({error.strerror or error})"
            continue
        entry = known.get(key)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            entries[key] = entry
            if entry[2] is not None:
                problems[position] = entry[2]
        else:
            to_check.append((position, key, stat.st_size, stat.st_mtime_ns))
    checked = _check_all([os.fspath(paths[position]) for position, *_ in to_check])
    for (position, key, size, mtime_ns), problem in zip(to_check, checked):
        entries[key] = (size, mtime_ns, problem)
        if problem is not None:
            problems[position] = problem
    if to_check or len(entries) != len(known):
        _write_cache(cache_file, root, entries)
    return [problems[p] for p in sorted(problems)]


def summarise_problems(where: str, problems: list[str]) -> str:
    """``where has N unusable image(s): first; second; third; and M more`` on one line."""
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return f"{where} has {len(problems)} unusable image(s): {shown}{more}"


def _problem(path: str) -> str | None:
    try:
        check_image(path)
    except ImageError as error:
        return str(error)
    return None


def _check_all(paths: list[str]) -> list[str | None]:
    workers = min(os.cpu_count() or 1, MAX_CHECK_WORKERS)
    if len(paths) < PARALLEL_THRESHOLD or workers < 2:
        return [_problem(path) for path in paths]
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_problem, paths, chunksize=256))
    except (OSError, RuntimeError):  # no processes allowed here (sandbox, limits): the same work, serially
        return [_problem(path) for path in paths]


def default_cache_dir() -> Path:
    from ecaml.store.paths import default_cache_dir as library_cache_dir  # one definition of the cache folder

    return library_cache_dir()


def _cache_file(root: Path, cache_dir: Path | None) -> Path:
    identity = os.fspath(root.expanduser().resolve())
    name = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_SUBDIR / f"{name}.json"


def _read_cache(cache_file: Path, root: Path) -> dict[str, tuple[int, int, str | None]]:
    """path key -> (size, mtime_ns, problem or None); {} for a missing, unreadable, foreign or malformed cache."""
    try:
        record = json.loads(cache_file.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    if not (isinstance(record, dict) and record.get("format") == CACHE_FORMAT
            and record.get("root") == os.fspath(root.expanduser().resolve())):
        return {}
    keys, sizes, mtimes, problems = (record.get(name) for name in ("paths", "sizes", "mtimes_ns", "problems"))
    if not (isinstance(keys, list) and isinstance(sizes, list) and isinstance(mtimes, list)
            and len(keys) == len(sizes) == len(mtimes) and isinstance(problems, dict)
            and all(type(k) is str for k in keys) and all(type(v) is int for v in sizes)
            and all(type(v) is int for v in mtimes) and all(type(v) is str for v in problems.values())):
        return {}
    return {key: (size, mtime, problems.get(key)) for key, size, mtime in zip(keys, sizes, mtimes)}


def _write_cache(cache_file: Path, root: Path, entries: dict[str, tuple[int, int, str | None]]) -> None:
    keys = list(entries)
    record = {
        "format": CACHE_FORMAT,
        "root": os.fspath(root.expanduser().resolve()),
        "paths": keys,
        "sizes": [entries[key][0] for key in keys],
        "mtimes_ns": [entries[key][1] for key in keys],
        "problems": {key: entries[key][2] for key in keys if entries[key][2] is not None},
    }
    write_cache_file(cache_file, json.dumps(record, separators=(",", ":")).encode("utf-8"))
