"""Labelled image sets and their class-disjoint splits.

An ``ImageSet`` is every image of a dataset with its class; a ``ClassSplit``
decides which classes are *seen* (training, possibly minus validation classes)
and which are *unseen* (zero-shot test). Indices always refer to the ImageSet,
so an embedding row can be traced back to its image anywhere in the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ecaml.data.images import open_image

SPLIT_PARTS = ("train", "val", "seen", "unseen")


@dataclass
class ImageSet:
    """Images with integer labels; ``class_names[label]`` names a class."""

    name: str
    labels: np.ndarray
    class_names: list[str]
    channels: int  # 1 for greyscale sets, 3 for colour
    arrays: np.ndarray | None = None  # in-memory uint8 images [N, H, W] (or [N, H, W, 3])
    paths: list[Path] | None = None  # or image files read on demand

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.arrays is None) == (self.paths is None):
            raise ValueError("an ImageSet holds either arrays or paths")
        if len(self) != len(self.labels):
            raise ValueError("an ImageSet needs one label per image")

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.paths)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as a PIL image in this set's mode."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index], mode=None).convert(self.mode)
        return open_image(self.paths[index], self.mode)

    def class_name(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]


@dataclass
class ClassSplit:
    """Which classes are seen (train + val) and which are unseen."""

    dataset: ImageSet
    train_classes: list[int]
    val_classes: list[int] = field(default_factory=list)
    unseen_classes: list[int] = field(default_factory=list)

    def classes(self, part: str) -> list[int]:
        if part not in SPLIT_PARTS:
            raise ValueError(f"unknown split {part!r}; choose one of {', '.join(SPLIT_PARTS)}")
        if part == "seen":
            return sorted(self.train_classes + self.val_classes)
        return {"train": self.train_classes, "val": self.val_classes, "unseen": self.unseen_classes}[part]

    def indices(self, part: str) -> np.ndarray:
        """Dataset indices of the images whose class belongs to ``part``."""
        wanted = np.asarray(self.classes(part), dtype=np.int64)
        return np.flatnonzero(np.isin(self.dataset.labels, wanted))


def split_classes(
    dataset: ImageSet,
    seen_classes: list[int],
    unseen_classes: list[int],
    val_classes: int | float = 0,
    seed: int = 0,
) -> ClassSplit:
    """Hold out ``val_classes`` of the seen classes (a count, or a fraction < 1) for validation.

    The held-out classes are drawn with ``seed``, so tuning on them never looks
    at the unseen test classes.
    """
    count = int(round(val_classes * len(seen_classes))) if 0 < val_classes < 1 else int(val_classes)
    if count < 0 or count > len(seen_classes) - 2:
        raise ValueError(
            f"cannot hold out {count} validation classes from {len(seen_classes)} seen classes (at least 2 must remain)"
        )
    shuffled = np.random.default_rng(seed).permutation(sorted(seen_classes))
    val = sorted(int(c) for c in shuffled[:count])
    train = sorted(int(c) for c in shuffled[count:])
    return ClassSplit(dataset, train, val, sorted(unseen_classes))
