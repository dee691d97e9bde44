"""Fashion-MNIST from its four standard idx files, found where they usually are.

70,000 greyscale 28x28 photos of garments (Zalando's article images), ten
classes of 7,000. The zero-shot split is by class, so the official train and
test files are read together (``train-*`` first, then ``t10k-*``) and the split
decides which classes are seen and which unseen.

The default split holds out classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle
boot) and trains on 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat), the
same rule as digits (the second half of the class ids). It makes a good
lesson: a model that has seen only clothes must tell three kinds of footwear
and bags apart, kinds of object it never saw, and place shirts, the one unseen
class that looks like seen ones (T-shirts, pullovers, coats). Another split:
``unseen_classes`` (``--unseen-classes 0,2,4,6,8``).

Where the files are looked for (the first folder holding all four wins), each
folder as given, or its ``FashionMNIST/raw/`` (torchvision's layout) or its
``fashion-mnist/``: ``--data-root`` alone when given; else ``$ECAML_DATA_DIR``,
``./data`` (torchvision's tutorials), ``~/.cache/ecaml/data`` (where
``python -m ecaml data fetch fashion-mnist`` puts them by default) and
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
Files may be gzipped (``.gz``) or not. Nothing is ever downloaded here.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ecaml.data.base import DatasetError, ImageSet, SplitDefinition
from ecaml.registry import FASHION_MNIST, FASHION_MNIST_UNSEEN_CLASSES

NAME = FASHION_MNIST
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEFAULT_UNSEEN_CLASSES = list(FASHION_MNIST_UNSEEN_CLASSES)
# (images, labels) file stems of each official part; both parts are read, train first.
PARTS = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx: 0x0000 0x08 (unsigned bytes) 0x03 / 0x01 dimensions
IMAGE_SIDE = 28
DATA_DIR_ENV = "ECAML_DATA_DIR"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
# Folders below a root where the files sit in common layouts: the root itself, torchvision's, a plain one.
SUBFOLDERS = (".", "FashionMNIST/raw", "fashion-mnist")
HOW_TO_GET = "apt-get install dataset-fashion-mnist, or python -m ecaml data fetch fashion-mnist"


def default_fetch_root() -> Path:
    """Where ``data fetch`` writes by default: ``$ECAML_DATA_DIR``, else ``~/.cache/ecaml/data``."""
    configured = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ecaml" / "data"


def search_roots() -> list[Path]:
    """The roots searched when no ``--data-root`` is given, in order."""
    roots = [Path(os.environ[DATA_DIR_ENV]).expanduser()] if os.environ.get(DATA_DIR_ENV, "").strip() else []
    return roots + [Path("data"), Path.home() / ".cache" / "ecaml" / "data", DEBIAN_FOLDER]


def find_files(data_root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four files: under ``data_root`` when given, else the first of ``search_roots()``.

    A folder holding some of the files but not all is an error naming the first missing one,
    not silently passed over.
    """
    roots = [Path(data_root).expanduser()] if data_root else search_roots()
    for folder in (root / sub for root in roots for sub in SUBFOLDERS):
        present = [_file_in(folder, stem) for pair in PARTS for stem in pair]
        if all(present):
            return folder.resolve()
        if any(present):
            missing = next(stem for pair in PARTS for stem in pair if not _file_in(folder, stem))
            raise DatasetError(f"Fashion-MNIST in {folder} is incomplete: {missing}.gz is missing ({HOW_TO_GET})")
    looked = f"{roots[0]} (and its FashionMNIST/raw/, fashion-mnist/)" if data_root else \
        ", ".join(str(root) for root in roots)
    raise DatasetError(f"Fashion-MNIST files not found in {looked}; get them with: {HOW_TO_GET}")


def available(data_root: str | os.PathLike | None = None) -> bool:
    """Whether the files can be found (without reading them)."""
    try:
        find_files(data_root)
    except DatasetError:
        return False
    return True


def load_fashion_mnist(data_root: str | os.PathLike | None = None) -> ImageSet:
    """All 70,000 images (train file then test file) with labels 0-9; a bad file is a DatasetError naming it."""
    folder = find_files(data_root)
    files = [_file_in(folder, stem) for pair in PARTS for stem in pair]
    signature = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    images, labels = _read_parts(signature)
    # A fresh ImageSet around the cached (read-only) arrays: callers may set attributes on theirs.
    return ImageSet(NAME, labels, list(CLASS_NAMES), channels=1, arrays=images)


