"""Bad dataset folders and bad images: clear errors naming the file, odd modes converted, bombs refused.

Policy under test: every image of a folder dataset is checked when the folder
is loaded (decoded once per file version, remembered on disk), so a truncated or
foreign file stops ``train`` before the first step (naming the file) instead of
killing it mid-epoch.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ecaml.data import DatasetError, ImageError, load_image_folder, open_image
from ecaml.data.images import check_image


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Image-check results of these hostile folders go to the test's own cache folder."""
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path / "cache"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noisy_jpeg(size: int = 96) -> bytes:
    """Noise compresses badly, so the entropy-coded data is most of the file and a cut lands inside it."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_folder(root, classes: int = 4, per_class: int = 3):
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            image = Image.new("RGB", (16, 16), (label * 60, index * 80, 0))
            (root / f"class{label}" / f"{index}.png").write_bytes(png_bytes(image))
    return root


BAD_FILES = {
    "truncated.png": (lambda: png_bytes(Image.effect_noise((64, 64), 50))[:-300], "unreadable or truncated image"),
    "truncated.jpg": (lambda: noisy_jpeg()[: len(noisy_jpeg()) * 2 // 3], "unreadable or truncated image"),
    "random.jpg": (lambda: np.random.default_rng(1).bytes(2048), "not an image (unrecognised format; use PNG, JPEG, BMP, GIF, TIFF or WebP)"),
    "text.png": (lambda: b"this is not a picture\n", "not an image (unrecognised format; use PNG, JPEG, BMP, GIF, TIFF or WebP)"),
    "empty.png": (lambda: b"", "the file is empty"),
    "bomb.png": (lambda: png_claiming(50_000, 50_000), "image too large"),
    "just-over-limit.png": (lambda: png_claiming(7_000, 7_000), "image too large (7000x7000 pixels), refused"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_in_a_folder_is_refused_at_load_naming_it(name, tmp_path, fault_case):
    fault_case()
    root = make_folder(tmp_path / "data")
    make_bytes, reason = BAD_FILES[name]
    bad = root / "class2" / name
    bad.write_bytes(make_bytes())
    with pytest.raises(DatasetError) as raised:
        load_image_folder(root)
    message = str(raised.value)
    assert f"{bad}: {reason}" in message and "has 1 unusable image(s)" in message and "\n" not in message


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_bytes_are_an_image_error(name, fault_case):
    """The same files as uploads (bytes): the app's path into open_image."""
    fault_case()
    make_bytes, reason = BAD_FILES[name]
    with pytest.raises(ImageError, match=reason.split(" (")[0].replace("(", r"\(")):
        open_image(make_bytes(), "RGB", name="upload.png")


def test_many_bad_images_are_counted_and_the_first_named(tmp_path, fault_case):
    fault_case()
    root = make_folder(tmp_path / "data", per_class=4)
    for label in range(4):
        (root / f"class{label}" / "0.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"has 4 unusable image\(s\): .*class0/0.png: not an image .*; and 1 more$"):
        load_image_folder(root)


def test_training_on_a_folder_with_a_truncated_image_stops_before_step_one(tmp_path, cli, fault_case):
    fault_case()
    root = make_folder(tmp_path / "data")
    bad = root / "class1" / "cut.jpg"
    bad.write_bytes(noisy_jpeg()[:3000])
    out = tmp_path / "run"
    result = cli("train", "--dataset", "folder", "--data-root", root, "--max-steps", "2", "--quiet", "--out", out)
    assert result.code == 2
    assert str(bad) in result.one_error_line()
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "layout, reason",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty", "has no class sub-folders"),
        ("only-files", "has no class sub-folders"),
        ("too-few-classes", "has 3 usable classes; at least 4"),
    ],
)
def test_unusable_folder_layouts(layout, reason, tmp_path, cli, fault_case):
    fault_case()
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("not a folder")
    elif layout == "empty":
        root.mkdir()
    elif layout == "only-files":
        root.mkdir()
        (root / "a.png").write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    elif layout == "too-few-classes":
        make_folder(root, classes=3)
    with pytest.raises(DatasetError, match=reason):
        load_image_folder(root)
    result = cli("train", "--dataset", "folder", "--data-root", root, "--quiet", "--out", tmp_path / "run")
    assert result.code == 2 and reason in result.one_error_line()


