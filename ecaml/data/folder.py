"""Any directory with one sub-folder of images per class.

Every image is checked when the folder is loaded (decoded once per file version,
the result remembered on disk by ``ecaml.data.imagecheck``), so a truncated or
foreign file is reported up front, naming it, instead of stopping training mid-epoch.

The split is fixed by the class names, like CUB's: the first half of the class
folders in sorted name order is seen, the second half unseen. No seed moves a
class between the two, so a tuning run can never train on the test classes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ecaml.data.base import DatasetError, ImageSet, SplitDefinition
from ecaml.data.imagecheck import image_problems, summarise_problems
from ecaml.data.images import IMAGE_SUFFIXES

EXPECTED_LAYOUT = "expected ROOT/<class name>/<image files>, one sub-folder per class"


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
    refuse_unusable_images(root, paths, f"dataset folder {root}")
    return ImageSet(root.name, np.asarray(labels), names, channels=3, paths=paths)


def refuse_unusable_images(root: Path, paths: list[Path], where: str) -> None:
    """A DatasetError naming the first bad images of ``paths`` (checked once per file version, see imagecheck)."""
    problems = image_problems(root, paths)
    if problems:
        raise DatasetError(summarise_problems(where, problems))


def _images_in(class_dir: Path) -> list[str]:
    """Image files at any depth under ``class_dir``, sorted as paths (component by component).

    ``os.scandir`` rather than ``rglob``: its entries know their type without a
    ``stat`` each, and building Path objects costs seconds at 100,000 files.
    Symlinked folders are not followed (as ``rglob`` does not); symlinked files are kept.
    """
    root, found, pending = os.fspath(class_dir), [], [os.fspath(class_dir)]
    try:
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir() and not entry.is_symlink():
                        pending.append(entry.path)
                    elif _is_image_name(entry.name) and entry.is_file():
                        found.append(entry.path)
    except OSError as error:
        raise DatasetError(f"class folder {class_dir} cannot be listed ({error.strerror or error})") from None
    return sorted(found, key=lambda path: path[len(root) + 1:].split(os.sep))


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def sorted_half_split(num_classes: int) -> SplitDefinition:
    """Seen: the first ``num_classes // 2`` classes (in sorted name order); unseen: the rest."""
    half = num_classes // 2
    return SplitDefinition(list(range(half)), list(range(half, num_classes)))


def seeded_half_split(num_classes: int, seed: int) -> SplitDefinition:
    """The split of folder runs made before the fixed rule: a seeded permutation cut in half.

    Only to re-read such runs exactly (``legacy_unseen_seed`` in their config); never for new ones.
    """
    order = np.random.default_rng(seed).permutation(num_classes)
    half = num_classes // 2
    return SplitDefinition(sorted(int(c) for c in order[:half]), sorted(int(c) for c in order[half:]))
