"""precision_at_r (ecaml.eval.precision) against the definitions, row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecaml.eval.precision import precision_at_r


@pytest.mark.parametrize("seed", range(8))
def test_precision_at_r_follows_the_definitions(seed):
    rng = np.random.default_rng(seed)
    rows, width = int(rng.integers(1, 40)), int(rng.integers(1, 60))
    flags = rng.random((rows, width)) < rng.random()
    flags[0] = False  # a row with no hit
    counts = rng.integers(1, width + 1, rows)  # R at most the width; flags beyond R must not count
    average_precision, r_precision = precision_at_r(torch.from_numpy(flags), torch.from_numpy(counts))
    for row, r in enumerate(counts):
        hits = np.flatnonzero(flags[row, :r])
        expected = sum((j + 1) / (p + 1) for j, p in enumerate(hits)) / r
        assert average_precision[row].item() == pytest.approx(expected, abs=1e-12)
        assert r_precision[row].item() == pytest.approx(len(hits) / r, abs=1e-12)
    assert average_precision.dtype == r_precision.dtype == torch.float64
