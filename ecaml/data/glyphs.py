"""The glyph set: a deterministic many-class image dataset rendered from matplotlib's fonts.

This module owns the class table (which characters make up a class), the choice
of fonts, and the rendering of 32x32 grayscale images. It is the built-in
"CUB-like" zero-shot benchmark: the seen/unseen split made elsewhere trains on
the first half of the class ids and tests on the second half.

Classes. The characters are the basic Latin, Greek and Russian Cyrillic
alphabets (upper and lower case, with Greek final sigma and Cyrillic Yo) and the
digits. Characters that look alike once rendered and size-normalised are one
class (``_LOOKALIKE_CLASSES``): a classifier could not tell them apart, so
keeping them apart would only add label noise.

Class order. ``GLYPH_CLASSES`` is the canonical table (grouped by script) put
through a fixed permutation (``numpy.random.default_rng(12345)``), so that both
halves of the class ids mix Latin, Greek, Cyrillic and digit classes. Changing
the table or the permutation seed changes every class id.

Fonts. Only the matplotlib font files that carry most of the characters are
candidates (the TeX-encoded ``cm*10`` files, STIX size variants and the DejaVu
"Display" files are not), and a font is used for a class only if it contains
every code point of the class. A few fonts draw some characters in a different
shape from the class (``_DIFFERENT_SHAPES``); those fonts draw only the other
members of the class.

Images. Each image draws, from a generator seeded by ``(seed, class id)``, a
font, a member character, a size (the larger side of the ink box is 50-85% of
the frame, less if the rotated glyph would not fit), a rotation (up to 15
degrees either way) and a shift (up to 3/32 of the frame, less if the glyph
would leave the frame), after centring the glyph by its ink bounding box. Glyphs are drawn
once per (font, character) at a high resolution, transformed on a 4x canvas and
box-averaged down, which anti-aliases them. Ink is white (255) on black (0).
"""

from __future__ import annotations

import functools
import math
import pathlib

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

# Characters drawn alike are one class; the first member names the class. Lower
# case letters that are the upper case shape at a smaller size (c/C, o/O, and the
# Cyrillic small-capital forms like к/К) share the class too, because every
# image is scaled to the same size.
_LOOKALIKE_CLASSES: list[str] = [
    # Latin capitals with their Greek and Cyrillic twins.
    "A Α А", "B Β В в", "C c С с", "D", "E Ε Е", "F", "G", "H Η Н н",
    "I Ι l",  # a plain vertical bar in the sans-serif fonts
    "J", "K Κ К к κ", "L", "M Μ М м", "N Ν",
    "O o 0 Ο ο О о",  # digit zero is only a narrower O
    "P Ρ Р", "Q", "R", "S s", "T Τ Т т", "U", "V v", "W w", "X x Χ Х х",
    "Y Υ", "Z z Ζ",
    # Latin lower case that differs from its capital.
    "a а", "b", "d", "e е", "f", "g", "h", "i", "j", "k", "m", "n",
    "p р ρ",  # Greek rho is a p whose stem joins the bowl
    "q", "r", "t", "u", "y у",
    # Digits (0 is with O).
    "1", "2",
    "3 З з",  # Cyrillic Ze is drawn as a 3 in these fonts
    "4", "5", "6", "7", "8", "9",
    # Greek capitals without a Latin twin.
    "Γ Г г", "Δ", "Θ", "Λ", "Ξ", "Π П п", "Σ",
    "Φ Ф",
    "Ψ ψ",  # lower case psi is the capital with rounder arms
    "Ω",
    # Greek lower case.
    "α", "β", "γ", "δ", "ε", "ζ", "η", "θ", "ι", "λ", "μ", "ν", "ξ", "π", "σ", "ς",
    "τ", "υ", "φ ф", "χ", "ω",
    # Cyrillic without a Latin or Greek twin; most lower case forms are small capitals.
    "Б", "б", "Д д", "Ё", "ё", "Ж ж", "И и", "Й й", "Л л", "У", "Ц ц", "Ч ч", "Ш ш",
    "Щ щ", "Ъ ъ", "Ы ы", "Ь ь", "Э э", "Ю ю", "Я я",
]

