"""Page layout shared by the pages: one colour per run, one panel per run."""

from __future__ import annotations

import streamlit as st


# Distinct, colour-blind-friendly colours (Okabe-Ito); run i of a selection always gets colour i.
RUN_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def plural(count: int, noun: str) -> str:
    """"1 epoch", "2 epochs", "2,688 steps"."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def colour_of(position: int) -> str:
    return RUN_COLOURS[position % len(RUN_COLOURS)]


def panels(count: int, per_row: int = 3) -> list:
    """``count`` equally wide containers, ``per_row`` to a row: one panel per run, lined up across rows."""
    width = max(1, min(per_row, count))
    containers = []
    for start in range(0, count, width):
        containers += st.columns(width)[: count - start]
    return containers