def test_a_class_with_one_image_is_skipped_with_a_warning_naming_it(tmp_path, fault_case):
    fault_case()
    root = make_folder(tmp_path / "data")
    (root / "lonely").mkdir()
    (root / "lonely" / "only.png").write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    with pytest.warns(UserWarning, match=r"skipped classes with fewer than 2 images: lonely \(1 image\)"):
        dataset = load_image_folder(root)
    assert "lonely" not in dataset.class_names and len(dataset.class_names) == 4


def mode_image(mode: str) -> Image.Image:
    """A 2x1 image of ``mode`` whose expected conversions are known (see ODD_MODES)."""
    if mode == "I;16":
        image = Image.new("I;16", (2, 1))
        image.putpixel((0, 0), 65535)
        image.putpixel((1, 0), 0)
        return image
    if mode == "P":
        image = Image.new("P", (2, 1))
        image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        image.putpixel((0, 0), 0)
        image.putpixel((1, 0), 1)
        image.info["transparency"] = 1  # the blue pixel is see-through
        return image
    colours = {"RGBA": [(255, 0, 0, 255), (255, 0, 0, 0)], "LA": [(200, 255), (200, 0)], "L": [200, 50],
               "1": [1, 0], "CMYK": [(0, 0, 0, 0), (0, 0, 0, 255)]}[mode]
    image = Image.new(mode, (2, 1))
    for x, colour in enumerate(colours):
        image.putpixel((x, 0), colour)
    return image


# mode -> (file format, expected RGB of the two pixels); alpha is flattened onto black.
ODD_MODES = {
    "CMYK": ("TIFF", [(255, 255, 255), (0, 0, 0)]),
    "I;16": ("PNG", [(255, 255, 255), (0, 0, 0)]),
    "P": ("PNG", [(255, 0, 0), (0, 0, 0)]),
    "RGBA": ("PNG", [(255, 0, 0), (0, 0, 0)]),
    "LA": ("PNG", [(200, 200, 200), (0, 0, 0)]),
    "L": ("PNG", [(200, 200, 200), (50, 50, 50)]),
    "1": ("PNG", [(255, 255, 255), (0, 0, 0)]),
}


@pytest.mark.parametrize("mode", list(ODD_MODES))
def test_odd_modes_are_converted_not_clipped(mode, tmp_path, fault_case):
    fault_case()
    file_format, expected = ODD_MODES[mode]
    path = tmp_path / f"odd.{file_format.lower()}"
    mode_image(mode).save(path, file_format)
    assert Image.open(path).mode == mode  # the file really holds the odd mode
    rgb = open_image(path, "RGB")
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0)) for x in range(2)] == expected
    grey = open_image(path, "L")
    assert grey.mode == "L" and grey.size == (2, 1)
    check_image(path)


def test_cmyk_jpeg_decodes(tmp_path, fault_case):
    fault_case()
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(path, "JPEG")
    red, green, blue = open_image(path, "RGB").getpixel((5, 5))
    assert red > 200 and green < 60 and blue > 200  # magenta ink: red + blue light


def test_a_folder_of_odd_modes_loads_as_rgb(tmp_path, fault_case):
    fault_case()
    root = tmp_path / "data"
    for index, mode in enumerate(ODD_MODES):
        folder = root / f"class{index}"
        folder.mkdir(parents=True)
        for copy in range(2):
            mode_image(mode).save(folder / f"{copy}.{ODD_MODES[mode][0].lower()}", ODD_MODES[mode][0])
    dataset = load_image_folder(root)
    assert all(dataset.image(i).mode == "RGB" for i in range(len(dataset)))