# Fonts whose glyph for a character is a different shape from the rest of its
# class: true italics draw Cyrillic г д и п т ш ... like s ∂ u n m w, and DejaVu
# Sans Mono puts a dot inside its zero. These fonts draw only the other members.
_TRUE_ITALIC_CYRILLIC = "вгдийптцшщъь"
_DIFFERENT_SHAPES: dict[str, str] = {
    "DejaVuSerif-Italic.ttf": _TRUE_ITALIC_CYRILLIC,
    "DejaVuSerif-BoldItalic.ttf": _TRUE_ITALIC_CYRILLIC,
    "STIXGeneralItalic.ttf": _TRUE_ITALIC_CYRILLIC,
    "STIXGeneralBolIta.ttf": _TRUE_ITALIC_CYRILLIC,
    "DejaVuSansMono.ttf": "0",
    "DejaVuSansMono-Bold.ttf": "0",
    "DejaVuSansMono-Oblique.ttf": "0",
    "DejaVuSansMono-BoldOblique.ttf": "0",
}

# A last-resort font maps every code point to a placeholder box, so its coverage
# says nothing about its glyphs.
_PLACEHOLDER_FONTS = frozenset({"LastResortHE-Regular.ttf"})

_CLASS_ORDER_SEED = 12345
_MIN_FONTS_PER_CLASS = 3

_SUPERSAMPLING = 4  # images are drawn at 4x and box-averaged down
_MASTER_FONT_SIZE = 160  # pixels per em of the once-per-glyph master drawing
_SIZE_RANGE = (0.50, 0.85)  # larger side of the ink box, as a fraction of the frame
_MAX_ROTATION_DEGREES = 15.0
_MAX_SHIFT_FRACTION = 3 / 32  # of the frame, per axis
_MARGIN_PIXELS = 1  # a rotated and shifted glyph stays this far inside each edge


def _permuted_classes() -> list[tuple[str, ...]]:
    canonical = [tuple(group.split()) for group in _LOOKALIKE_CLASSES]
    order = np.random.default_rng(_CLASS_ORDER_SEED).permutation(len(canonical))
    return [canonical[i] for i in order]


GLYPH_CLASSES: list[tuple[str, ...]] = _permuted_classes()


def _class_name(members: tuple[str, ...]) -> str:
    return " ".join(members)


def _font_directory() -> pathlib.Path:
    return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def _covered_characters(font_path: pathlib.Path) -> frozenset[str]:
    font = FT2Font(str(font_path))
    characters = {ch for members in GLYPH_CLASSES for ch in members}
    return frozenset(ch for ch in characters if font.get_char_index(ord(ch)) != 0)


@functools.lru_cache(maxsize=1)
def _candidate_fonts() -> tuple[pathlib.Path, ...]:
    # Requiring most of the characters drops the TeX-encoded cm*10 files (their
    # ASCII slots partly hold math symbols), the STIX size variants and the empty
    # DejaVu Display files.
    total = sum(len(members) for members in GLYPH_CLASSES)
    paths = sorted(_font_directory().glob("*.ttf"), key=lambda path: path.name)
    return tuple(
        path
        for path in paths
        if path.name not in _PLACEHOLDER_FONTS and 2 * len(_covered_characters(path)) >= total
    )


def _faithful_members(class_index: int, font_path: pathlib.Path) -> tuple[str, ...]:
    """The members this font draws in the class's shape; empty if it misses any member."""
    members = GLYPH_CLASSES[class_index]
    if not set(members) <= _covered_characters(font_path):
        return ()
    different = _DIFFERENT_SHAPES.get(font_path.name, "")
    return tuple(ch for ch in members if ch not in different)


@functools.lru_cache(maxsize=None)
def _class_fonts(class_index: int) -> tuple[tuple[pathlib.Path, tuple[str, ...]], ...]:
    """(font, members it draws) for every font used for the class, in font-name order."""
    usable = []
    for path in _candidate_fonts():
        members = _faithful_members(class_index, path)
        if members:
            usable.append((path, members))
    if len(usable) < _MIN_FONTS_PER_CLASS:
        name = _class_name(GLYPH_CLASSES[class_index])
        raise RuntimeError(f"glyph class {name!r} has only {len(usable)} usable fonts in {_font_directory()}")
    return tuple(usable)


def glyph_fonts() -> list[pathlib.Path]:
    """The matplotlib font files used by at least one class, sorted by file name."""
    used = {path for index in range(len(GLYPH_CLASSES)) for path, _ in _class_fonts(index)}
    return sorted(used, key=lambda path: path.name)


