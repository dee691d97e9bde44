"""Labelled image sets and their class-disjoint splits.

An ``ImageSet`` is every image of a dataset with its class; a ``SplitDefinition``
is what the dataset itself says about testing (which classes are seen, which are
unseen, and for In-Shop which unseen images are queries and which the gallery);
a ``ClassSplit`` adds the run's own choices: validation classes carved out of
the seen ones, and a few held-out images of each training class (``seen_test``).
Indices always refer to the ImageSet, so an embedding row can be traced back to
its image anywhere in the project.

Parts of a split (``ClassSplit.indices(part)``):

* ``train``: images of the training classes, minus the held-out ``seen_test`` ones;
* ``val``: images of the validation classes (seen classes never trained on);
* ``seen``: every image of the seen classes (train + val classes, held-out images included);
* ``seen_test``: the held-out images of the training classes; scored as queries
  against the ``train`` images as the gallery (new images of known classes);
* ``unseen``: images of the unseen (test) classes; scored against themselves, or
  query vs gallery where the dataset defines it (In-Shop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ecaml.data.images import open_image
from ecaml.registry import SPLIT_PARTS
# The random stream of the seen-test hold-out, apart from the validation draw of the same seed.
SEEN_TEST_STREAM = 0x5EE7
# A training class keeps at least this many images after its hold-out (one positive pair).
MIN_TRAINING_IMAGES = 2


class DatasetError(ValueError):
    """A dataset that cannot be loaded, with a one-line reason."""


@dataclass
class ImageSet:
    """Images with integer labels; ``class_names[label]`` names a class."""

    name: str
    labels: np.ndarray
    class_names: list[str]
    channels: int  # 1 for greyscale sets, 3 for colour
    arrays: np.ndarray | None = None  # in-memory uint8 images [N, H, W] (or [N, H, W, 3])
    # or image files read on demand (str for the benchmarks: 100,000s of Path objects cost seconds to build)
    paths: list[str] | list[Path] | None = None

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
class SplitDefinition:
    """A dataset's own test protocol: seen vs unseen classes, and optionally unseen queries vs gallery."""

    seen_classes: list[int]
    unseen_classes: list[int]
    unseen_queries: np.ndarray | None = None  # dataset indices of the unseen query images (In-Shop)
    unseen_gallery: np.ndarray | None = None  # dataset indices of the unseen gallery images (In-Shop)


@dataclass
class ClassSplit:
    """Which classes are trained on, validated on and tested on; which images are held out and how parts are scored."""

    dataset: ImageSet
    train_classes: list[int]
    val_classes: list[int] = field(default_factory=list)
    unseen_classes: list[int] = field(default_factory=list)
    seen_test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # part -> (query indices, gallery indices) for the parts a dataset scores as query vs gallery
    query_gallery: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def classes(self, part: str) -> list[int]:
        _check_part(part)
        if part == "seen":
            return sorted(self.train_classes + self.val_classes)
        if part == "seen_test":
            return sorted({int(c) for c in self.dataset.labels[self.seen_test]})
        return {"train": self.train_classes, "val": self.val_classes, "unseen": self.unseen_classes}[part]

    def indices(self, part: str) -> np.ndarray:
        """Dataset indices of the images of ``part`` (sorted)."""
        _check_part(part)
        if part == "seen_test":
            return np.sort(self.seen_test)
        wanted = np.asarray(self.classes(part), dtype=np.int64)
        members = np.flatnonzero(np.isin(self.dataset.labels, wanted))
        if part == "train" and len(self.seen_test):
            members = np.setdiff1d(members, self.seen_test, assume_unique=True)
        return members

    def queries_and_gallery(self, part: str) -> tuple[np.ndarray, np.ndarray | None]:
        """How ``part`` is scored: (query indices, gallery indices), gallery None = the part searched against itself."""
        _check_part(part)
        if part == "seen_test":
            return self.indices("seen_test"), self.indices("train")
        if part in self.query_gallery:
            queries, gallery = self.query_gallery[part]
            return np.asarray(queries, dtype=np.int64), np.asarray(gallery, dtype=np.int64)
        return self.indices(part), None


def _check_part(part: str) -> None:
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split {part!r}; choose one of {', '.join(SPLIT_PARTS)}")


def split_classes(
    dataset: ImageSet,
    seen_classes: list[int],
    unseen_classes: list[int],
    val_classes: float = 0,
    seed: int = 0,
    seen_test_per_class: int = 0,
) -> ClassSplit:
    """Hold out ``val_classes`` of the seen classes (a count, or a fraction < 1) and ``seen_test_per_class`` images.

    Validation classes come only from ``seen_classes``, drawn with ``seed``, so no
    seed can move an unseen (test) class into training or tuning. The seen-test
    images: see ``hold_out_images``.
    """
    count = int(round(val_classes * len(seen_classes))) if 0 < val_classes < 1 else int(val_classes)
    if count < 0 or count > len(seen_classes) - 2:
        raise ValueError(
            f"cannot hold out {count} validation classes from {len(seen_classes)} seen classes (at least 2 must remain)"
        )
    shuffled = np.random.default_rng(seed).permutation(sorted(seen_classes))
    val = sorted(int(c) for c in shuffled[:count])
    train = sorted(int(c) for c in shuffled[count:])
    held_out = hold_out_images(dataset.labels, train, seen_test_per_class, seed)
    return ClassSplit(dataset, train, val, sorted(unseen_classes), held_out)


def hold_out_images(labels: np.ndarray, classes: list[int], per_class: int, seed: int) -> np.ndarray:
    """``per_class`` images of each of ``classes`` that has at least ``per_class + 2`` images, drawn with ``seed``.

    Smaller classes hold out nothing, so every training class keeps a positive
    pair. Each image gets a seeded random key and a class holds out its
    ``per_class`` lowest keys: the choice of one class does not depend on the others.
    """
    if per_class < 0:
        raise ValueError("seen_test_per_class must be >= 0")
    if per_class == 0 or not classes:
        return np.zeros(0, dtype=np.int64)
    labels = np.asarray(labels)
    keys = np.random.default_rng([seed, SEEN_TEST_STREAM]).random(len(labels))
    members = np.flatnonzero(np.isin(labels, np.asarray(classes)))
    ordered = members[np.lexsort((keys[members], labels[members]))]
    ordered_labels = labels[ordered]
    _, starts, sizes = np.unique(ordered_labels, return_index=True, return_counts=True)
    rank = np.arange(len(ordered)) - np.repeat(starts, sizes)
    big_enough = np.repeat(sizes >= per_class + MIN_TRAINING_IMAGES, sizes)
    return np.sort(ordered[(rank < per_class) & big_enough]).astype(np.int64)
