"""Thinning a long series for drawing: bounded size, nothing lost at the edges, every extreme inside a band."""

from __future__ import annotations

import numpy as np
import pytest

from app.thinning import thin


def test_a_short_series_is_kept_whole():
    steps, values = np.arange(1, 51), np.random.default_rng(3).normal(size=50)
    thinned = thin(steps, values, max_points=50)
    assert not thinned.pooled
    np.testing.assert_array_equal(thinned.steps, steps)
    np.testing.assert_array_equal(thinned.values, values)
    np.testing.assert_array_equal(thinned.low, values)


@pytest.mark.parametrize("length, max_points", [(100_000, 1000), (5_152, 1000), (1_001, 1000), (7, 3)])
def test_a_long_series_is_pooled_into_bands_that_hold_every_value(length, max_points):
    rng = np.random.default_rng(length)
    steps = np.cumsum(rng.integers(1, 4, size=length))  # uneven gaps, as a resumed or averaged log has
    values = rng.standard_cauchy(size=length)  # heavy tails: spikes a plain subsample would drop
    thinned = thin(steps, values, max_points=max_points)
    assert thinned.pooled and len(thinned.steps) == max_points
    assert thinned.steps[-1] == steps[-1] and np.all(np.diff(thinned.steps) > 0)
    assert thinned.high.max() == values.max() and thinned.low.min() == values.min()
    assert np.all(thinned.low <= thinned.values) and np.all(thinned.values <= thinned.high)
    # Each bucket's band and mean are those of the points up to its step since the previous bucket's.
    edges = np.searchsorted(steps, thinned.steps, side="right")
    for index in rng.choice(max_points, size=min(max_points, 20), replace=False):
        start = edges[index - 1] if index else 0
        bucket = values[start : edges[index]]
        assert (thinned.low[index], thinned.high[index]) == (bucket.min(), bucket.max())
        assert thinned.values[index] == pytest.approx(bucket.mean())


def test_mismatched_or_impossible_requests_are_refused():
    with pytest.raises(ValueError, match="one length"):
        thin([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        thin([1, 2], [1.0, 2.0], max_points=0)
