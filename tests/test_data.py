"""Datasets, class-disjoint splits and class-balanced batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ecaml.data import DatasetError, load_split
from ecaml.data.sampling import class_balanced_batches


def make_image_tree(root, classes: int = 6, per_class: int = 3, size=(20, 16)):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


def test_digits_split_is_zero_to_four_seen_five_to_nine_unseen():
    split = load_split("digits")
    labels = split.dataset.labels
    assert split.train_classes == [0, 1, 2, 3, 4] and split.unseen_classes == [5, 6, 7, 8, 9]
    assert set(labels[split.indices("unseen")]) == {5, 6, 7, 8, 9}
    assert len(split.indices("train")) + len(split.indices("unseen")) == len(labels) == 1797


def test_validation_classes_are_carved_out_of_the_seen_classes():
    split = load_split("digits", val_classes=2, split_seed=3)
    assert len(split.val_classes) == 2 and len(split.train_classes) == 3
    assert set(split.val_classes) | set(split.train_classes) == {0, 1, 2, 3, 4}
    assert not set(split.val_classes) & set(split.train_classes)
    assert load_split("digits", val_classes=2, split_seed=3).val_classes == split.val_classes
    with pytest.raises(ValueError, match="cannot hold out"):
        load_split("digits", val_classes=4)


def test_glyph_split_is_half_seen_half_unseen_and_disjoint():
    split = load_split("glyphs")
    assert len(split.train_classes) == len(split.unseen_classes) >= 50
    assert not set(split.train_classes) & set(split.unseen_classes)


def test_folder_loader_reads_a_generated_tree_with_a_seeded_split(tmp_path):
    make_image_tree(tmp_path / "data", classes=6)
    split = load_split("folder", str(tmp_path / "data"), split_seed=1)
    assert split.dataset.class_names == [f"class_{c:02d}" for c in range(6)]
    assert len(split.train_classes) == 3 and len(split.unseen_classes) == 3
    assert split.dataset.image(0).mode == "RGB" and split.dataset.image(0).size == (20, 16)
    other = load_split("folder", str(tmp_path / "data"), split_seed=2)
    assert load_split("folder", str(tmp_path / "data"), split_seed=1).unseen_classes == split.unseen_classes
    assert other.unseen_classes != split.unseen_classes or other.train_classes != split.train_classes


def test_folder_loader_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*one sub-folder per class"):
        load_split("folder", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_split("folder", str(tmp_path / "empty"))


def test_class_balanced_batches_hold_m_classes_of_n_images():
    labels = np.repeat(np.arange(10), 7)
    batches = class_balanced_batches(labels, classes_per_batch=4, images_per_class=3, seed=0, epoch=0)
    assert len(batches) == len(labels) // 12
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and set(counts) == {3}
    visits = np.bincount(np.concatenate([np.unique(labels[b]) for b in batches]), minlength=10)
    assert visits.max() - visits.min() <= 1, "classes should be visited evenly"


def test_class_balanced_batches_are_seeded_per_epoch():
    labels = np.repeat(np.arange(6), 10)
    first = class_balanced_batches(labels, 3, 4, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, class_balanced_batches(labels, 3, 4, seed=0, epoch=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, class_balanced_batches(labels, 3, 4, seed=0, epoch=1)))
