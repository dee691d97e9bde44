"""Exact retrieval scores of a set searched against itself, multiplying each pair of rows once.

When the queries are the gallery, the similarity matrix is symmetric: only the tiles on and
above the diagonal are multiplied, and each tile serves its rows as they are and its columns,
transposed, as rows of the other tile. That halves the N^2 d multiply-adds that dominate a
shallow evaluation (R of a few to a few hundred). Rows are never held whole, so the top R of
a row is not selected from the row: each row gets a threshold guessed from a sample of its
columns (``guessed_thresholds``), every entry at or above it is kept as a candidate
(``candidates_above``, typically a few dozen a row), and the scores come from the candidates.

Exactness rests on counts, not on the guess (as in ``ecaml.eval.prefilter``): a row whose
candidates number at least R holds its whole top R (its R-th value is at or above the
threshold, so everything ranked above it passed), and a relevant candidate's position among
the candidates is its exact rank (everything ranked above it passed too). A row with fewer
than R candidates, or with no relevant candidate and fewer candidates than the largest K, is
reported unresolved, for the caller's full-row search.
"""

from __future__ import annotations

import numpy as np
import torch

from ecaml.eval import prefilter
from ecaml.eval.search import ordered_keys

# Rows per tile: a 1024 x 1024 x 512 product runs at full speed on 2 cores, and the tile's
# 4 MiB of similarities stay in cache for the threshold pass that follows it.
TILE_ROWS = 1024
# Columns sampled to guess the thresholds: N / 16, between 256 and 1024. Their product costs
# 1/16 of the full one at most; each row keeps about 16 x its sampled rank of candidates.
SAMPLE_SHARE = 16
SAMPLE_RANGE = (256, 1024)
# Rows whose candidates are sorted together, as one padded table.
_SORT_ROWS = 4096


def self_scores(vectors: np.ndarray, codes: np.ndarray, depths: np.ndarray, largest_k: int, tile: int = TILE_ROWS):
    """Per row of ``vectors`` (unit, float32), searched against the others: the 0-based rank of its first
    relevant neighbour (same code), AP@R and R-Precision with R = ``depths[row]`` (0: not a query), and whether
    the row was resolved; unresolved rows (and rows with depth 0) hold no scores."""
    points = torch.from_numpy(vectors)
    starts, columns = candidates_above(points, guessed_thresholds(points, depths), tile)
    counts = np.diff(starts)
    row = np.repeat(np.arange(len(vectors)), counts)
    position = np.arange(len(columns)) - starts[row]
    relevant = codes[columns] == codes[row]
    first_hit = np.full(len(vectors), -1, dtype=np.int64)
    hit_entries = np.flatnonzero(relevant)
    hit_rows, first = np.unique(row[hit_entries], return_index=True)  # entries are grouped by row
    first_hit[hit_rows] = position[hit_entries[first]]
    ranks = np.where(first_hit >= 0, first_hit, counts)  # no relevant candidate: ranked below all of them
    resolved = (depths > 0) & (counts >= depths) & ((first_hit >= 0) | (counts >= largest_k))
    in_top = relevant & (position < depths[row])
    hits_so_far = np.cumsum(in_top)
    hits_so_far -= np.concatenate([[0], hits_so_far])[starts[row]]  # restart the count at each row
    precision = np.where(in_top, hits_so_far / (position + 1.0), 0.0)
    safe_depths = np.maximum(depths, 1)
    average_precisions = np.bincount(row, weights=precision, minlength=len(vectors)) / safe_depths
    r_precisions = np.bincount(row, weights=in_top, minlength=len(vectors)) / safe_depths
    return ranks, average_precisions, r_precisions, resolved


