"""Fashion-MNIST: the idx reader (on small files these tests write), where the files are found, the split, the CLI.

The tests marked ``real_files`` read the installed data set (Debian's dataset-fashion-mnist, which CI installs).
They skip when it is absent, unless ECAML_REQUIRE_FASHION_MNIST is set (CI sets it): then absence fails.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecaml.data import DatasetError, fashion, load_split

REPO = Path(__file__).resolve().parents[1]
STEMS = [stem for pair in fashion.PARTS for stem in pair]


def write_idx(path: Path, array: np.ndarray, gzipped: bool = True, magic: int | None = None) -> Path:
    """An idx file of uint8 ``array``: magic (0x0803 images, 0x0801 labels), big-endian sizes, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_fashion(folder: Path, train_per_class: int = 3, test_per_class: int = 1, gzipped: bool = True,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The four files of a tiny Fashion-MNIST in ``folder``; returns all (images, labels), train part first."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for (images_stem, labels_stem), per_class in zip(fashion.PARTS, (train_per_class, test_per_class)):
        part_labels = rng.permutation(np.repeat(np.arange(10), per_class))
        # Each image carries its class in its brightness, so that a mix-up of files or order would show.
        part_images = (rng.integers(0, 20, size=(len(part_labels), 28, 28)) + 20 * part_labels[:, None, None])
        write_idx(folder / images_stem, part_images, gzipped)
        write_idx(folder / labels_stem, part_labels, gzipped)
        images.append(part_images.astype(np.uint8))
        labels.append(part_labels)
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def no_usual_places(tmp_path, monkeypatch):
    """No Fashion-MNIST in any place searched by default, unless a test puts it there."""
    monkeypatch.delenv(fashion.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fashion, "DEBIAN_FOLDER", tmp_path / "debian" / "fashion-mnist")
    fashion._read_parts.cache_clear()
    yield tmp_path
    fashion._read_parts.cache_clear()


def test_both_parts_are_read_in_order_with_the_default_split(tmp_path, no_usual_places):
    images, labels = write_fashion(tmp_path / "fm")
    split = load_split("fashion-mnist", str(tmp_path / "fm"), val_classes=2, val_seed=1)
    dataset = split.dataset
    assert len(dataset) == 40 and dataset.channels == 1 and dataset.arrays.shape == (40, 28, 28)
    np.testing.assert_array_equal(dataset.arrays, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
    assert split.unseen_classes == [5, 6, 7, 8, 9]
    assert sorted(split.train_classes + split.val_classes) == [0, 1, 2, 3, 4] and len(split.val_classes) == 2
    assert set(labels[split.indices("unseen")]) == {5, 6, 7, 8, 9}
    assert dataset.image(0).mode == "L" and dataset.image(0).size == (28, 28)


def test_unseen_classes_can_be_chosen_and_validation_still_comes_from_the_seen_ones(tmp_path, no_usual_places):
    write_fashion(tmp_path / "fm")
    split = load_split("fashion-mnist", str(tmp_path / "fm"), val_classes=1, unseen_classes=[0, 2, 4, 6, 8])
    assert split.unseen_classes == [0, 2, 4, 6, 8]
    assert sorted(split.train_classes + split.val_classes) == [1, 3, 5, 7, 9]
    for bad, message in (([3, 3, 4], "twice"), ([5, 10], "0-9"), ([1], "between 2 and 8")):
        with pytest.raises(DatasetError, match=message):
            load_split("fashion-mnist", str(tmp_path / "fm"), unseen_classes=bad)
    with pytest.raises(DatasetError, match="only for fashion-mnist"):
        load_split("digits", unseen_classes=[5, 6])


@pytest.mark.parametrize("place", ["env", "env-torchvision", "cwd-data", "home-cache", "debian"])
def test_files_are_found_where_they_usually_are(tmp_path, no_usual_places, monkeypatch, place):
    folders = {
        "env": tmp_path / "mine",
        "env-torchvision": tmp_path / "mine" / "FashionMNIST" / "raw",
        "cwd-data": tmp_path / "data" / "FashionMNIST" / "raw",  # torchvision's tutorials: root="data"
        "home-cache": tmp_path / "home" / ".cache" / "ecaml" / "data" / "FashionMNIST" / "raw",
        "debian": tmp_path / "debian" / "fashion-mnist",
    }
    if place.startswith("env"):
        monkeypatch.setenv(fashion.DATA_DIR_ENV, str(tmp_path / "mine"))
    # torchvision keeps the extracted files beside the archives: read either.
    write_fashion(folders[place], gzipped=place != "env-torchvision")
    assert fashion.find_files() == folders[place].resolve()
    assert len(load_split("fashion-mnist").dataset) == 40


def test_missing_files_say_where_they_were_looked_for_and_how_to_get_them(tmp_path, no_usual_places):
    with pytest.raises(DatasetError) as error:
        load_split("fashion-mnist")
    message = str(error.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert "python -m ecaml data fetch fashion-mnist" in message and "debian" in message
    assert not fashion.available()
    with pytest.raises(DatasetError, match="not found in .*nowhere"):
        load_split("fashion-mnist", str(tmp_path / "nowhere"))


def _broken(folder: Path, stem: str, data: bytes | None = None, array=None, magic=None) -> Path:
    """The tiny data set in ``folder`` with file ``stem`` replaced by raw ``data`` or an idx of ``array``."""
    write_fashion(folder)
    target = folder / (stem + ".gz")
    if data is not None:
        target.write_bytes(data)
        return target
    return write_idx(folder / stem, array, magic=magic)


def _gzip_truncated(folder: Path, stem: str) -> Path:
    write_fashion(folder)
    target = folder / (stem + ".gz")
    target.write_bytes(target.read_bytes()[:-20])
    return target


@pytest.mark.parametrize("damage, words", [
    (lambda f: _gzip_truncated(f, "train-images-idx3-ubyte"), "corrupt or truncated gzip"),
    (lambda f: _broken(f, "t10k-labels-idx1-ubyte", data=b"not gzip at all"), "corrupt or truncated gzip"),
    (lambda f: _broken(f, "train-images-idx3-ubyte", array=np.zeros((30, 28, 28)), magic=0x0801),
     "not an idx file of images"),
    (lambda f: _broken(f, "train-labels-idx1-ubyte", array=np.zeros(29)), "29 labels for the 30 images"),
    (lambda f: _broken(f, "t10k-images-idx3-ubyte", array=np.zeros((10, 32, 32))), "32x32"),
    (lambda f: _broken(f, "t10k-labels-idx1-ubyte", array=np.full(10, 12)), "label 12"),
    (lambda f: _broken(f, "train-labels-idx1-ubyte", data=gzip.compress((2049).to_bytes(4, "big")
                                                                        + (30).to_bytes(4, "big") + bytes(20))),
     "truncated"),
    (lambda f: _broken(f, "t10k-images-idx3-ubyte", data=gzip.compress(b"\x00\x00")), "truncated"),
])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, no_usual_places, damage, words):
    target = damage(tmp_path / "fm")
    with pytest.raises(DatasetError) as error:
        load_split("fashion-mnist", str(tmp_path / "fm"))
    message = str(error.value)
    assert "\n" not in message and str(target) in message and words in message


def test_an_incomplete_folder_names_the_missing_file(tmp_path, no_usual_places):
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="incomplete: t10k-labels-idx1-ubyte.gz is missing"):
        load_split("fashion-mnist", str(tmp_path / "fm"))


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ecaml", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def test_cli_trains_on_fashion_mnist_with_a_chosen_split_and_records_it(tmp_path):
    import json

    write_fashion(tmp_path / "fm", train_per_class=6)
    done = _cli("train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "fm"), "--unseen-classes",
                "1,3,5,7,9", "--max-steps", "2", "--seen-test-per-class", "1", "--out", str(tmp_path / "run"),
                "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == "fashion-mnist" and config["unseen_classes"] == [1, 3, 5, 7, 9]
    done = _cli("train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "fm"), "--max-steps", "1",
                "--out", str(tmp_path / "default"), "--quiet", cwd=tmp_path)
    assert json.loads((tmp_path / "default" / "config.json").read_text())["unseen_classes"] == [5, 6, 7, 8, 9]
    # the run directory re-reads its split: the evaluation names the same unseen classes' images
    done = _cli("evaluate", str(tmp_path / "run"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args, words", [
    (["--dataset", "digits", "--unseen-classes", "5,6"], "only for fashion-mnist"),
    (["--dataset", "fashion-mnist", "--unseen-classes", "shoes"], "comma-separated class ids"),
])
def test_cli_refuses_a_bad_unseen_classes_flag_in_one_line(tmp_path, args, words):
    done = _cli("train", *args, "--max-steps", "1", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- the real data set


def real_files_or_skip() -> None:
    if fashion.available():
        return
    if os.environ.get("ECAML_REQUIRE_FASHION_MNIST"):
        pytest.fail("Fashion-MNIST is required here (ECAML_REQUIRE_FASHION_MNIST) but was not found")
    pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist "
                "(or python -m ecaml data fetch fashion-mnist)")


def test_the_real_data_set_is_all_70000_images_in_ten_classes_of_7000():
    real_files_or_skip()
    split = load_split("fashion-mnist")
    dataset = split.dataset
    assert dataset.arrays.shape == (70_000, 28, 28)
    assert np.bincount(dataset.labels).tolist() == [7000] * 10
    # The first image of each official file is an ankle boot (label 9), the train file's read first.
    assert dataset.labels[0] == 9 and dataset.labels[60_000] == 9
    assert len(split.indices("unseen")) == 35_000 and len(split.indices("train")) == 35_000
    # Garments are light on a black background (the upload conversion relies on it): dark corners, light centres.
    corners = dataset.arrays[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.median(corners) == 0 and corners.mean() < 5 and dataset.arrays[:, 10:18, 10:18].mean() > 100


# ----------------------------------------------------------------------------- data fetch (network mocked)


def test_data_fetch_uses_torchvisions_downloader_into_the_root(tmp_path, no_usual_places, monkeypatch, capsys):
    from torchvision.datasets import mnist

    from ecaml.cli import main

    source = tmp_path / "mirror"
    write_fashion(source)
    asked = []

    def fake_download(url, download_root, filename, md5):  # what torchvision does: fetch, check md5, extract
        asked.append((url, filename, md5))
        (Path(download_root) / filename).write_bytes((source / filename).read_bytes())
        (Path(download_root) / filename[:-3]).write_bytes(gzip.decompress((source / filename).read_bytes()))

    monkeypatch.setattr(mnist, "download_and_extract_archive", fake_download)
    assert main(["data", "fetch", "fashion-mnist", "--root", str(tmp_path / "root")]) == 0
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert str(raw.resolve()) in capsys.readouterr().out
    assert sorted(name for _, name, _ in asked) == sorted(stem + ".gz" for stem in STEMS)
    assert all(len(md5) == 32 for _, _, md5 in asked)  # torchvision's checksums travel with each file
    assert fashion.find_files(tmp_path / "root") == raw.resolve()
    # The default root is $ECAML_DATA_DIR, where training then finds the files without --data-root.
    monkeypatch.setenv(fashion.DATA_DIR_ENV, str(tmp_path / "shared"))
    assert main(["data", "fetch", "fashion-mnist"]) == 0
    assert len(load_split("fashion-mnist").dataset) == 40


def test_data_fetch_without_network_is_one_line_with_the_offline_way(tmp_path, no_usual_places, monkeypatch, capsys):
    from urllib.error import URLError

    from torchvision.datasets import mnist

    from ecaml.cli import main

    def offline(url, download_root, filename, md5):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    assert main(["data", "fetch", "fashion-mnist", "--root", str(tmp_path / "root")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "could not download Fashion-MNIST" in error
    assert "name resolution" in error and "apt-get install dataset-fashion-mnist" in error


def test_a_background_job_passes_the_chosen_split_on_exactly():
    from ecaml.cli import _flag_values, build_parser
    from ecaml.config import TrainConfig
    from ecaml.serve.job_command import config_flags

    config = TrainConfig(dataset="fashion-mnist", unseen_classes=[0, 2, 4, 6, 8], ec_weight=1.0).resolved()
    flags = config_flags(config)
    assert "--unseen-classes=0,2,4,6,8" in flags
    args = build_parser().parse_args(["train", *flags, "--out=x"])
    assert TrainConfig.from_dict(_flag_values(args)).resolved() == config
    with pytest.raises(ValueError, match="only for fashion-mnist"):
        TrainConfig(dataset="glyphs", unseen_classes=[1, 2]).resolved()


# ----------------------------------------------------------------------------- uploads: a phone photo of a shoe


def phone_photo(garment: np.ndarray, scale: int = 14, canvas=(1600, 1200), offset=(310, 420), seed: int = 0):
    """``garment`` (28x28, light on black, as in Fashion-MNIST) as a phone would photograph the real thing: a dark
    object on a light, slightly warm and noisy table, large, RGB, off centre."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = canvas
    table = np.array([222.0, 214.0, 200.0]) + rng.normal(0, 4, size=(height, width, 3))
    shoe = np.asarray(Image.fromarray(garment).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC),
                      dtype=np.float32) / 255.0
    top, left = offset
    region = table[top: top + shoe.shape[0], left: left + shoe.shape[1]]
    region[:] = region * (1 - 0.85 * shoe[..., None])  # the shoe darkens the table where it stands
    return Image.fromarray(np.clip(table, 0, 255).astype(np.uint8), mode="RGB")


def boot_silhouette() -> np.ndarray:
    """A made-up ankle boot, light on black, framed as Fashion-MNIST frames its items (the longest side fills the
    28 px, the other centred): no real data needed."""
    garment = np.zeros((28, 28), dtype=np.float32)
    garment[4:24, 16:27] = 0.8  # the shaft
    garment[14:24, 0:28] = 0.9  # the foot
    garment[18:20, 2:25] = 1.0  # a seam
    return np.round(garment * 255).astype(np.uint8)


def correlation(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=np.float32).ravel(), np.asarray(b, dtype=np.float32).ravel())[0, 1])


def test_a_phone_photo_is_converted_like_the_training_images():
    from ecaml.config import TrainConfig
    from ecaml.serve.inputs import converted_upload, model_view

    garment = boot_silhouette()
    photo = phone_photo(garment)
    config = TrainConfig(dataset="fashion-mnist").resolved()
    converted = converted_upload(photo, config)
    assert converted.mode == "L" and converted.size == (28, 28)
    assert correlation(converted, garment) > 0.9
    # Without the conversion the model would see a light picture with a small dark smudge: nothing like the data.
    assert correlation(model_view(photo, config), garment) < 0.5
    corners = np.asarray(converted)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() < 30  # black background, as in Fashion-MNIST
    # Other data sets keep their pictures as they are (their own rules, if any, are theirs).
    assert converted_upload(photo, TrainConfig(dataset="digits").resolved()) is photo


def test_photos_of_real_shoes_and_bags_come_back_as_their_fashion_mnist_images():
    real_files_or_skip()
    from ecaml.config import TrainConfig
    from ecaml.serve.inputs import converted_upload, model_view

    dataset = load_split("fashion-mnist").dataset
    config = TrainConfig(dataset="fashion-mnist").resolved()
    converted, unconverted = [], []
    for label in (5, 7, 8, 9):  # sandals, sneakers, bags, ankle boots: the first ten of each
        for index in np.flatnonzero(dataset.labels == label)[:10]:
            photo = phone_photo(dataset.arrays[index], seed=int(index))
            converted.append(correlation(converted_upload(photo, config), dataset.arrays[index]))
            unconverted.append(correlation(model_view(photo, config), dataset.arrays[index]))
    # Not every item fills its frame as the data set's cropping made it, so some come back a little larger.
    assert np.mean(converted) > 0.9 and min(converted) > 0.6
    assert np.mean(unconverted) < 0.3
