"""Datasets, class-disjoint splits, batch sampling and transforms.

``load_split`` is the one entry point: a dataset name (``digits``, ``glyphs``,
``fashion-mnist``, ``folder``, or a benchmark: ``cub``, ``cars``, ``sop``, ``inshop``) becomes a
``ClassSplit`` of training, validation and unseen classes, with the held-out
``seen_test`` images of the training classes (parts: see ``ecaml.data.base``).

The unseen (test) classes are fixed by each dataset's rule and depend on no
setting (Fashion-MNIST's may be chosen: ``unseen_classes``); validation classes
are drawn only from the seen ones (``val_seed``).
"""

from __future__ import annotations

from ecaml.data.base import ClassSplit, DatasetError, ImageSet, SplitDefinition, hold_out_images, split_classes
from ecaml.data.benchmarks import load_benchmark
from ecaml.data.builtin import load_digits, load_glyphs
from ecaml.data.fashion import NAME as FASHION, fashion_split, load_fashion_mnist
from ecaml.data.folder import load_image_folder, seeded_half_split, sorted_half_split
from ecaml.data.images import ImageError, open_image
from ecaml.registry import BENCHMARKS, BUILTIN_DATASETS, CHOSEN_SPLIT_DATASETS, COLOUR_DATASETS, DATASETS, SPLIT_PARTS

__all__ = [
    "BENCHMARKS",
    "CHOSEN_SPLIT_DATASETS",
    "COLOUR_DATASETS",
    "DATASETS",
    "SPLIT_PARTS",
    "ClassSplit",
    "DatasetError",
    "ImageError",
    "ImageSet",
    "SplitDefinition",
    "hold_out_images",
    "load_dataset",
    "load_split",
    "mirroring_allowed",
    "open_image",
]


def mirroring_allowed(name: str) -> bool:
    """Whether a horizontal flip keeps an image's class: not for characters (a mirrored 'b' is a 'd')."""
    return name in COLOUR_DATASETS or name == FASHION


def load_dataset(name: str, data_root: str | None = None, legacy_unseen_seed: int | None = None,
                 unseen_classes: list[int] | None = None) -> tuple[ImageSet, SplitDefinition]:
    """The images of dataset ``name`` and its seen/unseen definition (``unseen_classes``: Fashion-MNIST's choice)."""
    if unseen_classes is not None and name not in CHOSEN_SPLIT_DATASETS:
        raise DatasetError(f"unseen classes can be chosen only for {', '.join(CHOSEN_SPLIT_DATASETS)}; "
                           f"{name}'s are fixed by its rule")
    if name == FASHION:
        return load_fashion_mnist(data_root), fashion_split(unseen_classes)
    if name in BENCHMARKS:
        return load_benchmark(name, data_root)
    if name == "folder":
        if not data_root:
            raise DatasetError("--dataset folder needs --data-root PATH (one sub-folder of images per class)")
        dataset = load_image_folder(data_root)
        classes = len(dataset.class_names)
        rule = sorted_half_split(classes) if legacy_unseen_seed is None else seeded_half_split(classes, legacy_unseen_seed)
        return dataset, rule
    if name in BUILTIN_DATASETS:
        dataset = load_digits() if name == "digits" else load_glyphs()
        return dataset, sorted_half_split(len(dataset.class_names))
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_split(
    name: str,
    data_root: str | None = None,
    val_classes: float = 0,
    val_seed: int = 0,
    seen_test_per_class: int = 0,
    *,
    legacy_unseen_seed: int | None = None,
    unseen_classes: list[int] | None = None,
) -> ClassSplit:
    """The dataset with its standard seen/unseen split, ``val_classes`` held out of the seen ones, and seen-test images.

    Unseen classes: digits 5-9; Fashion-MNIST ``unseen_classes``, by default 5-9
    (Sandal, Shirt, Sneaker, Bag, Ankle boot: see ``ecaml.data.fashion``); glyphs, folder, CUB and CARS the second half of
    the classes in sorted order (CUB 101-200, CARS 99-196); SOP ``Ebay_test.txt``;
    In-Shop the query/gallery items. ``val_seed`` draws the validation classes
    (from the seen ones only) and the ``seen_test_per_class`` held-out images of
    each training class. ``legacy_unseen_seed`` re-reads folder runs made before
    the fixed rule (their unseen classes were a seeded permutation's half).
    """
    dataset, definition = load_dataset(name, data_root, legacy_unseen_seed, unseen_classes)
    split = split_classes(dataset, definition.seen_classes, definition.unseen_classes, val_classes, val_seed,
                          seen_test_per_class)
    if definition.unseen_queries is not None:
        split.query_gallery["unseen"] = (definition.unseen_queries, definition.unseen_gallery)
    return split
