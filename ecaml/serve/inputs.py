"""What a run's model sees of any image, and whether that image looks like the data the model was trained on.

An uploaded picture goes through the run's evaluation transform (channels, resize, crop, normalisation) before it is
embedded. ``model_view`` undoes only the normalisation, so a page can show exactly those pixels. ``input_statistics``
measures the same view over a sample of the data set, and ``check_input`` compares an image with it: a digit drawn
black on white, when the data set is white ink on black, is the usual reason an upload returns nonsense.
``as_data_set_image`` frames an upload as the data set's images were made (cropped to its ink, centred, padded to a
square with the data set's margin) before that transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from torchvision import transforms as T

from ecaml.config import TrainConfig
from ecaml.data.base import ImageSet
from ecaml.data.images import _convert as convert_image_mode
from ecaml.eval.evaluate import eval_transform
from ecaml.runs import input_channels

SAMPLE_IMAGES = 256
# How far an image's background may sit from the data set's, on the 0-1 scale, before it is called inverted.
INVERTED_BACKGROUND_GAP = 0.4
# An image whose contrast is below this share of the data set's typical contrast is called flat.
FLAT_CONTRAST_SHARE = 0.3
INK_LEVEL = 0.25  # how far (0-1) a pixel's level must sit from the background's to count as ink


@dataclass(frozen=True)
class InputStatistics:
    """Pixel statistics (0 = black, 1 = white) of what the model sees, averaged over a sample of a data set."""

    background: float  # mean brightness of the outer ring of pixels
    brightness: float  # mean brightness of the whole image
    contrast: float  # mean per-image standard deviation
    ink_extent: float = 1.0  # mean share of the image's side that the ink's bounding box spans (its longer side)


@dataclass(frozen=True)
class InputFinding:
    """One way an image looks unlike the data: a kind ("inverted", "flat"), a sentence, and whether inverting helps."""

    kind: str
    message: str
    invert_helps: bool


def model_view(image: Image.Image, config: TrainConfig) -> Image.Image:
    """``image`` as the run's model receives it: converted, resized and cropped, before normalisation ("L" or "RGB")."""
    channels = input_channels(config)
    mode = "L" if channels == 1 else "RGB"
    transform = eval_transform(config, channels)
    tensor = transform(convert_image_mode(image, mode))
    normalise = next(step for step in transform.transforms if isinstance(step, T.Normalize))
    mean = np.asarray(normalise.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(normalise.std, dtype=np.float32).reshape(-1, 1, 1)
    pixels = np.clip(tensor.numpy() * std + mean, 0.0, 1.0)
    array = np.round(pixels * 255).astype(np.uint8)
    return Image.fromarray(array[0] if channels == 1 else array.transpose(1, 2, 0), mode=mode)


def _grey_levels(view: Image.Image) -> np.ndarray:
    return np.asarray(view.convert("L"), dtype=np.float32) / 255.0


def _ring(levels: np.ndarray) -> np.ndarray:
    """The outer ring of pixels, where a centred object's background shows."""
    return np.concatenate([levels[0], levels[-1], levels[1:-1, 0], levels[1:-1, -1]])


def _ink_box(levels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), exclusive ends, of the pixels that differ from the background (the outer ring's
    median level) by at least INK_LEVEL; None for an image with no ink."""
    ink = np.abs(levels - np.median(_ring(levels))) >= INK_LEVEL
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def _ink_extent(levels: np.ndarray) -> float:
    box = _ink_box(levels)
    if box is None:
        return 1.0
    left, top, right, bottom = box
    return max(right - left, bottom - top) / max(levels.shape)


def image_statistics(view: Image.Image) -> InputStatistics:
    levels = _grey_levels(view)
    return InputStatistics(float(_ring(levels).mean()), float(levels.mean()), float(levels.std()),
                           _ink_extent(levels))


def as_data_set_image(image: Image.Image, data: InputStatistics) -> Image.Image:
    """``image`` framed as the data set's images were made: cropped to its ink, centred on a square of its own
    background, the ink spanning the share of the side it spans in the data set's images (sklearn's digits fill
    their 8x8 box; a Fashion-MNIST garment sits centred with a margin). The run's transform then resizes it.

    A lecturer's drawing is a small stroke anywhere on a large canvas; resized whole, it became a few grey pixels
    in one corner of an 8x8 image, and no sevens came back for a drawn seven.
    """
    levels = _grey_levels(image)
    box = _ink_box(levels)
    if box is None:
        return image
    cropped = image.crop(box)
    side = max(1, int(np.ceil(max(cropped.size) / min(1.0, max(data.ink_extent, 0.05)))))
    pixels = np.asarray(image)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    paper = np.median(ring, axis=0)
    canvas = Image.new(image.mode, (side, side), tuple(int(v) for v in np.atleast_1d(paper)) if pixels.ndim == 3
                       else int(paper))
    canvas.paste(cropped, ((side - cropped.size[0]) // 2, (side - cropped.size[1]) // 2))
    return canvas


def input_statistics(images: ImageSet, indices: np.ndarray, config: TrainConfig, seed: int = 0) -> InputStatistics:
    """The mean statistics of up to SAMPLE_IMAGES of ``images[indices]`` as the model sees them (a seeded sample)."""
    indices = np.asarray(indices)
    if indices.size == 0:
        raise ValueError("no images to measure the data set's look on")
    chosen = np.random.default_rng(seed).choice(indices, size=min(SAMPLE_IMAGES, indices.size), replace=False)
    each = [image_statistics(model_view(images.image(int(i)), config)) for i in chosen]
    return InputStatistics(
        float(np.mean([s.background for s in each])),
        float(np.mean([s.brightness for s in each])),
        float(np.mean([s.contrast for s in each])),
        float(np.mean([s.ink_extent for s in each])),
    )


def _tone(level: float) -> str:
    return "dark" if level < 0.5 else "light"


def check_input(view: Image.Image, data: InputStatistics) -> list[InputFinding]:
    """The ways ``view`` (a ``model_view``) looks unlike the data set described by ``data``; [] when it fits."""
    mine = image_statistics(view)
    findings = []
    if abs(mine.background - data.background) >= INVERTED_BACKGROUND_GAP and _tone(mine.background) != _tone(
        data.background
    ):
        findings.append(
            InputFinding(
                "inverted",
                f"The training images are {_tone(1 - data.background)} strokes on a {_tone(data.background)} "
                f"background; this one is {_tone(1 - mine.background)} on {_tone(mine.background)}, so it looks "
                "inverted to the model.",
                invert_helps=True,
            )
        )
    if data.contrast > 0 and mine.contrast < FLAT_CONTRAST_SHARE * data.contrast:
        findings.append(
            InputFinding(
                "flat",
                f"After conversion this image is nearly one flat tone (contrast {mine.contrast:.2f} against "
                f"{data.contrast:.2f} for the training images): the model sees almost nothing of it.",
                invert_helps=False,
            )
        )
    return findings


# ----------------------------------------------------------------------------- per data set: outside pictures


# The largest side an upload is cut out at: enough detail for a 28 px result, cheap for a 12-megapixel photo.
CUTOUT_WORKING_SIDE = 512
# A pixel belongs to the object when it stands out from the background by this share of the strongest contrast,
# and by this many times the background's own noise (a dim object on a grainy table is not all noise).
OBJECT_THRESHOLD, NOISE_MULTIPLE = 0.12, 4.0


def as_fashion_mnist(image: Image.Image) -> Image.Image:
    """A photo of a garment or shoe made like Fashion-MNIST's images: greyscale, the object light on black (a light
    background is inverted), cut out at its bounding box, centred with its longest side filling the frame, 28x28.

    That is how Zalando made the data set (trimmed, longest edge resized to 28, negated); a phone photo of a shoe
    on a table only resembles it after the same steps.
    """
    grey = convert_image_mode(image, "L")
    grey.thumbnail((CUTOUT_WORKING_SIDE, CUTOUT_WORKING_SIDE), Image.Resampling.BOX)
    levels = np.asarray(grey, dtype=np.float32) / 255.0
    ring = _ring(levels)
    background = float(np.median(ring))
    noise = 1.4826 * float(np.median(np.abs(ring - background)))  # robust standard deviation of the background
    if background > 0.5:
        levels, background = 1.0 - levels, 1.0 - background
    strength = np.clip(levels - background, 0.0, None)
    peak = float(np.percentile(strength, 99.5))
    rows, columns = np.nonzero(strength > max(OBJECT_THRESHOLD * peak, NOISE_MULTIPLE * noise, 1e-6))
    if len(rows) == 0:
        return grey.resize((28, 28), Image.Resampling.BOX)  # nothing stands out: a flat picture stays flat
    strength = np.clip(strength / peak, 0.0, 1.0)
    cut = strength[rows.min(): rows.max() + 1, columns.min(): columns.max() + 1]
    side = max(cut.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - cut.shape[0]) // 2, (side - cut.shape[1]) // 2
    square[top: top + cut.shape[0], left: left + cut.shape[1]] = cut
    frame = Image.fromarray(np.round(square * 255).astype(np.uint8), mode="L")
    return frame.resize((28, 28), Image.Resampling.LANCZOS)


# Data sets whose pictures were made in a way an outside picture must go through before the model's own transform.
UPLOAD_CONVERSIONS = {"fashion-mnist": as_fashion_mnist}


def converted_upload(image: Image.Image, config: TrainConfig) -> Image.Image:
    """``image`` made like the run's data set's pictures where the data set has a rule (UPLOAD_CONVERSIONS), else as is."""
    conversion = UPLOAD_CONVERSIONS.get(config.dataset)
    return conversion(image) if conversion is not None else image


def inverted(image: Image.Image) -> Image.Image:
    """The photographic negative of ``image`` (alpha flattened on black first, as the model's conversion does)."""
    mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L") else "RGB"
    return ImageOps.invert(convert_image_mode(image, mode))
