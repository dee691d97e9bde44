"""Writing files so that readers see the old version or the new one, never a part: the project's one writer.

Every run file, cache file and job record goes through ``atomic_write_bytes``
(or ``append_jsonl_records`` for the history). A new file gets the mode the
process's umask gives (0644 under the usual 022), as ``open`` would: a trainer
and an app served as another user can share a runs folder. A full disk raises
``DiskFullError`` with the previous version intact and no temporary file left.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NEW_FILE_MODE = 0o666  # before the umask, as open() and every other program create files


class DiskFullError(OSError):
    """A write that failed for lack of space; the file it was replacing is untouched and no temporary file is left."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file ``.<name>.<random>.tmp`` lives in the same folder (same
    filesystem, so the rename is atomic) and is fsynced first; on any failure, a
    full disk included, it is removed and the old file is untouched.
    """
    path = Path(path)
    with _disk_full_as_error(path):
        descriptor, temporary = _new_temporary(path)
        try:
            try:
                _write_all(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    _fsync_directory(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())


def write_cache_file(path: Path, data: bytes) -> None:
    """Atomically write a cache file; a cache that cannot be written (read-only, full disk) only warns."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as error:
        warnings.warn(f"could not write the cache file {path}: {error}", stacklevel=3)


def append_jsonl_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append one line per record with a single write: a kill leaves whole lines and at most one partial last one.

    A write that fails part-way (a full disk) is cut back off, so the next
    append does not glue a record onto half of these.
    """
    if not records:
        return
    data = "".join(json.dumps(record, allow_nan=False) + "\n" for record in records).encode()
    with _disk_full_as_error(path):
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _NEW_FILE_MODE)
        try:
            size_before = os.fstat(descriptor).st_size
            try:
                _write_all(descriptor, data)
            except OSError:
                os.ftruncate(descriptor, size_before)
                raise
        finally:
            os.close(descriptor)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files that a killed writer left behind (call only when no writer is running)."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _new_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``path``, with the umask's mode (mkstemp's is always 0600)."""
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _NEW_FILE_MODE), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _write_all(descriptor: int, data: bytes) -> None:
    """os.write until every byte is out: a single write may be short (signals, pipes, nearly full disks)."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


@contextmanager
def _disk_full_as_error(path: Path):
    try:
        yield
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS and not isinstance(error, DiskFullError):
            raise DiskFullError(f"disk full: could not write {path}; its previous version is kept") from None
        raise


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
