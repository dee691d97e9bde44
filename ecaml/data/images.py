"""Opening image files safely: size limits, mode conversion, one-line errors.

Everything that reads a user's image (dataset folders, uploads in the app) goes
through ``open_image`` so a decompression bomb, a truncated file or an odd mode
(CMYK, 16-bit, palette, alpha) is handled the same way everywhere.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

# 40 megapixels is far beyond any metric-learning benchmark image, and small
# enough that a hostile file cannot exhaust memory while decoding.
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An image that cannot be used, with a one-line reason naming it."""


def open_image(source: str | os.PathLike | bytes, mode: str = "RGB", name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or raw bytes) fully into a ``mode`` image.

    Raises ImageError naming the file for anything that is not a complete,
    reasonably sized image.
    """
    with _opened(source, name) as image:
        image.load()
        return _convert(image, mode)


def check_image(path: str | os.PathLike) -> None:
    """Raise ImageError naming ``path`` unless it decodes to the end; cheap enough for every file of a dataset.

    JPEGs are decoded at 1/8 scale (``draft``): the whole compressed stream is
    still read, so a truncated file is caught, at a fraction of the cost. Other
    formats are decoded fully (``verify()`` alone misses truncated GIFs and BMPs).
    """
    with _opened(path, None) as image:
        image.draft(None, (1, 1))
        image.load()


@contextmanager
def _opened(source: str | os.PathLike | bytes, name: str | None):
    """The PIL image of ``source``, size-checked before decoding, every failure an ImageError naming it."""
    label = name or (os.fspath(source) if not isinstance(source, bytes) else "upload")
    if (isinstance(source, bytes) and not source) or (not isinstance(source, bytes) and _is_empty_file(source)):
        raise ImageError(f"{label}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
            with handle, Image.open(handle) as image:
                _check_size(image, label)
                yield image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image too large (over {MAX_IMAGE_PIXELS:,} pixels), refused") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format; use PNG, JPEG, BMP, GIF, TIFF or WebP)") from None
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        detail = " ".join(str(error).split()) or error.__class__.__name__  # PIL messages may span lines
        raise ImageError(f"{label}: unreadable or truncated image ({detail})") from None


def _is_empty_file(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False  # missing or unreadable: opening it gives the precise error


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image has no pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{label}: image too large ({width}x{height} pixels), refused")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to ``mode`` ("RGB" or "L"), flattening alpha on black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        image = image.point(lambda value: value * (255.0 / 65535.0)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)

