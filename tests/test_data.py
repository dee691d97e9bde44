"""Datasets, class-disjoint splits and class-balanced batches."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from ecaml.data import DatasetError, imagecheck, load_image_folder, load_split
from ecaml.data.sampling import class_balanced_batches


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The image-check cache of these tests goes to their own folder, not ~/.cache/ecaml."""
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path / "cache"))


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
    split = load_split("digits", val_classes=2, val_seed=3)
    assert len(split.val_classes) == 2 and len(split.train_classes) == 3
    assert set(split.val_classes) | set(split.train_classes) == {0, 1, 2, 3, 4}
    assert not set(split.val_classes) & set(split.train_classes)
    assert load_split("digits", val_classes=2, val_seed=3).val_classes == split.val_classes
    with pytest.raises(ValueError, match="cannot hold out"):
        load_split("digits", val_classes=4)


def test_glyph_split_is_half_seen_half_unseen_and_disjoint():
    split = load_split("glyphs")
    assert len(split.train_classes) == len(split.unseen_classes) >= 50
    assert not set(split.train_classes) & set(split.unseen_classes)


def test_folder_loader_reads_a_generated_tree_with_the_fixed_split(tmp_path):
    make_image_tree(tmp_path / "data", classes=7)
    split = load_split("folder", str(tmp_path / "data"))
    assert split.dataset.class_names == [f"class_{c:02d}" for c in range(7)]
    # the first half of the class folders in sorted name order is seen, the rest unseen (like CUB's 100/100)
    assert split.train_classes == [0, 1, 2] and split.unseen_classes == [3, 4, 5, 6]
    assert split.dataset.image(0).mode == "RGB" and split.dataset.image(0).size == (20, 16)
    for seed in range(10):
        other = load_split("folder", str(tmp_path / "data"), val_classes=1, val_seed=seed)
        assert other.unseen_classes == split.unseen_classes, "no seed may change the test classes"
        assert set(other.val_classes) < {0, 1, 2}


