"""The Compare page's pair-distance histograms: same-class and other-class distances of the unseen images, per run.

They embed every unseen image the first time, so the page draws them only when their expander is opened.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import charts, embedding_jobs, errors, layout, locations, run_catalog


DISTANCE_BIN_COUNT = 50


MAX_PAIRS = 20000


DISTANCES_KEY = "distances_open"


@st.cache_data(max_entries=32, show_spinner=False)
def distance_samples(path: str, fingerprint: tuple, _run) -> dict:
    """Up to MAX_PAIRS same-class and different-class cosine distances of one run's unseen images."""
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title, controls and tables should paint before it.
    from ecaml.eval.pair_distances import pair_distance_samples
    from ecaml.serve.embeddings_cache import cached_embeddings

    embeddings = cached_embeddings(_run, "unseen", cache_dir=locations.cache_dir())
    positive, negative = pair_distance_samples(embeddings.vectors, embeddings.labels, max_pairs=MAX_PAIRS, seed=0)
    return {"positive": np.asarray(positive, np.float32), "negative": np.asarray(negative, np.float32)}


def shared_bins(samples: list[dict]) -> np.ndarray:
    """Bin edges that fit every run's distances (0.1% trimmed at each end), the same for every panel."""
    values = np.concatenate([np.concatenate([s["positive"], s["negative"]]) for s in samples])
    low, high = np.quantile(values, [0.001, 0.999]) if values.size else (0.0, 2.0)
    margin = max(0.02, 0.05 * float(high - low))
    low, high = max(0.0, float(low) - margin), min(2.0, float(high) + margin)
    return np.linspace(low, high if high > low else low + 0.1, DISTANCE_BIN_COUNT + 1)


def histograms(sample: dict, bins: np.ndarray) -> dict:
    """Density histograms over ``bins`` (the trimmed tails fall outside and are left out) and the medians."""
    positive, negative = sample["positive"], sample["negative"]
    return {
        "positive": np.histogram(positive, bins=bins, density=True)[0],
        "negative": np.histogram(negative, bins=bins, density=True)[0],
        "medians": (float(np.median(positive)), float(np.median(negative))),
    }


def show_distance_histograms(chosen: list[run_catalog.RunEntry]) -> None:
    st.subheader("Distances between unseen images")
    # Drawn only once opened (the expander reruns the page when toggled): the first paint stays light, and the
    # first time these embed every unseen image.
    expander = st.expander(
        "Same-class against different-class distances, one histogram per run",
        key=DISTANCES_KEY,
        on_change="rerun",
        icon=":material/bar_chart:",
    )
    if not expander.open:
        st.caption("Open to see how far apart the embedding puts images of one class and of different classes.")
        return
    with expander:
        chosen = embedding_jobs.ensure_embedded(chosen, "unseen")  # a background job with progress, never inline
        with st.spinner("Reading the unseen images' embeddings…"):
            samples = {}
            for entry in chosen:
                sample = errors.attempt(
                    f"embed the unseen images of {entry.name}",
                    distance_samples,
                    entry.key,
                    run_catalog.run_fingerprint(entry.path),
                    entry.run,
                )
                if sample is not None:
                    samples[entry.key] = sample
            if not samples:
                return
            bins = shared_bins(list(samples.values()))
            binned = {key: histograms(sample, bins) for key, sample in samples.items()}
            top = max(float(max(h["positive"].max(), h["negative"].max())) for h in binned.values())
            shown = [entry for entry in chosen if entry.key in binned]
            for panel, entry in zip(layout.panels(len(shown)), shown):
                h = binned[entry.key]
                chart = charts.distance_chart(bins, h["positive"], h["negative"], h["medians"], entry.name, top)
                panel.plotly_chart(chart, key=f"distances_{entry.key}", width="stretch")
        st.caption(
            f"Cosine distances of up to {MAX_PAIRS:,} random pairs of unseen-class images: two images of the same "
            "class (green) and of different classes (orange); dotted lines mark the medians. The less the two "
            "overlap, the better nearest-neighbour retrieval works on classes the network never saw. Every panel "
            f"shares one x range ({bins[0]:.2f} to {bins[-1]:.2f}, fitted to the data) and one y scale."
        )