def guessed_thresholds(points: torch.Tensor, depths: np.ndarray) -> np.ndarray:
    """Per row a float32 threshold that about ``depths[row]`` x a safety margin of the other entries reach
    (+inf for depth 0): the matching rank among sampled columns, as ``prefilter`` guesses it."""
    count = len(points)
    sampled = prefilter.spread_columns(count, int(np.clip(count // SAMPLE_SHARE, *SAMPLE_RANGE)))
    sample = torch.mm(points, points[sampled].T).numpy()
    own = np.flatnonzero(np.isin(np.arange(count), sampled))
    sample[own, np.searchsorted(sampled, own)] = -np.inf  # a row is not its own neighbour
    expected = len(sampled) * depths / count
    ranks = np.minimum(depths, np.ceil(expected + prefilter.SAFETY_SIGMAS * np.sqrt(expected) + 2)).astype(np.int64)
    ranks = np.clip(ranks, 1, len(sampled))
    deepest = int(ranks.max())
    top = -np.partition(-sample, deepest - 1, axis=1)[:, :deepest]
    top.sort(axis=1)
    thresholds = top[np.arange(count), deepest - ranks]  # ascending: the rank-th largest sits deepest - rank in
    # Never -inf (a masked self would pass it), and a hair lower: the tiles' products may round differently.
    thresholds = np.maximum(np.nextafter(thresholds, -np.inf), np.finfo(np.float32).min)
    return np.where(depths > 0, thresholds, np.inf).astype(np.float32)


def candidates_above(points: torch.Tensor, thresholds: np.ndarray, tile: int = TILE_ROWS):
    """Every entry ``(row, column)``, column != row, of ``points @ points.T`` at or above ``thresholds[row]``,
    computing only the tiles on and above the diagonal. Returns ``(starts, columns)``: row ``r``'s candidate
    columns are ``columns[starts[r]:starts[r + 1]]``, by similarity (descending), equal ones by lower column."""
    count = len(points)
    # Tiles start at multiples of ``tile``: equal vectors then sit at the same places of the matrix kernel's
    # blocks in every tile but the last, so that their products round alike and stay tied.
    bounds = np.append(np.arange(0, count, tile), count)
    largest = int(np.diff(bounds).max())
    buffer = torch.empty(largest * largest)
    rows, columns, values = [], [], []
    for top, (row_start, row_stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        for column_start, column_stop in zip(bounds[top:-1], bounds[top + 1:]):
            shape = (row_stop - row_start, column_stop - column_start)
            block = torch.mm(points[row_start:row_stop], points[column_start:column_stop].T,
                             out=buffer[: shape[0] * shape[1]].view(shape)).numpy()
            row_limits, column_limits = thresholds[row_start:row_stop], thresholds[column_start:column_stop]
            if row_start == column_start:
                np.fill_diagonal(block, -np.inf)
                passing = np.flatnonzero(block >= row_limits[:, None])
            else:
                passing = np.flatnonzero((block >= row_limits[:, None]) | (block >= column_limits[None, :]))
            at_row, at_column = np.divmod(passing, shape[1])
            value = block.reshape(-1)[passing]
            by_row = value >= row_limits[at_row]
            rows += [row_start + at_row[by_row]]
            columns += [column_start + at_column[by_row]]
            values += [value[by_row]]
            if row_start != column_start:  # the transposed tile: rows of the column block
                by_column = value >= column_limits[at_column]
                rows += [column_start + at_column[by_column]]
                columns += [row_start + at_row[by_column]]
                values += [value[by_column]]
    return ranked_by_row(np.concatenate(rows), np.concatenate(columns), np.concatenate(values), count)


def ranked_by_row(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, count: int):
    """``(starts, columns)`` of entries grouped by row (``count`` rows), each row's by value (descending),
    equal values by lower column.

    Grouped first (a radix sort when rows fit 16 bits), then each chunk of rows sorted as a padded table
    of ``ordered_keys``: 4x faster than one lexsort of all entries (21 against 83 ms for 580,000).
    """
    grouping = np.argsort(rows.astype(np.uint16) if count <= 1 << 16 else rows, kind="stable")
    rows, keys = rows[grouping], ordered_keys(values[grouping], columns[grouping])
    starts = np.searchsorted(rows, np.arange(count + 1))
    ranked = np.empty_like(keys)
    for first in range(0, count, _SORT_ROWS):
        last = min(first + _SORT_ROWS, count)
        entries = slice(starts[first], starts[last])
        width = int(np.diff(starts[first:last + 1]).max(initial=0))
        if width == 0:
            continue
        row = rows[entries] - first
        position = np.arange(entries.start, entries.stop) - starts[rows[entries]]
        table = np.full((last - first, width), np.iinfo(np.int64).min)  # padding sorts first, never read
        table[row, position] = keys[entries]
        table.sort(axis=1)
        ranked[entries] = table[row, width - 1 - position]
    return starts, np.int64(0xFFFFFFFF) - (ranked & np.int64(0xFFFFFFFF))
