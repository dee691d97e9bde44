"""The threshold-fed narrowing of deep selections (ecaml.eval.prefilter) gives exactly the full selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ecaml.eval.prefilter as prefilter
import ecaml.eval.search as search_module


def _stable_top(block: torch.Tensor, depth: int):
    values, order = torch.sort(block, dim=1, descending=True, stable=True)
    return values[:, :depth], order[:, :depth]


def _block(seed: int, rows: int, width: int, coarse: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if coarse:  # few distinct values: long runs of ties at every threshold
        block = rng.integers(-3, 4, size=(rows, width)).astype(np.float32) / 4
    else:
        block = rng.normal(size=(rows, width)).astype(np.float32)
        block[:, rng.integers(0, width, width // 5)] = block[:, rng.integers(0, width, width // 5)]  # duplicates
    block[np.arange(rows), rng.integers(0, width, rows)] = -np.inf  # masked self columns
    block[0] = 0.0  # a row of one value (and -0.0 next to +0.0)
    block[1, ::2] = -0.0
    return torch.from_numpy(block)


def _counting_narrowed(monkeypatch):
    kept_rows = []
    original = prefilter.narrowed

    def counted(*args):
        result = original(*args)
        kept_rows.append(len(result[0]))
        return result

    monkeypatch.setattr(prefilter, "narrowed", counted)
    return kept_rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("rows, width, depth", [(37, 3000, 512), (20, 6000, 700), (40, 4000, 1100)])
def test_narrowed_selection_equals_the_stable_sort(seed, coarse, rows, width, depth, monkeypatch):
    kept_rows = _counting_narrowed(monkeypatch)
    block = _block(seed, rows, width, coarse)
    values, positions, ordered = search_module._sorted_top(block.clone(), depth)
    expected_values, expected_positions = _stable_top(block, depth)
    assert ordered
    assert torch.equal(positions, expected_positions)
    assert torch.equal(values, expected_values)
    assert sum(kept_rows) > 0, "no row went through the narrowed selection"


@pytest.mark.parametrize("seed", range(3))
def test_rows_whose_guess_is_too_high_fall_back_exactly(seed, monkeypatch):
    """Guesses above the depth-th value (too few entries pass) or right at it (ties straddle it)."""
    rows, width, depth = 48, 3000, 600
    block = _block(seed, rows, width, coarse=seed % 2 == 0)
    depth_th = _stable_top(block, depth)[0][:, -1].numpy()
    original = prefilter.thresholds
    fallbacks = []

    def guessed(chunk, plan):
        limits = original(chunk, plan)
        # Which rows of the block these are: match them by content.
        for i, row in enumerate(chunk):
            index = int(np.flatnonzero((block.numpy() == row).all(axis=1))[0])
            if index % 3 == 0:
                limits[i] = np.nextafter(depth_th[index], np.float32(np.inf))  # too high: fewer than depth pass
                fallbacks.append(index)
            elif index % 3 == 1:
                limits[i] = depth_th[index]  # exactly the depth-th value
        return limits

    monkeypatch.setattr(prefilter, "thresholds", guessed)
    kept_rows = _counting_narrowed(monkeypatch)
    values, positions, _ = search_module._sorted_top(block.clone(), depth)
    expected_values, expected_positions = _stable_top(block, depth)
    assert torch.equal(positions, expected_positions)
    assert torch.equal(values, expected_values)
    assert fallbacks and sum(kept_rows) < rows


def test_narrowed_keeps_every_entry_at_or_above_the_limit_in_column_order():
    rows = np.array([[0.5, 0.1, 0.9, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3], [0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    kept, values, columns, slots, counts = prefilter.narrowed(rows, np.array([0.5, 0.3, 0.5], np.float32), 2)
    assert kept.tolist() == [0, 1]  # row 2 has one entry at or above 0.5: too few for depth 2
    assert counts.tolist() == [3, 5]
    assert columns.tolist() == [0, 2, 3, 0, 1, 2, 3, 4]
    assert values.tolist() == pytest.approx([0.5, 0.9, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert slots.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_no_plan_where_narrowing_would_keep_most_of_the_row():
    assert prefilter.sample_plan(1000, 600) is None
    columns, rank = prefilter.sample_plan(10_000, 1000)
    assert len(columns) > 0.9 * prefilter.SAMPLE_COLUMNS and np.all(np.diff(columns) > 0) and columns.max() < 10_000
    assert rank > 1000 * len(columns) / 10_000
