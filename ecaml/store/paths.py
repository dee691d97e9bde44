"""Where files go: the one cache root of the library, and user-supplied paths kept inside the folders a caller allows.

``default_cache_dir`` is ``$ECAML_CACHE_DIR``, else ``~/.cache/ecaml``: the library's caches (embeddings,
projections, image checks) go under it unless a caller names its own folder (the app names ``REPO/.cache``).

The app (and anything else that takes a path from a person it does not fully
trust) passes the path through ``confine`` before opening it, so ``../``,
absolute paths and symlinks cannot reach files outside the run and data folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


class PathError(ValueError):
    """A path outside the allowed folders, or not a usable path at all; the message is one line."""


def confine(
    path: str | os.PathLike,
    allowed_roots: Iterable[str | os.PathLike],
    *,
    base: str | os.PathLike | None = None,
) -> Path:
    """The fully resolved ``path`` if it lies inside one of ``allowed_roots``, else ``PathError``.

    Contract:

    * Relative paths are taken relative to ``base`` (default: the current working
      directory), exactly as ``open`` would take them. ``~`` is not expanded.
    * ``..`` components and every symlink along the path (and along each root)
      are resolved *before* the check, so ``root/../etc`` and ``root/link`` where
      ``link -> /etc`` are both refused. The path need not exist: a missing tail
      is kept as written (after ``..`` is collapsed), so a new file can be confined.
    * A root itself counts as inside (``confine(root, [root])`` returns it).
    * The returned path is absolute and symlink-free at the time of the call.
      Open it right away: a symlink created inside a root after the check is
      not seen (no path check can close that race; only the folder's owner can).
    * Refused: empty paths, paths with NUL bytes, non-path values, and any path
      when ``allowed_roots`` is empty. Messages quote the path with ``repr``, so
      a name with a newline still gives one line, and never show where the
      roots are on disk, only their names.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "" or "\0" in str(path):
        raise PathError(f"not a usable path: {_quoted(path)}")
    roots = [_resolve(Path(root)) for root in allowed_roots]
    if not roots:
        raise PathError(f"{_quoted(path)} is refused: no folder is allowed")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = Path(base if base is not None else os.getcwd()) / candidate
    resolved = _resolve(candidate)
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    names = ", ".join(root.name or str(root) for root in roots)
    raise PathError(f"{_quoted(path)} is outside the allowed folders ({names})")


def _resolve(path: Path) -> Path:
    # strict=False: a missing tail is fine; a symlink loop or an unreadable folder is a refusal, not a traceback.
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as error:
        raise PathError(f"cannot resolve {_quoted(path)} ({error.__class__.__name__})") from None


def _quoted(value: object) -> str:
    text = repr(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


CACHE_ENV = "ECAML_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$ECAML_CACHE_DIR`` when set, else ``~/.cache/ecaml``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ecaml"
