"""Readers for the four zero-shot retrieval benchmarks, from their official archives as extracted.

Each reader turns the files that define a benchmark's images, labels and split
into an ``ImageSet`` (paths and labels) and a ``SplitDefinition``; nothing else in
the library knows which benchmark it is on. The splits are the standard
class-disjoint ones (see docs/datasets.md):

* ``cub``: CUB-200-2011, first half of the class ids (1-100) seen, last half (101-200) unseen;
* ``cars``: CARS196, classes 1-98 seen, 99-196 unseen (``cars_annos.mat``);
* ``sop``: Stanford Online Products, ``Ebay_train.txt`` seen, ``Ebay_test.txt`` unseen;
* ``inshop``: In-Shop Clothes, ``train`` items seen; the unseen items' ``query``
  images are searched against their ``gallery`` images (``list_eval_partition.txt``).

A missing or malformed file is one ``DatasetError`` naming it and the expected
layout. Images are checked once per file version (``ecaml.data.imagecheck``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ecaml.data.base import DatasetError, ImageSet, SplitDefinition
from ecaml.data.folder import refuse_unusable_images

LAYOUTS = {
    "cub": ("CUB-200-2011", "CUB_200_2011",
            ("ROOT/images.txt, ROOT/image_class_labels.txt, ROOT/classes.txt and ROOT/images/<class>/<image>.jpg, "
             "as extracted from CUB_200_2011.tgz")),
    "cars": ("CARS196", None,
             "ROOT/cars_annos.mat and ROOT/car_ims/<image>.jpg, as extracted from car_ims.tgz next to cars_annos.mat"),
    "sop": ("Stanford Online Products", "Stanford_Online_Products",
            ("ROOT/Ebay_train.txt, ROOT/Ebay_test.txt and ROOT/<category>_final/<image>.JPG, "
             "as extracted from Stanford_Online_Products.zip")),
    "inshop": ("In-Shop Clothes", None,
               ("ROOT/Eval/list_eval_partition.txt (or ROOT/list_eval_partition.txt) and ROOT/img/..., "
                "as extracted from the In-shop Clothes Retrieval Benchmark's img.zip and Eval/")),
}


def load_benchmark(name: str, data_root: str | Path | None) -> tuple[ImageSet, SplitDefinition]:
    """The images and standard split of benchmark ``name`` (cub, cars, sop, inshop) under ``data_root``."""
    title, _, layout = LAYOUTS[name]
    if not data_root:
        raise DatasetError(f"--dataset {name} needs --data-root PATH ({title}: expected {layout})")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{title} folder {root} does not exist or is not a folder (expected {layout})")
    folder = _dataset_folder(name, root)
    reader: Callable[[_Layout], tuple[ImageSet, SplitDefinition]] = READERS[name]
    dataset, definition = reader(_Layout(name, folder))
    refuse_unusable_images(folder, dataset.paths, f"{title} at {folder}")
    return dataset, definition


def _dataset_folder(name: str, root: Path) -> Path:
    """``root``, or the archive's own folder inside it (CUB_200_2011/, Stanford_Online_Products/) when that holds the files."""
    inner = LAYOUTS[name][1]
    if inner and not _has_index(name, root) and (root / inner).is_dir():
        return root / inner
    return root


def _has_index(name: str, root: Path) -> bool:
    return {"cub": root / "images.txt", "sop": root / "Ebay_train.txt"}.get(name, root).exists()


