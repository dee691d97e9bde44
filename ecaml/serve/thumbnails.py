"""Sprite sheets of a split's images: small thumbnails packed 16 x 16 per JPEG, for an embedding map's hover.

The Embedding Projector's approach: one request brings 256 thumbnails, so hovering
across a 60,000-image map costs a few hundred small files, fetched as needed, not
one request per point and not one huge image. Image ``p`` of a split (its
position in ``ClassSplit.indices(part)``, which is sorted) is cell ``p % 256`` of
sheet ``p // 256``, row-major. Sheets are written atomically, one by one, so a
reader can use the first ones while later ones are still being made; a
``complete.json`` written last says the folder is whole.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ecaml.data import ClassSplit
from ecaml.store.atomic import atomic_write_bytes

THUMBNAIL_PIXELS = 48
SHEET_COLUMNS = 16
PER_SHEET = SHEET_COLUMNS * SHEET_COLUMNS
SHEETS_FORMAT = 1
COMPLETE_FILE = "complete.json"
BACKGROUND = (240, 240, 242)


def sheets_key(identity: dict) -> str:
    """A short name for the sheets of one split: sha256 of what decides its images (data, split) and the format."""
    record = {"format": SHEETS_FORMAT, "pixels": THUMBNAIL_PIXELS, "columns": SHEET_COLUMNS, **identity}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sheet_name(number: int) -> str:
    return f"sheet_{number:05d}.jpg"


def sheet_count(image_count: int) -> int:
    return -(-image_count // PER_SHEET)


def slots(split: ClassSplit, part: str, dataset_indices: np.ndarray) -> np.ndarray:
    """Each dataset index's slot (position in the split's sorted indices), -1 for an image not in that split."""
    members = split.indices(part)
    positions = np.searchsorted(members, dataset_indices)
    clipped = np.minimum(positions, max(len(members) - 1, 0))
    found = (positions < len(members)) & (members[clipped] == dataset_indices) if len(members) else positions < 0
    return np.where(found, positions, -1).astype(np.int64)


def is_complete(folder: Path, image_count: int) -> bool:
    try:
        return json.loads((Path(folder) / COMPLETE_FILE).read_text()).get("images") == image_count
    except (OSError, ValueError, AttributeError):
        return False


def write_sheets(
    split: ClassSplit, part: str, folder: Path, progress: Callable[[int, int], None] | None = None
) -> int:
    """Write the missing sheets of ``part`` into ``folder`` (``progress(done, total)`` after each); returns how many."""
    folder = Path(folder)
    members = split.indices(part)
    if is_complete(folder, len(members)):
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    total, written = sheet_count(len(members)), 0
    for number in range(total):
        path = folder / sheet_name(number)
        if not path.is_file():
            chunk = members[number * PER_SHEET : (number + 1) * PER_SHEET]
            atomic_write_bytes(path, _sheet_bytes([split.dataset.image(int(i)) for i in chunk]))
            written += 1
        if progress is not None:
            progress(number + 1, total)
    atomic_write_bytes(folder / COMPLETE_FILE, json.dumps({"images": len(members), "sheets": total}).encode())
    return written


def _sheet_bytes(images: list[Image.Image]) -> bytes:
    rows = -(-len(images) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * THUMBNAIL_PIXELS, rows * THUMBNAIL_PIXELS), BACKGROUND)
    for cell, image in enumerate(images):
        thumbnail = _thumbnail(image)
        x = (cell % SHEET_COLUMNS) * THUMBNAIL_PIXELS + (THUMBNAIL_PIXELS - thumbnail.width) // 2
        y = (cell // SHEET_COLUMNS) * THUMBNAIL_PIXELS + (THUMBNAIL_PIXELS - thumbnail.height) // 2
        sheet.paste(thumbnail, (x, y))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _thumbnail(image: Image.Image) -> Image.Image:
    """The image fitted into the cell; tiny images are enlarged with crisp pixels (nearest), large ones smoothly."""
    image = image.convert("RGB")
    scale = THUMBNAIL_PIXELS / max(image.size)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample)