def test_folder_loader_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*one sub-folder per class"):
        load_split("folder", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_split("folder", str(tmp_path / "empty"))


def _random_class_shape(seed: int) -> tuple[np.ndarray, int, int]:
    """Labels of 2-40 classes of 1-14 images each (shuffled, arbitrary ids), and a random m and n."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 41))
    sizes = rng.integers(1, 15, num_classes)
    labels = np.repeat(rng.permutation(1000)[:num_classes], sizes)
    rng.shuffle(labels)
    return labels, int(rng.integers(2, 20)), int(rng.integers(1, 6))


def _check_batches(labels: np.ndarray, batches: list[np.ndarray], classes_per_batch: int, images_per_class: int):
    sizes = dict(zip(*np.unique(labels, return_counts=True)))
    expected_classes = min(classes_per_batch, len(sizes))
    assert len(batches) == max(1, len(labels) // (expected_classes * images_per_class))
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == expected_classes, "a batch repeats a class or misses one"
        assert set(counts) == {images_per_class}
        for label in classes:
            positions = batch[labels[batch] == label]
            assert len(set(positions)) == min(images_per_class, sizes[label]), "repeated image in a big enough class"
    visits = np.bincount(np.searchsorted(sorted(sizes), np.concatenate([np.unique(labels[b]) for b in batches])),
                         minlength=len(sizes))
    assert visits.max() - visits.min() <= 1, "classes should be visited evenly"


@contextmanager
def case(name: str):
    """Names the case of a loop in its failure: many seeds in one test cost far less than one test per seed."""
    try:
        yield
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from error


def test_class_balanced_batches_hold_m_distinct_classes_of_n_distinct_images():
    for seed in range(300):
        labels, classes_per_batch, images_per_class = _random_class_shape(seed)
        with case(f"seed {seed} (m = {classes_per_batch}, n = {images_per_class})"):
            batches = class_balanced_batches(labels, classes_per_batch, images_per_class, seed=seed, epoch=seed % 4)
            _check_batches(labels, batches, classes_per_batch, images_per_class)


@pytest.mark.parametrize(
    "sizes, classes_per_batch, images_per_class",
    [
        ([20] * 52, 16, 4),  # the shape of the report: 2 of 16 batches used to repeat a class and an image
        ([10, 10, 10], 2, 2),  # 3 classes, m = 2: batches used to hold a single class
        ([2, 3, 2], 3, 4),  # every class smaller than n
        ([1, 9, 1, 9], 4, 3),  # singletons beside big classes
        ([5, 5], 8, 2),  # fewer classes than m: clamped to all of them
    ],
)
def test_class_balanced_batches_on_the_hard_shapes(sizes, classes_per_batch, images_per_class):
    labels = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)
    for seed in range(50):
        with case(f"seed {seed}"):
            batches = class_balanced_batches(labels, classes_per_batch, images_per_class, seed=seed, epoch=1)
            _check_batches(labels, batches, classes_per_batch, images_per_class)


def test_class_balanced_batches_walk_through_each_class_before_repeating_an_image():
    labels = np.repeat(np.arange(4), 12)  # 4 classes x 12 images, batches of 4 x 3: each class visited 4 times
    for seed in range(20):
        batches = class_balanced_batches(labels, 4, 3, seed=seed, epoch=0)
        assert len(batches) == 4
        assert sorted(np.concatenate(batches)) == list(range(48)), "an epoch should show every image once"


def test_class_balanced_batches_refuse_a_single_class():
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        class_balanced_batches(np.zeros(10, dtype=int), 2, 2, seed=0, epoch=0)


def test_class_balanced_batches_are_seeded_per_epoch():
    labels = np.repeat(np.arange(6), 10)
    first = class_balanced_batches(labels, 3, 4, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, class_balanced_batches(labels, 3, 4, seed=0, epoch=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, class_balanced_batches(labels, 3, 4, seed=0, epoch=1)))


@pytest.fixture
def decodes(monkeypatch):
    """The paths decoded by the image check, in order (the check itself still runs)."""
    seen = []
    real = imagecheck.check_image

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(imagecheck, "check_image", counting)
    return seen


def _cache_files(tmp_path):
    return sorted((tmp_path / "cache" / imagecheck.CACHE_SUBDIR).glob("*.json"))


def test_a_folder_is_decoded_once_then_only_changed_files_are(tmp_path, decodes):
    root = make_image_tree(tmp_path / "data", classes=4, per_class=3)
    load_image_folder(root)
    assert len(decodes) == 12 and len(_cache_files(tmp_path)) == 1
    decodes.clear()
    load_image_folder(root)
    assert decodes == [], "a second load (a new process would do the same) must not decode anything"
    changed = root / "class_02" / "img1.png"
    Image.new("RGB", (9, 9)).save(changed)
    load_image_folder(root)
    assert decodes == [str(changed)]


def test_a_bad_image_stays_refused_from_the_cache_until_it_is_replaced(tmp_path, decodes):
    root = make_image_tree(tmp_path / "data", classes=4, per_class=3)
    bad = root / "class_01" / "img0.png"
    bad.write_bytes(b"not an image")
    for _ in range(2):
        with pytest.raises(DatasetError, match=f"{bad}: not an image"):
            load_image_folder(root)
    assert decodes.count(str(bad)) == 1
    Image.new("RGB", (5, 5)).save(bad)
    assert len(load_image_folder(root)) == 12


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-root", "wrong-entry", "other-format"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rebuilt(tmp_path, decodes, damage):
    root = make_image_tree(tmp_path / "data", classes=4, per_class=3)
    bad = root / "class_03" / "img2.png"
    bad.write_bytes(b"junk")
    with pytest.raises(DatasetError):
        load_image_folder(root)
    [cache] = _cache_files(tmp_path)
    record = json.loads(cache.read_text())
    if damage == "garbage":
        cache.write_bytes(b"\x00\xff{{")
    elif damage == "truncated":
        cache.write_text(cache.read_text()[:40])
    elif damage == "other-root":
        cache.write_text(json.dumps({**record, "root": "/elsewhere"}))
    elif damage == "wrong-entry":
        # an entry that claims the bad file is fine: only trusted if the whole cache is well-formed
        record["sizes"][0] = "x"
        cache.write_text(json.dumps(record))
    else:
        cache.write_text(json.dumps({**record, "format": 999}))
    decodes.clear()
    with pytest.raises(DatasetError, match=f"{bad}: not an image"):
        load_image_folder(root)
    assert len(decodes) == 12, "a cache that cannot be trusted is rebuilt from the images"
    assert json.loads(cache.read_text())["format"] == imagecheck.CACHE_FORMAT


def test_the_parallel_check_finds_what_the_serial_one_does(tmp_path, monkeypatch):
    root = make_image_tree(tmp_path / "data", classes=5, per_class=4)
    (root / "class_04" / "img3.png").write_bytes(b"junk")
    paths = sorted(root.rglob("*.png"))
    serial = imagecheck.image_problems(root, paths, cache_dir=tmp_path / "serial")
    monkeypatch.setattr(imagecheck, "PARALLEL_THRESHOLD", 1)
    parallel = imagecheck.image_problems(root, paths, cache_dir=tmp_path / "parallel")
    assert serial == parallel and len(parallel) == 1 and "img3.png: not an image" in parallel[0]


def test_folder_listing_takes_images_at_any_depth_in_path_order(tmp_path):
    root = make_image_tree(tmp_path / "data", classes=4, per_class=2)
    extra = root / "class_00"
    for relative in ["B.PNG", "a b/c.jpg", "a-b.jpg", "a/b.jpg", "deep/er/e.JPEG", ".hidden.png", "notes.txt", "foo."]:
        (extra / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(extra / relative, "PNG")
    (extra / "linked").symlink_to(root / "class_01", target_is_directory=True)  # not followed: no image twice
    dataset = load_image_folder(root)
    listed = [str(p)[len(str(extra)) + 1:] for p, label in zip(dataset.paths, dataset.labels) if label == 0]
    # component-wise order, as sorted(Path) gives: "a/b.jpg" before "a b/c.jpg" ("a" < "a b")
    assert listed == ["B.PNG", "a/b.jpg", "a b/c.jpg", "a-b.jpg", "deep/er/e.JPEG", "img0.png", "img1.png"]
