"""Datasets, class-disjoint splits, batch sampling and transforms.

``load_split`` is the one entry point: a dataset name (``digits``, ``glyphs``,
``folder``) becomes a ``ClassSplit`` of seen (train/val) and unseen classes.
"""

from __future__ import annotations

from ecaml.data.base import SPLIT_PARTS, ClassSplit, ImageSet, split_classes
from ecaml.data.builtin import load_digits, load_glyphs
from ecaml.data.folder import DatasetError, load_image_folder, seeded_half_split
from ecaml.data.images import ImageError, open_image

DATASETS = ("digits", "glyphs", "folder")

__all__ = [
    "DATASETS",
    "SPLIT_PARTS",
    "ClassSplit",
    "DatasetError",
    "ImageError",
    "ImageSet",
    "load_dataset",
    "load_split",
    "open_image",
]


def load_dataset(name: str, data_root: str | None = None) -> ImageSet:
    if name == "digits":
        return load_digits()
    if name == "glyphs":
        return load_glyphs()
    if name == "folder":
        if not data_root:
            raise DatasetError("--dataset folder needs --data-root PATH (one sub-folder of images per class)")
        return load_image_folder(data_root)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_split(name: str, data_root: str | None = None, val_classes: int | float = 0, split_seed: int = 0) -> ClassSplit:
    """The dataset with its standard seen/unseen split and ``val_classes`` held out of the seen ones.

    digits: seen 0-4, unseen 5-9. glyphs: first half of the class ids seen, like
    CUB's 100/100. folder: a permutation seeded by ``split_seed`` cut in half.
    """
    dataset = load_dataset(name, data_root)
    num_classes = len(dataset.class_names)
    if name == "folder":
        seen, unseen = seeded_half_split(num_classes, split_seed)
    else:
        half = num_classes // 2
        seen, unseen = list(range(half)), list(range(half, num_classes))
    return split_classes(dataset, seen, unseen, val_classes, seed=split_seed)