def fetch(root: str | os.PathLike | None = None) -> Path:
    """Download the four files with torchvision's own downloader (mirrors, md5 checksums, progress) into
    ``root/FashionMNIST/raw/`` (default root: ``default_fetch_root()``); the folder holding them, read back whole.

    The one place that uses the network, and only when asked (``python -m ecaml data fetch fashion-mnist``).
    """
    from torchvision.datasets import FashionMNIST

    root = Path(root).expanduser() if root else default_fetch_root()
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as error:  # torchvision's "Error downloading ...", URLError, a full disk
        detail = " ".join(str(error).split()) or error.__class__.__name__
        raise DatasetError(f"could not download Fashion-MNIST into {root / 'FashionMNIST' / 'raw'} ({detail}); "
                           f"without network, install Debian's package: apt-get install dataset-fashion-mnist") from None
    load_fashion_mnist(root)  # what was written reads back, or a one-line error naming the bad file
    return find_files(root)


def fashion_split(unseen_classes: list[int] | None = None) -> SplitDefinition:
    """Seen / unseen classes: ``unseen_classes`` (default 5-9) unseen, the others seen."""
    unseen = sorted(DEFAULT_UNSEEN_CLASSES if unseen_classes is None else {int(c) for c in unseen_classes})
    if unseen_classes is not None and len(unseen) != len(unseen_classes):
        raise DatasetError(f"unseen classes {list(unseen_classes)} name a class twice")
    outside = [c for c in unseen if not 0 <= c < len(CLASS_NAMES)]
    if outside:
        raise DatasetError(f"unseen classes must be Fashion-MNIST class ids 0-9; got {outside}")
    seen = [c for c in range(len(CLASS_NAMES)) if c not in unseen]
    if len(unseen) < 2 or len(seen) < 2:
        raise DatasetError(f"choose between 2 and 8 unseen classes (of 10); got {len(unseen)}")
    return SplitDefinition(seen, unseen)


@functools.lru_cache(maxsize=1)
def _read_parts(signature: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of both parts; keyed by the files' (path, size, mtime)."""
    paths = [Path(path) for path, _, _ in signature]
    images, labels = [], []
    for images_path, labels_path in (paths[0:2], paths[2:4]):
        part_images, part_labels = _read_idx(images_path, IMAGES_MAGIC), _read_idx(labels_path, LABELS_MAGIC)
        if len(part_images) != len(part_labels):
            raise DatasetError(f"{labels_path}: {len(part_labels)} labels for the {len(part_images)} images of "
                               f"{images_path.name} (mismatched files)")
        if part_labels.size and part_labels.max() >= len(CLASS_NAMES):
            raise DatasetError(f"{labels_path}: label {int(part_labels.max())} is not a Fashion-MNIST class (0-9)")
        images.append(part_images)
        labels.append(part_labels)
    all_images, all_labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    all_images.flags.writeable = all_labels.flags.writeable = False  # shared by every caller of the cache
    return all_images, all_labels


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of one idx file: 4-byte magic, one big-endian uint32 per dimension, then the bytes."""
    data = _file_bytes(path)
    dimensions = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * dimensions
    if len(data) < header:
        raise DatasetError(f"{path}: truncated ({len(data)} bytes, shorter than the idx header)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "images (idx3)" if magic == IMAGES_MAGIC else "labels (idx1)"
        raise DatasetError(f"{path}: not an idx file of {kind} (magic number {found:#010x}, expected {magic:#010x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions))
    if dimensions == 3 and shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DatasetError(f"{path}: images of {shape[1]}x{shape[2]} pixels; Fashion-MNIST's are 28x28")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(f"{path}: {problem} ({len(data) - header:,} data bytes for {shape[0]:,} items, "
                           f"expected {expected - header:,})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _file_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        detail = " ".join(str(error).split()) or error.__class__.__name__
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({detail})") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error})") from None


def _file_in(folder: Path, stem: str) -> Path | None:
    """The file ``stem`` in ``folder``, uncompressed (torchvision extracts beside the .gz) or gzipped."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None