class _Layout:
    """One benchmark folder: its files, found or reported missing with the expected layout."""

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.title, _, self.layout = LAYOUTS[name]

    def file(self, *candidates: str) -> Path:
        for relative in candidates:
            if (self.root / relative).is_file():
                return self.root / relative
        raise self.error(f"missing {candidates[0]}")

    def folder(self, relative: str) -> Path:
        if not (self.root / relative).is_dir():
            raise self.error(f"missing {relative}/")
        return self.root / relative

    def error(self, problem: str) -> DatasetError:
        return DatasetError(f"{self.title} at {self.root}: {problem} (expected {self.layout})")

    def rows(self, path: Path, columns: int, skip: int = 0) -> list[list[str]]:
        """Whitespace-separated rows of a text index with at least ``columns`` fields; a bad line names itself."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise self.error(f"{path.name} cannot be read ({getattr(error, 'strerror', None) or error})") from None
        rows = []
        for number, line in enumerate(lines[skip:], start=skip + 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < columns:
                raise self.error(f"{path.name} line {number} has {len(fields)} field(s), expected {columns}: {line[:80]!r}")
            rows.append(fields)
        if not rows:
            raise self.error(f"{path.name} lists no images")
        return rows

    def integer(self, path: Path, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise self.error(f"{path.name} has {text[:40]!r} where a number is expected") from None


def _joined(folder: Path, relative_paths: list[str]) -> list[str]:
    """``folder/relative`` as strings (index files use "/" on every system)."""
    prefix = os.fspath(folder) + os.sep
    if os.sep == "/":
        return [prefix + relative for relative in relative_paths]
    return [prefix + relative.replace("/", os.sep) for relative in relative_paths]


def _first_half_split(class_ids: list[int]) -> tuple[list[int], list[int]]:
    """(seen, unseen) positions of sorted ``class_ids``: the first half seen, like CUB's 100/100 and CARS's 98/98."""
    half = len(class_ids) // 2
    return list(range(half)), list(range(half, len(class_ids)))


def _labelled(layout: _Layout, class_ids: np.ndarray) -> tuple[np.ndarray, list]:
    """Labels 0..C-1 in sorted class-id order, and the sorted ids; fewer than 4 classes cannot be split."""
    ids, labels = np.unique(class_ids, return_inverse=True)
    if len(ids) < 4:
        raise layout.error(f"only {len(ids)} classes found; at least 4 are needed for a seen/unseen split")
    return labels.reshape(-1), ids.tolist()


def read_cub(layout: _Layout) -> tuple[ImageSet, SplitDefinition]:
    images_txt = layout.file("images.txt")
    labels_txt = layout.file("image_class_labels.txt")
    classes_txt = layout.file("classes.txt")
    images_dir = layout.folder("images")
    paths = {layout.integer(images_txt, r[0]): r[1] for r in layout.rows(images_txt, 2)}
    classes = {layout.integer(labels_txt, r[0]): layout.integer(labels_txt, r[1]) for r in layout.rows(labels_txt, 2)}
    names = {layout.integer(classes_txt, r[0]): r[1] for r in layout.rows(classes_txt, 2)}
    unlabelled = sorted(set(paths) - set(classes))
    if unlabelled:
        raise layout.error(f"image id {unlabelled[0]} of images.txt has no line in image_class_labels.txt")
    image_ids = sorted(paths)
    labels, class_ids = _labelled(layout, np.array([classes[i] for i in image_ids]))
    unnamed = [c for c in class_ids if c not in names]
    if unnamed:
        raise layout.error(f"class {unnamed[0]} has no line in classes.txt")
    dataset = ImageSet("CUB-200-2011", labels, [names[c] for c in class_ids], channels=3,
                       paths=_joined(images_dir, [paths[i] for i in image_ids]))
    return dataset, SplitDefinition(*_first_half_split(class_ids))


def read_cars(layout: _Layout) -> tuple[ImageSet, SplitDefinition]:
    import scipy.io

    annos_file = layout.file("cars_annos.mat")
    layout.folder("car_ims")
    try:
        mat = scipy.io.loadmat(annos_file, squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        relative_paths = [str(p) for p in annotations["relative_im_path"]]
        class_ids = np.asarray(annotations["class"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        detail = f"no field {error}" if isinstance(error, (KeyError, ValueError, IndexError)) else str(error)
        raise layout.error(f"cars_annos.mat is not the CARS196 annotation file ({detail[:80]}; "
                           "need the struct array 'annotations' with fields relative_im_path and class)") from None
    labels, ids = _labelled(layout, class_ids)
    names = _cars_class_names(mat, ids)
    dataset = ImageSet("CARS196", labels, names, channels=3, paths=_joined(layout.root, relative_paths))
    return dataset, SplitDefinition(*_first_half_split(ids))


def _cars_class_names(mat: dict, class_ids: list[int]) -> list[str]:
    """``class_names`` of the .mat file (1-based class ids), or "class N" where it is absent or short."""
    names = [str(n) for n in np.atleast_1d(mat.get("class_names", []))]
    return [names[c - 1] if 0 < c <= len(names) else f"class {c}" for c in class_ids]


def read_sop(layout: _Layout) -> tuple[ImageSet, SplitDefinition]:
    train_txt, test_txt = layout.file("Ebay_train.txt"), layout.file("Ebay_test.txt")
    rows = {}
    for part, path in (("train", train_txt), ("test", test_txt)):
        # columns: image_id class_id super_class_id path, after one header line
        rows[part] = [(layout.integer(path, r[1]), r[3]) for r in layout.rows(path, 4, skip=1)]
    train_ids, test_ids = {c for c, _ in rows["train"]}, {c for c, _ in rows["test"]}
    shared = sorted(train_ids & test_ids)
    if shared:
        raise layout.error(f"class {shared[0]} is in both Ebay_train.txt and Ebay_test.txt; the split must be class-disjoint")
    everything = rows["train"] + rows["test"]
    labels, ids = _labelled(layout, np.array([c for c, _ in everything]))
    names = _product_names(everything, ids)
    dataset = ImageSet("Stanford Online Products", labels, names, channels=3,
                       paths=_joined(layout.root, [p for _, p in everything]))
    seen = [i for i, c in enumerate(ids) if c in train_ids]
    return dataset, SplitDefinition(seen, [i for i, c in enumerate(ids) if c in test_ids])


def _product_names(rows: list[tuple[int, str]], class_ids: list[int]) -> list[str]:
    """``category_final/product id`` from the first image path of each class (``bicycle_final/111085122871_0.JPG``)."""
    first = {}
    for class_id, path in rows:
        first.setdefault(class_id, path)
    names = []
    for class_id in class_ids:
        folder, _, file_name = first[class_id].rpartition("/")
        names.append(folder.rpartition("/")[2] + "/" + file_name.rpartition(".")[0].rsplit("_", 1)[0])
    return names


def read_inshop(layout: _Layout) -> tuple[ImageSet, SplitDefinition]:
    partition = layout.file("Eval/list_eval_partition.txt", "list_eval_partition.txt")
    layout.folder("img")
    # line 1: the image count; line 2: "image_name item_id evaluation_status"
    rows = layout.rows(partition, 3, skip=2)
    statuses = np.array([r[2] for r in rows])
    unknown = sorted(set(statuses) - {"train", "query", "gallery"})
    if unknown:
        raise layout.error(f"{partition.name} has status {unknown[0]!r}; expected train, query or gallery")
    labels, items = _labelled(layout, np.array([r[1] for r in rows]))
    train_items = set(labels[statuses == "train"].tolist())
    test_items = set(labels[statuses != "train"].tolist())
    shared = sorted(train_items & test_items)
    if shared:
        raise layout.error(f"item {items[shared[0]]} has both train and query/gallery images; the split must be class-disjoint")
    dataset = ImageSet("In-Shop Clothes", labels, [str(i) for i in items], channels=3,
                       paths=_joined(layout.root, [r[0] for r in rows]))
    return dataset, SplitDefinition(
        sorted(train_items), sorted(test_items),
        unseen_queries=np.flatnonzero(statuses == "query"), unseen_gallery=np.flatnonzero(statuses == "gallery"),
    )


READERS = {"cub": read_cub, "cars": read_cars, "sop": read_sop, "inshop": read_inshop}
