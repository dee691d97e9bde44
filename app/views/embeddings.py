"""The Embeddings page: 2-D maps of the unseen-class embeddings, one panel per run, aligned across runs.

Projections come from ``ecaml.projection`` (disk-cached by the library). The
page opens on the aligned UMAP only when it is cached (the app warms it for the
shipped pair when it starts); otherwise it opens on PCA at once, and the UMAP is
computed in a background thread on request while the PCA maps stay usable.
Selecting points with the lasso, the box or a click shows their images.
"""

from __future__ import annotations

from collections import Counter

import streamlit as st

from app import charts, errors, layout, locations, pictures, projection_jobs, run_catalog, run_picker, splits

METHODS = {"umap": "UMAP, aligned across runs", "pca": "PCA (instant)"}
METHOD_KEY = "projection_method"
COMPUTE_UMAP = "Compute aligned UMAP (about half a minute the first time; cached afterwards)"
MAX_SHOWN_IMAGES = 60
THUMBNAIL_PIXELS = 56


def render() -> None:
    st.title("Embeddings of unseen classes")
    st.caption(
        "Each panel maps one run's embeddings of the images of classes it never saw to two dimensions, one colour "
        "per class. Tight, well separated clusters mean the embedding generalises. The maps are aligned, so the "
        "same image sits in roughly the same place in every panel."
    )
    chosen = run_picker.choose_runs("embeddings")
    if not chosen:
        return
    chosen = run_picker.same_data_only(chosen, "so their maps cannot be aligned with it")
    umap_ready = errors.attempt("look up the projection cache", umap_cached, chosen)
    if umap_ready is None:  # the runs' files cannot be read: no map can be drawn either
        return
    if METHOD_KEY not in st.session_state:  # each visit opens on UMAP only when it shows at once
        st.session_state[METHOD_KEY] = "umap" if umap_ready else "pca"
    # Fixed labels: a label that changed with the cache would make the radio another widget and lose its choice.
    method = st.radio("Projection", list(METHODS), format_func=METHODS.get, horizontal=True, key=METHOD_KEY)
    shown = method if method == "pca" or umap_ready else umap_in_background(chosen)
    if method == "pca" and not umap_ready:
        offer_umap(chosen)
    projections = load_projections(chosen, shown)
    if projections is None:
        return
    st.caption(
        "**Click a point or lasso a group to see the images.** The lasso and the box are in each map's toolbar "
        "(top right); dragging zooms in, a double click zooms out. Hovering only shows a point's class and image "
        "number."
    )
    for panel, entry, projection in zip(layout.panels(len(chosen), per_row=2), chosen, projections):
        with panel:
            show_panel(entry, projection)


def umap_cached(chosen: list[run_catalog.RunEntry]) -> bool:
    """Whether the aligned UMAP of these runs is on disk already (a cheap look-up: nothing is computed)."""
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title and controls should paint before it.
    from ecaml.projection import is_projection_cached

    runs = [entry.run for entry in chosen]
    return is_projection_cached(runs, method="umap", cache_dir=locations.cache_dir(), **projection_jobs.PROJECTION)


def choose_umap() -> None:
    st.session_state[METHOD_KEY] = "umap"


def offer_umap(chosen: list[run_catalog.RunEntry]) -> None:
    """The button that asks for the aligned UMAP, and whether the start-up warm-up is computing it already."""
    st.button(COMPUTE_UMAP, icon=":material/scatter_plot:", key="compute_umap", on_click=choose_umap)
    job = projection_jobs.projection_job(chosen, "umap")
    if job is not None and job.running:
        st.caption(
            f"It is being computed in the background already (for {job.seconds:.0f} s), so it may take less."
        )


def umap_in_background(chosen: list[run_catalog.RunEntry]) -> str:
    """Start (or follow) the aligned UMAP's background job; the method to show meanwhile ("umap" once it is done)."""
    job = projection_jobs.project_in_background(chosen, "umap")
    if job.running:
        st.info(
            "Computing the aligned UMAP maps in the background (about half a minute the first time, cached "
            "afterwards). Meanwhile the PCA maps show below; the page switches to UMAP by itself when it is ready.",
            icon=":material/hourglass_top:",
        )
        follow_job(projection_jobs.projection_job_key(chosen, job.method))
        return "pca"
    if job.error is not None:
        st.error(f"Could not compute the aligned UMAP: {errors.one_sentence(job.error)} Showing the PCA maps.")
        if st.button("Try again", key="retry_umap"):
            projection_jobs.forget_projection_job(chosen, "umap")
            st.rerun()
        return "pca"
    return "umap"  # done; computed here if the cache could not keep it (a read-only cache, a run still training)


@st.fragment(run_every=2.0)
def follow_job(job_key: tuple) -> None:
    """Redraw the page once the background job ends; until then, say for how long it has been running."""
    job = projection_jobs.projection_job_by_key(job_key)
    if job is None or not job.running:
        st.rerun()
    st.caption(f"Computing for {job.seconds:.0f} s…")


@st.cache_data(max_entries=16, show_spinner=False)
def _projections(keys: tuple, method: str, _runs: list) -> list:
    from ecaml.projection import project_runs

    return project_runs(_runs, method=method, cache_dir=locations.cache_dir(), **projection_jobs.PROJECTION)


def load_projections(chosen: list[run_catalog.RunEntry], method: str):
    keys = tuple((entry.key, run_catalog.run_fingerprint(entry.path)) for entry in chosen)
    message = "Projecting…" if method == "pca" else "Loading the aligned UMAP maps…"
    with st.spinner(message):
        return errors.attempt("project the embeddings", _projections, keys, method, [entry.run for entry in chosen])


def show_panel(entry: run_catalog.RunEntry, projection) -> None:
    split = splits.split_of(entry.run)
    figure = charts.projection_figure(
        projection.coords,
        projection.labels,
        projection.indices,
        split.dataset.class_names,
        f"{entry.name} · {run_catalog.ec_summary(entry.run.config.ec_weight)}",
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
        [pictures.framed(split.dataset.image(index), None, THUMBNAIL_PIXELS, border=2) for index in shown],
        caption=[split.dataset.class_name(index) for index in shown],
        width=THUMBNAIL_PIXELS,
    )
    if len(indices) > len(shown):
        st.caption(f"Showing the first {len(shown)} of {len(indices)}.")


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
