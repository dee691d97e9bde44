"""The glyph set: class table, fonts, image contents and determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from matplotlib.ft2font import FT2Font

from ecaml.data.glyphs import GLYPH_CLASSES, fonts_for_class, glyph_fonts, render_glyphs

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PER_CLASS = 60


@pytest.fixture(scope="module")
def default_set():
    return render_glyphs()


def class_of(character: str) -> int:
    return next(index for index, members in enumerate(GLYPH_CLASSES) if character in members)


def test_at_least_100_classes_with_disjoint_members():
    assert len(GLYPH_CLASSES) >= 100
    characters = [ch for members in GLYPH_CLASSES for ch in members]
    assert len(characters) == len(set(characters))
    assert all(len(ch) == 1 for ch in characters)


def test_class_names_are_unique_member_lists(default_set):
    _, _, names = default_set
    assert len(names) == len(GLYPH_CLASSES)
    assert len(set(names)) == len(names)
    assert names == [" ".join(members) for members in GLYPH_CLASSES]


def test_all_basic_alphabets_are_present():
    characters = {ch for members in GLYPH_CLASSES for ch in members}
    latin = {chr(c) for c in range(ord("A"), ord("Z") + 1)} | {chr(c) for c in range(ord("a"), ord("z") + 1)}
    digits = set("0123456789")
    greek = {chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2} | {chr(c) for c in range(0x3B1, 0x3CA)}
    cyrillic = {chr(c) for c in range(0x410, 0x450)} | {"Ё", "ё"}
    assert latin | digits | greek | cyrillic <= characters


def test_lookalikes_share_a_class_and_distinct_letters_do_not():
    assert class_of("A") == class_of("\u0391") == class_of("\u0410")  # Latin A, Greek Alpha, Cyrillic A
    assert class_of("O") == class_of("o") == class_of("0") == class_of("\u039f") == class_of("\u041e")
    assert class_of("c") == class_of("C") == class_of("\u0441")  # Cyrillic es
    assert class_of("b") != class_of("d")
    assert class_of("p") != class_of("q")
    assert class_of("P") != class_of("p")
    assert class_of("\u0418") != class_of("N")  # Cyrillic I is a mirrored N, not an N


def test_both_halves_mix_every_script():
    half = len(GLYPH_CLASSES) // 2

    def kinds(classes):
        return {unicodedata.name(members[0]).split()[0] for members in classes}

    expected = {"LATIN", "GREEK", "CYRILLIC", "DIGIT"}
    assert kinds(GLYPH_CLASSES[:half]) == expected
    assert kinds(GLYPH_CLASSES[half:]) == expected


def test_shapes_dtypes_and_label_counts(default_set):
    images, labels, names = default_set
    num_classes = len(GLYPH_CLASSES)
    assert images.shape == (num_classes * DEFAULT_PER_CLASS, 32, 32)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat(np.arange(num_classes), DEFAULT_PER_CLASS))


def test_other_sizes_and_counts():
    images, labels, _ = render_glyphs(images_per_class=2, size=48)
    assert images.shape == (2 * len(GLYPH_CLASSES), 48, 48)
    assert np.bincount(labels).tolist() == [2] * len(GLYPH_CLASSES)


def test_every_image_has_ink_on_a_dark_background(default_set):
    images, _, _ = default_set
    flat = images.reshape(len(images), -1)
    assert flat.max(axis=1).min() > 200
    ink_fraction = (flat > 127).mean(axis=1)
    assert ink_fraction.min() > 0.01
    assert ink_fraction.max() < 0.7
    # Ink is the high value: the frame's edge is background.
    edges = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1)
    assert edges.max() < 64


def test_glyphs_are_centred_up_to_the_shift(default_set):
    images, _, _ = default_set
    max_shift = 3 + 1.5  # pixels, plus rounding of the ink box at 32x32
    for image in images[:: DEFAULT_PER_CLASS // 4]:
        rows = np.flatnonzero(image.max(axis=1) > 40)
        cols = np.flatnonzero(image.max(axis=0) > 40)
        centre = np.array([(rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2])
        assert np.abs(centre - 16).max() <= max_shift


def test_images_of_one_class_all_differ(default_set):
    images, labels, _ = default_set
    for class_index in range(len(GLYPH_CLASSES)):
        members = images[labels == class_index]
        assert len({image.tobytes() for image in members}) == len(members)


def test_different_seed_gives_different_images(default_set):
    images, labels, names = default_set
    other_images, other_labels, other_names = render_glyphs(seed=1)
    np.testing.assert_array_equal(labels, other_labels)
    assert names == other_names
    differing = [not np.array_equal(a, b) for a, b in zip(images, other_images)]
    assert np.mean(differing) > 0.95


def test_results_are_cached_and_protected(default_set):
    images, labels, names = default_set
    again_images, again_labels, again_names = render_glyphs()
    assert again_images is images and again_labels is labels
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1
    again_names.append("extra")
    assert render_glyphs()[2] == names


_DIGEST_SCRIPT = """
import hashlib
from ecaml.data.glyphs import render_glyphs
images, labels, names = render_glyphs(images_per_class={per_class}, seed={seed})
digest = hashlib.sha256(images.tobytes() + labels.tobytes() + "|".join(names).encode()).hexdigest()
print(digest)
"""


def digest_in_subprocess(per_class: int, seed: int, hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO_ROOT))
    script = _DIGEST_SCRIPT.format(per_class=per_class, seed=seed)
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_same_seed_gives_identical_bytes_in_separate_processes():
    per_class, seed = 6, 3
    first = digest_in_subprocess(per_class, seed, hash_seed="1")
    second = digest_in_subprocess(per_class, seed, hash_seed="2")
    assert len(first) == 64
    assert first == second
    images, labels, names = render_glyphs(images_per_class=per_class, seed=seed)
    here = hashlib.sha256(images.tobytes() + labels.tobytes() + "|".join(names).encode()).hexdigest()
    assert here == first


def test_each_class_renders_in_at_least_three_fonts_that_cover_it():
    for class_index, members in enumerate(GLYPH_CLASSES):
        fonts = fonts_for_class(class_index)
        assert len(fonts) >= 3, members
        for path in fonts:
            font = FT2Font(str(path))
            assert all(font.get_char_index(ord(ch)) != 0 for ch in members), (path.name, members)


def test_glyph_fonts_are_sorted_matplotlib_text_fonts():
    fonts = glyph_fonts()
    names = [path.name for path in fonts]
    assert names == sorted(names)
    assert all(path.is_file() and path.suffix == ".ttf" for path in fonts)
    assert "DejaVuSans.ttf" in names and "STIXGeneral.ttf" in names
    # TeX-encoded, size-variant and placeholder fonts draw the wrong shapes.
    assert not any(name.startswith(("cm", "STIXSiz", "LastResort")) for name in names)
    used = {path for index in range(len(GLYPH_CLASSES)) for path in fonts_for_class(index)}
    assert used == set(fonts)


def test_fonts_for_class_rejects_unknown_classes():
    with pytest.raises(IndexError):
        fonts_for_class(len(GLYPH_CLASSES))


@pytest.mark.parametrize("bad", [0, -3])
def test_rejects_fewer_than_one_image_per_class(bad):
    with pytest.raises(ValueError, match="images_per_class"):
        render_glyphs(images_per_class=bad)
