"""Images as the pages show them: enlarged, and framed by whether a neighbour has the query's class."""

from __future__ import annotations

from PIL import Image, ImageOps


VERDICT_COLOURS = {True: (34, 160, 70), False: (214, 39, 40), None: (160, 160, 160)}  # green, red, grey


def enlarged(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled so its longer side is ``size`` pixels; tiny images keep crisp pixels."""
    width, height = image.size
    scale = size / max(width, height)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)


def framed(image: Image.Image, verdict: bool | None, size: int, border: int = 5) -> Image.Image:
    """A thumbnail with a green (right class), red (wrong class) or grey (unknown) frame."""
    picture = enlarged(image, size).convert("RGB")
    return ImageOps.expand(picture, border=border, fill=VERDICT_COLOURS[verdict])