def fonts_for_class(class_index: int) -> list[pathlib.Path]:
    """The font files that images of class ``class_index`` are drawn from, sorted by file name."""
    if not 0 <= class_index < len(GLYPH_CLASSES):
        raise IndexError(f"class index {class_index} is outside 0..{len(GLYPH_CLASSES) - 1}")
    return [path for path, _ in _class_fonts(class_index)]


@functools.lru_cache(maxsize=None)
def _load_font(font_path: pathlib.Path) -> ImageFont.FreeTypeFont:
    # The basic layout engine needs no libraqm and is all a single character needs.
    return ImageFont.truetype(str(font_path), _MASTER_FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=None)
def _master_glyph(font_path: pathlib.Path, character: str) -> Image.Image:
    """The character drawn once at the master size, cropped to its ink bounding box."""
    font = _load_font(font_path)
    left, top, right, bottom = font.getbbox(character)
    margin = _MASTER_FONT_SIZE // 4  # getbbox can be a pixel or two short of the ink
    canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
    ImageDraw.Draw(canvas).text((margin - left, margin - top), character, fill=255, font=font)
    ink_box = canvas.getbbox()
    if ink_box is None:
        raise RuntimeError(f"{font_path.name} draws no ink for {character!r}")
    return canvas.crop(ink_box)


def _place_glyph(glyph: Image.Image, size: int, size_fraction: float, degrees: float, shift: np.ndarray) -> np.ndarray:
    """Scale, rotate about the ink-box centre and shift the glyph into a ``size`` frame."""
    canvas_side = size * _SUPERSAMPLING
    fit_side = (size - 2 * _MARGIN_PIXELS) * _SUPERSAMPLING
    width, height = glyph.size
    scale = size_fraction * canvas_side / max(width, height)
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotated_extent = scale * np.array([width * abs(cos) + height * abs(sin), width * abs(sin) + height * abs(cos)])
    overflow = rotated_extent.max() / fit_side
    if overflow > 1:
        scale /= overflow
        rotated_extent /= overflow
    # Shift only as far as keeps the whole glyph inside the frame.
    room = (fit_side - rotated_extent) / 2
    offset = np.clip(shift * _SUPERSAMPLING, -room, room)
    target_x, target_y = canvas_side / 2 + offset[0], canvas_side / 2 + offset[1]
    # PIL's affine transform maps each output pixel back to an input position.
    a, b = cos / scale, sin / scale
    d, e = -sin / scale, cos / scale
    c = width / 2 - a * target_x - b * target_y
    f = height / 2 - d * target_x - e * target_y
    affine = (a, b, c, d, e, f)
    drawn = glyph.transform((canvas_side, canvas_side), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR)
    return np.asarray(drawn.reduce(_SUPERSAMPLING))


def _render_class(class_index: int, count: int, seed: int, size: int) -> np.ndarray:
    fonts = _class_fonts(class_index)
    rng = np.random.default_rng([seed, class_index])
    font_choice = rng.integers(len(fonts), size=count)
    member_draw = rng.random(count)
    size_fraction = rng.uniform(*_SIZE_RANGE, size=count)
    degrees = rng.uniform(-_MAX_ROTATION_DEGREES, _MAX_ROTATION_DEGREES, size=count)
    shift = rng.uniform(-1.0, 1.0, size=(count, 2)) * (_MAX_SHIFT_FRACTION * size)
    images = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        font_path, members = fonts[font_choice[i]]
        character = members[int(member_draw[i] * len(members))]
        images[i] = _place_glyph(_master_glyph(font_path, character), size, size_fraction[i], degrees[i], shift[i])
    return images


@functools.lru_cache(maxsize=4)
def _render_all(images_per_class: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    images = np.concatenate([_render_class(index, images_per_class, seed, size) for index in range(len(GLYPH_CLASSES))])
    labels = np.repeat(np.arange(len(GLYPH_CLASSES), dtype=np.int64), images_per_class)
    # The cached arrays are shared by every caller, so nobody may write to them.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels, tuple(_class_name(members) for members in GLYPH_CLASSES)


def render_glyphs(
    images_per_class: int = 60, seed: int = 0, size: int = 32
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """images uint8 [N, size, size], labels int64 [N] (class ids 0..C-1), class_names list[str] of length C.

    Images come class by class, ``images_per_class`` each. The same arguments give
    byte-identical arrays in any process; results are cached in memory and the
    returned arrays are read-only.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    images, labels, class_names = _render_all(int(images_per_class), int(seed), int(size))
    return images, labels, list(class_names)
