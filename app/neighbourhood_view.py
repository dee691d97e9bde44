"""Neighbourhood change between the first two runs on the Embeddings page (``ecaml.serve.neighbourhood``).

For two runs over the same items (two checkpoints of one run, a trained run and
an import of the same images...), each image's k nearest neighbours in the first
and in the second: their Jaccard distance colours the map on request, and below
it the images whose neighbourhoods changed most, the classes that gained or
lost most R@1, and one sentence on where the second run does better.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import errors, locations, pictures, run_catalog

COLOUR_KEY = "map_colour_by"
COLOURINGS = {"class": "Class", "change": "Neighbourhood change (first two runs)"}
K = 10
# Exact k-NN of every image against every other is N^2 d: beyond this many images, a seeded sample is queried.
ALL_QUERIES_UP_TO, SAMPLED_QUERIES = 20_000, 5_000
BINS = 10
# Light (kept) to dark red (changed): an ordered scale, so "more change" reads as "darker".
CHANGE_PALETTE = [(255, 245, 235), (254, 230, 206), (253, 208, 162), (253, 174, 107), (253, 141, 60),
                  (241, 105, 19), (217, 72, 1), (166, 54, 3), (127, 39, 4), (90, 20, 2)]
LISTED = 12


def colour_by_change(chosen: list[run_catalog.RunEntry]) -> bool:
    """The map's colouring choice; only offered when there are two runs to compare."""
    if len(chosen) < 2:
        return False
    choice = st.segmented_control("Colour by", list(COLOURINGS), format_func=COLOURINGS.get, key=COLOUR_KEY,
                                  default="class")
    return choice == "change"


@st.cache_data(max_entries=8, show_spinner=False)
def _change(keys: tuple, _first, _second):
    from ecaml.serve.embeddings_cache import cached_embeddings
    from ecaml.serve.neighbourhood import neighbourhood_change

    first = cached_embeddings(_first, "unseen", locations.cache_dir())
    second = cached_embeddings(_second, "unseen", locations.cache_dir())
    sample = None if len(first.indices) <= ALL_QUERIES_UP_TO else SAMPLED_QUERIES
    return neighbourhood_change(first, second, k=K, max_queries=sample)


def change_of(chosen: list[run_catalog.RunEntry]):
    """The neighbourhood change from the first chosen run to the second (cached per pair of runs' files)."""
    pair = chosen[:2]
    keys = tuple((entry.key, run_catalog.run_fingerprint(entry.path)) for entry in pair)
    with st.spinner(f"Finding each image's {K} nearest neighbours in both runs…"):
        return errors.attempt("compare the runs' neighbourhoods", _change, keys, pair[0].run, pair[1].run)


def map_colours(change, indices: np.ndarray) -> tuple[np.ndarray, list[str], list]:
    """(a bin per map row, the bins' names, their colours): rows not compared go to a last, grey bin."""
    positions = np.searchsorted(change.indices, indices)
    positions = np.minimum(positions, len(change.indices) - 1)
    found = change.indices[positions] == indices
    distance = np.where(found, change.jaccard[positions], np.nan)
    bins = np.where(np.isnan(distance), BINS, np.minimum((np.nan_to_num(distance) * BINS).astype(int), BINS - 1))
    names = [f"Jaccard {b / BINS:.1f}–{(b + 1) / BINS:.1f}" for b in range(BINS)] + ["not compared"]
    return bins.astype(np.int64), names, [*CHANGE_PALETTE, (170, 170, 170)]


def show_change(change, chosen: list[run_catalog.RunEntry], split) -> None:
    """The most-changed images, the classes that gained or lost most R@1, and the one-sentence verdict."""
    from ecaml.serve.neighbourhood import where_second_does_better

    first, second = chosen[0].name, chosen[1].name
    names = list(split.dataset.class_names)
    queried = int(np.isfinite(change.jaccard).sum())
    st.subheader(f"Neighbourhood change: {first} → {second}")
    st.markdown(where_second_does_better(change, names, first, second))
    sampled = f" (a seeded sample of {queried:,} of {len(change.indices):,} images)" if queried < len(change.indices) else ""
    st.caption(
        f"Per image: the Jaccard distance between its {change.k} nearest neighbours in the two runs (0: the same "
        f"neighbours, 1: none shared); mean {np.nanmean(change.jaccard):.2f}{sampled}."
    )
    most = change.most_changed(LISTED)
    st.markdown("**Images whose neighbourhoods changed most**")
    st.image(
        [pictures.framed(split.dataset.image(int(change.indices[p])), None, 56, border=2) for p in most],
        caption=[f"{names[change.labels[p]]} · {change.jaccard[p]:.2f}" for p in most],
        width=56,
    )
    rows = change.class_recall()
    table = [{"class": names[label], f"R@1 {first}": before, f"R@1 {second}": after, "change": after - before,
              "images": count} for label, before, after, count in rows]
    gained, lost = st.columns(2)
    gained.markdown(f"**Classes {second} gained most R@1 on**")
    gained.dataframe([row for row in table[:5] if row["change"] > 0], hide_index=True)
    lost.markdown(f"**Classes {second} lost most R@1 on**")
    lost.dataframe([row for row in reversed(table[-5:]) if row["change"] < 0], hide_index=True)
