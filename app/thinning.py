"""Fewer points to draw for a long series: consecutive points pooled into buckets, each drawn as its mean with the
band of its smallest and largest value, so a 100,000-step curve costs the browser a thousand points yet still shows
every spike. Plain data logic (no Streamlit, no ML), so the charts stay fast whatever a run's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_DRAWN_POINTS = 1000  # per line: enough for a chart's width in pixels


@dataclass(frozen=True)
class Thinned:
    """A series as drawn: ``steps`` (each bucket's last step), ``values`` (bucket means), ``low``/``high`` (bucket
    minima and maxima); ``pooled`` is False when the series was short enough to keep whole (then low = high = values)."""

    steps: np.ndarray
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    pooled: bool


def thin(steps, values, max_points: int = MAX_DRAWN_POINTS) -> Thinned:
    """``values`` against ``steps`` in at most ``max_points`` points (``steps`` ascending, as a history records them).

    A series of at most ``max_points`` is returned whole. A longer one is cut into ``max_points`` runs of
    consecutive points of (nearly) equal length; each keeps its last step, so the line ends where training did.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps and values must be two 1-D arrays of one length, not {steps.shape} and {values.shape}")
    if len(steps) <= max_points:
        return Thinned(steps, values, values, values, pooled=False)
    starts = np.linspace(0, len(steps), max_points + 1).astype(int)[:-1]
    ends = np.append(starts[1:], len(steps)) - 1
    counts = ends - starts + 1
    return Thinned(
        steps=steps[ends],
        values=np.add.reduceat(values, starts) / counts,
        low=np.minimum.reduceat(values, starts),
        high=np.maximum.reduceat(values, starts),
        pooled=True,
    )
