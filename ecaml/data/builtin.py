"""The datasets that need no download: scikit-learn's digits and the glyph set."""

from __future__ import annotations

import functools

import numpy as np

from ecaml.data.base import ImageSet


@functools.lru_cache(maxsize=2)
def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), rescaled to 0-255."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageSet("digits", bunch.target, [str(d) for d in range(10)], channels=1, arrays=images)


def load_glyphs(seed: int = 0, images_per_class: int = 60) -> ImageSet:
    """Letters and digits of three alphabets rendered from matplotlib's fonts."""
    from ecaml.data.glyphs import render_glyphs

    images, labels, class_names = render_glyphs(images_per_class=images_per_class, seed=seed)
    return ImageSet("glyphs", labels, class_names, channels=1, arrays=images)
