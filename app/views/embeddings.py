"""The Embeddings page: 2-D maps of the unseen-class embeddings, one panel per run, aligned across runs.

Projections come from ``ecaml.projection.project_runs`` (disk-cached by the
library); selecting points with the lasso, the box or a click shows their images.
"""

from __future__ import annotations

from collections import Counter

import streamlit as st

from app import charts, common

METHODS = {
    "umap": "UMAP, aligned across runs (about half a minute the first time, then cached)",
    "pca": "PCA (instant)",
}
MAX_POINTS = 3000
MAX_SHOWN_IMAGES = 60
THUMBNAIL_PIXELS = 56


def render() -> None:
    st.title("Embeddings of unseen classes")
    st.caption(
        "Each panel maps one run's embeddings of the images of classes it never saw to two dimensions, one colour "
        "per class. Tight, well separated clusters mean the embedding generalises. The maps are aligned, so the "
        "same image sits in roughly the same place in every panel."
    )
    entries = common.scan_all_runs()
    common.require_runs(entries)
    chosen = common.pick_runs(entries, "embeddings")
    common.show_unusable(entries)
    if not chosen:
        st.info("Choose at least one run above.")
        return
    chosen = common.same_data_only(chosen, "so their maps cannot be aligned with it")
    method = st.radio("Projection", list(METHODS), format_func=METHODS.get, horizontal=True, key="projection_method")
    projections = load_projections(chosen, method)
    if projections is None:
        return
    st.caption(
        "Hover over a point for its class and image number; click, lasso or box-select points to see their images."
    )
    for panel, entry, projection in zip(common.panels(len(chosen), per_row=2), chosen, projections):
        with panel:
            show_panel(entry, projection)


@st.cache_data(max_entries=16, show_spinner=False)
def _projections(keys: tuple, method: str, _runs: list) -> list:
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title, controls and tables should paint before it.
    from ecaml.projection import project_runs

    return project_runs(
        _runs, part="unseen", method=method, aligned=True, seed=0, max_points=MAX_POINTS, cache_dir=common.cache_dir()
    )


def load_projections(chosen: list[common.RunEntry], method: str):
    keys = tuple((entry.key, common.run_fingerprint(entry.path)) for entry in chosen)
    message = "Projecting…" if method == "pca" else "Computing aligned UMAP maps (half a minute the first time)…"
    with st.spinner(message):
        return common.attempt("project the embeddings", _projections, keys, method, [entry.run for entry in chosen])


def show_panel(entry: common.RunEntry, projection) -> None:
    split = common.split_of(entry.run)
    figure = charts.projection_figure(
        projection.coords,
        projection.labels,
        projection.indices,
        split.dataset.class_names,
        f"{entry.name} · {common.ec_summary(entry.run.config.ec_weight)}",
    )
    event = st.plotly_chart(
        figure,
        key=f"projection_{entry.key}",
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
    )
    selected = selected_indices(event)
    if selected:
        show_selected_images(selected, split)


def selected_indices(event) -> list[int]:
    """Dataset indices of the selected points (carried as each point's customdata)."""
    points = event.selection.points if event else []
    indices = [dataset_index(point.get("customdata")) for point in points]
    return list(dict.fromkeys(index for index in indices if index is not None))


def dataset_index(customdata) -> int | None:
    """A point's dataset index; Plotly hands customdata back as a number, a list or (typed arrays) a {"0": ...} dict."""
    if isinstance(customdata, dict):
        customdata = customdata.get("0")
    elif isinstance(customdata, (list, tuple)):
        customdata = customdata[0] if customdata else None
    return int(customdata) if isinstance(customdata, (int, float)) else None


def show_selected_images(indices: list[int], split) -> None:
    counts = Counter(split.dataset.class_name(index) for index in indices)
    summary = ", ".join(f"{name} ×{count}" for name, count in counts.most_common())
    st.markdown(f"**{len(indices)} selected** — classes: {summary}")
    shown = indices[:MAX_SHOWN_IMAGES]
    st.image(
        [common.framed(split.dataset.image(index), None, THUMBNAIL_PIXELS, border=2) for index in shown],
        caption=[split.dataset.class_name(index) for index in shown],
        width=THUMBNAIL_PIXELS,
    )
    if len(indices) > len(shown):
        st.caption(f"Showing the first {len(shown)} of {len(indices)}.")


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
