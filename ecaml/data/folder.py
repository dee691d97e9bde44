"""Any directory with one sub-folder of images per class."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ecaml.data.base import ImageSet
from ecaml.data.images import is_image_file

EXPECTED_LAYOUT = "expected ROOT/<class name>/<image files>, one sub-folder per class"


class DatasetError(ValueError):
    """A dataset that cannot be loaded, with a one-line reason."""


def load_image_folder(root: str | Path) -> ImageSet:
    """Every image under ``root/<class>/``; classes with fewer than 2 images are skipped with a warning.

    Colour is kept (3 channels): odd modes are converted when an image is read.
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
        images = sorted(p for p in class_dir.rglob("*") if is_image_file(p))
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
    return ImageSet(root.name, np.asarray(labels), names, channels=3, paths=paths)


def seeded_half_split(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """(seen, unseen): a seeded permutation of the classes cut in half."""
    order = np.random.default_rng(seed).permutation(num_classes)
    half = num_classes // 2
    return sorted(int(c) for c in order[:half]), sorted(int(c) for c in order[half:])
