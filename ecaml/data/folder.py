"""Any directory with one sub-folder of images per class.

Every image is checked when the folder is loaded (decoded once, results cached
by file name, size and modification time), so a truncated or foreign file is
reported up front, naming it, instead of stopping training mid-epoch.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np

from ecaml.data.base import ImageSet
from ecaml.data.images import ImageError, check_image, is_image_file

EXPECTED_LAYOUT = "expected ROOT/<class name>/<image files>, one sub-folder per class"
SHOWN_PROBLEMS = 3  # bad files named in the error; the rest are counted


class DatasetError(ValueError):
    """A dataset that cannot be loaded, with a one-line reason."""


def load_image_folder(root: str | Path) -> ImageSet:
    """Every image under ``root/<class>/``; classes with fewer than 2 images are skipped with a warning.

    Colour is kept (3 channels): odd modes are converted when an image is read.
    Any image that cannot be decoded to its end is a DatasetError naming it.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist ({EXPECTED_LAYOUT})")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a folder ({EXPECTED_LAYOUT})")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"dataset folder {root} has no class sub-folders ({EXPECTED_LAYOUT})")
    paths, labels, names, skipped = [], [], [], []
    for class_dir in class_dirs:
        images = _images_in(class_dir)
        if len(images) < 2:
            skipped.append(f"{class_dir.name} ({len(images)} image{'s' if len(images) != 1 else ''})")
            continue
        labels += [len(names)] * len(images)
        paths += images
        names.append(class_dir.name)
    if skipped:
        warnings.warn(f"skipped classes with fewer than 2 images: {', '.join(skipped)}", stacklevel=2)
    if len(names) < 4:
        raise DatasetError(
            f"dataset folder {root} has {len(names)} usable classes; at least 4 with 2+ images each are needed "
            f"({EXPECTED_LAYOUT})"
        )
    _refuse_unreadable(root, paths)
    return ImageSet(root.name, np.asarray(labels), names, channels=3, paths=paths)


def _images_in(class_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in class_dir.rglob("*") if is_image_file(p))
    except OSError as error:
        raise DatasetError(f"class folder {class_dir} cannot be listed ({error.strerror or error})") from None


def _refuse_unreadable(root: Path, paths: list[Path]) -> None:
    problems = [problem for problem in map(_image_problem, paths) if problem]
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise DatasetError(f"dataset folder {root} has {len(problems)} unusable image(s): {shown}{more}")


def _image_problem(path: Path) -> str | None:
    try:
        stat = os.stat(path)
    except OSError as error:
        return f"{path}: cannot be read ({error.strerror or error})"
    return _cached_image_problem(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 18)
def _cached_image_problem(path: str, size: int, mtime_ns: int) -> str | None:
    """Why ``path`` is unusable, or None; size and mtime only key the cache, so an edited file is checked anew."""
    try:
        check_image(path)
    except ImageError as error:
        return str(error)
    return None


def seeded_half_split(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """(seen, unseen): a seeded permutation of the classes cut in half."""
    order = np.random.default_rng(seed).permutation(num_classes)
    half = num_classes // 2
    return sorted(int(c) for c in order[:half]), sorted(int(c) for c in order[half:])
