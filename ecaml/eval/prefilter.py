"""Threshold-fed narrowing of deep top-k selections: exact, only cheaper.

A deep list (MAP@R with R around a tenth of the gallery) needs each row's ``depth`` best
entries in order. Keying and partially sorting every entry of an N-wide row costs far more
than the matrix product that made the row. Instead each row's ``depth``-th largest value is
estimated from a sample of its columns, a threshold a few standard deviations below that
estimate is taken, and only the entries at or above it (typically ~1.3 x depth of them) go on
to the exact selection, compacted in ascending column order with their columns.

Exactness does not rest on the estimate: a row is narrowed only when at least ``depth`` of
its entries pass the threshold (counted, not guessed). Then its ``depth``-th best value is at or
above the threshold, so every entry of its top ``depth`` (ties included, whichever column wins
them) passed, and the narrowed row has the same top ``depth`` as the full one. Rows with fewer
passing entries (the guess was too high) are reported back for the full selection.
"""

from __future__ import annotations

import numpy as np

# Columns sampled per row to guess its threshold, and how many standard deviations of the
# sample's count the guess stays on the safe side (a row falls back with probability ~1e-5).
SAMPLE_COLUMNS = 1024
SAFETY_SIGMAS = 4.5
# Narrowing pays only when the rows it keeps are at most this share of the full width.
MAX_KEPT_SHARE = 0.5


def sample_plan(width: int, depth: int) -> tuple[np.ndarray, int] | None:
    """(sampled columns, rank of the threshold among them, 1 = largest), or None when narrowing rows of
    ``width`` to their ``depth`` best would keep too large a share of them to pay."""
    columns = spread_columns(width, SAMPLE_COLUMNS)
    expected = len(columns) * depth / width
    rank = int(np.ceil(expected + SAFETY_SIGMAS * np.sqrt(expected) + 2))
    if rank > len(columns) or rank / len(columns) > MAX_KEPT_SHARE:
        return None
    return columns, rank


def spread_columns(width: int, count: int) -> np.ndarray:
    """About ``count`` distinct columns of ``width``, ascending, evenly spread: a fixed stride with a fixed
    random offset in each stride, so that a gallery sorted by class still gives every class its share."""
    stride = width / min(count, width)
    offsets = np.random.default_rng(0).random(min(count, width))
    return np.unique(np.minimum((np.arange(len(offsets)) + offsets) * stride, width - 1).astype(np.int64))


def thresholds(rows: np.ndarray, plan: tuple[np.ndarray, int]) -> np.ndarray:
    """Each row's guessed threshold: the ``rank``-th largest of its sampled columns."""
    columns, rank = plan
    sampled = rows[:, columns]
    return np.partition(sampled, len(columns) - rank, axis=1)[:, len(columns) - rank]


def narrowed(rows: np.ndarray, limits: np.ndarray, depth: int):
    """The entries of each row at or above its limit, as flat arrays in row-major order (ascending
    columns within a row), for the rows with at least ``depth`` of them.

    Returns ``(kept, values, columns, slots, counts)``: the indices of those rows; each passing entry's
    value, column and ``slot``, ``row * width + position in its row`` in a ``[len(kept), width]`` table
    with ``width = counts.max()``; and each kept row's number of entries.
    """
    count, width = rows.shape
    flat = np.flatnonzero(rows >= limits[:, None])  # one pass; far cheaper than a 2-D np.nonzero
    counts = np.diff(np.searchsorted(flat, np.arange(count + 1) * width))
    enough = counts >= depth
    kept = np.flatnonzero(enough)
    if len(kept) < count:
        flat = flat[np.repeat(enough, counts)]
        counts = counts[kept]
    if len(kept) == 0:
        return kept, None, None, None, counts
    row_in_kept = np.repeat(np.arange(len(kept)), counts)
    table_width = int(counts.max())
    starts = np.cumsum(counts) - counts
    slots = row_in_kept * table_width + (np.arange(len(flat)) - starts[row_in_kept])
    columns = flat - kept[row_in_kept] * width
    return kept, rows.reshape(-1)[flat], columns, slots, counts
