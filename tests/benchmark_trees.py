"""Tiny copies of the four benchmarks' official layouts, for tests and trials (nothing is downloaded).

Each ``make_*`` writes the index files exactly as the extracted archives hold
them (names, columns, header lines, 1-based ids, the .mat struct fields) and
tiny images, and returns the folder to pass as ``--data-root``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_image(path: Path, seed: int, size: int = 12) -> None:
    """A small noisy image whose colour depends on ``seed``; the format follows the suffix (JPEG for .jpg/.JPG)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 60, (size, size, 3)) + rng.integers(0, 190, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    path.write_bytes(buffer.getvalue())


def make_cub(root: Path, classes: int = 6, per_class: int = 6) -> Path:
    """CUB_200_2011/: images.txt, image_class_labels.txt, classes.txt, images/<NNN.Name>/<Name_NNNN>.jpg.

    Image ids are given in a shuffled order, so a reader must match the files by id, not by line.
    """
    folder = root / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{chr(65 + c)}" for c in range(classes)]
    rows = [(c + 1, f"{names[c]}/Bird_{chr(65 + c)}_{i:04d}_{c}.jpg") for c in range(classes) for i in range(per_class)]
    order = np.random.default_rng(0).permutation(len(rows))
    ids = {row: image_id for image_id, row in enumerate((rows[i] for i in order), start=1)}
    for (class_id, relative), image_id in ids.items():
        tiny_image(folder / "images" / relative, seed=image_id)
    (folder / "images.txt").write_text("".join(f"{ids[r]} {r[1]}\n" for r in sorted(ids, key=ids.get)))
    (folder / "image_class_labels.txt").write_text("".join(f"{ids[r]} {r[0]}\n" for r in sorted(ids, key=ids.get)))
    (folder / "classes.txt").write_text("".join(f"{c + 1} {name}\n" for c, name in enumerate(names)))
    return folder


def make_cars(root: Path, classes: int = 6, per_class: int = 6) -> Path:
    """ROOT/cars_annos.mat (struct array 'annotations': relative_im_path, bbox_*, class, test; 'class_names') + car_ims/."""
    import scipy.io

    folder = root / "cars196"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, classes * per_class), dtype=[(name, "O") for name in fields])
    # classes interleaved, as in the real file (sorted by image number, not by class)
    for number in range(classes * per_class):
        class_id = number % classes + 1
        relative = f"car_ims/{number + 1:06d}.jpg"
        tiny_image(folder / relative, seed=number)
        annotations[0, number] = (relative, np.uint8(1), np.uint8(2), np.uint16(10), np.uint16(11),
                                  np.uint8(class_id), np.uint8(number % 2))
    class_names = np.empty((1, classes), dtype=object)
    for c in range(classes):
        class_names[0, c] = f"Maker Model {c + 1} 2012"
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return folder


SOP_CATEGORIES = ("bicycle", "cabinet", "chair", "coffee_maker")


def make_sop(root: Path, classes: int = 8, per_class: int = 3, sizes: list[int] | None = None) -> Path:
    """Stanford_Online_Products/: Ebay_train.txt / Ebay_test.txt (header + image_id class_id super_class_id path)."""
    folder = root / "Stanford_Online_Products"
    sizes = sizes or [per_class] * classes
    lines = {"train": [], "test": []}
    image_id = 0
    for class_index, size in enumerate(sizes):
        class_id = class_index + 1
        super_id = class_index % len(SOP_CATEGORIES) + 1
        product = 111085122871 + class_index
        part = "train" if class_index < len(sizes) // 2 else "test"
        for i in range(size):
            image_id += 1
            relative = f"{SOP_CATEGORIES[super_id - 1]}_final/{product}_{i}.JPG"
            tiny_image(folder / relative, seed=image_id, size=8)
            lines[part].append(f"{len(lines[part]) + 1} {class_id} {super_id} {relative}")
    for part, rows in lines.items():
        (folder / f"Ebay_{part}.txt").write_text("image_id class_id super_class_id path\n" + "\n".join(rows) + "\n")
    return folder


def make_inshop(root: Path, items: int = 8, per_item: int = 5, queries_per_item: int = 2) -> Path:
    """ROOT/Eval/list_eval_partition.txt (count, header, 'img/... id_NNNNNNNN status') + img/.

    The first half of the items is train; each other item has ``queries_per_item`` query images, the rest gallery.
    """
    folder = root / "inshop"
    rows = []
    for item in range(items):
        item_id = f"id_{2 * item + 2:08d}"
        for i in range(per_item):
            relative = f"img/WOMEN/Dresses/{item_id}/{i + 1:02d}_{i % 4 + 1}_front.jpg"
            tiny_image(folder / relative, seed=item * 100 + i)
            status = "train" if item < items // 2 else ("query" if i < queries_per_item else "gallery")
            rows.append(f"{relative:<60} {item_id}          {status}")
    (folder / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (folder / "Eval" / "list_eval_partition.txt").write_text(text)
    return folder


MAKERS = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop}
