"""The Embeddings page: every unseen image of the split on a 2-D map, one panel per run, and the training film.

The map is ``app.embedding_map`` (WebGL, all panels in one frame: hover shows an
image's thumbnail and rings the same image in every panel; a lasso or click
selection lights the same images everywhere and lists them below). Embeddings
come from background jobs (``app.embedding_jobs``) and projections from
``ecaml.serve.projection`` (disk-cached): PCA at once, the aligned UMAP in a
background job, so no request ever waits on either. With many classes, points
are grey except the classes found by name or selected.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import streamlit as st

from app import background_jobs, errors, locations, pictures, projection_jobs, run_catalog, run_picker, splits
from app import embedding_jobs, embedding_map, live_film, neighbourhood_view
from app.page_state import EMBEDDINGS_VIEW_KEY, FILM_VIEW, MAP_VIEW

METHODS = {"umap": "UMAP, aligned across runs", "pca": "PCA (instant)"}
METHOD_KEY = "projection_method"
VIEWS = {MAP_VIEW: "Map of every image", FILM_VIEW: "Training film"}
COMPUTE_UMAP = "Compute aligned UMAP (in the background; cached afterwards)"
FIRST_LAYOUT = "umap-first"  # what the map shows while the aligned UMAP's final layout computes
MAX_SHOWN_IMAGES = 60
THUMBNAIL_PIXELS = 56
MAX_HIGHLIGHTED_CLASSES = 20
OPENING_CLASSES = 10  # classes coloured on a many-class map before any search
CLASS_SEARCH_KEY = "map_class_search"


def render() -> None:
    st.title("Embeddings of unseen classes")
    st.caption(
        "Each panel maps one run's embeddings of the images of classes it never saw to two dimensions. Tight, well "
        "separated clusters mean the embedding generalises. The maps are aligned, so the same image sits in "
        "roughly the same place in every panel."
    )
    chosen = run_picker.choose_runs("embeddings")
    if not chosen:
        return
    chosen = run_picker.same_data_only(chosen, "so their maps cannot be aligned with it")
    # The lesson opens the film by setting this key; a default beside it makes Streamlit warn, so it goes in the state.
    st.session_state.setdefault(EMBEDDINGS_VIEW_KEY, MAP_VIEW)
    view = st.segmented_control("View", list(VIEWS), format_func=VIEWS.get, key=EMBEDDINGS_VIEW_KEY)
    if view == FILM_VIEW:
        show_film(chosen)
    else:
        show_map(chosen)


# ----------------------------------------------------------------------------- the map


def show_map(chosen: list[run_catalog.RunEntry]) -> None:
    ready = embedding_jobs.ensure_embedded(chosen, "unseen")
    if len(ready) < len(chosen):
        return  # the progress bars are showing; the page redraws itself when the embeddings are cached
    umap_ready = errors.attempt("look up the projection cache", umap_cached, chosen)
    if umap_ready is None:  # the runs' files cannot be read: no map can be drawn either
        return
    if METHOD_KEY not in st.session_state:  # each visit opens on UMAP when it shows at once or is being computed
        # A reload or a second tab finds a UMAP job still running in the server, and follows its progress.
        st.session_state[METHOD_KEY] = "umap" if umap_ready or umap_running(chosen) else "pca"
    # Fixed labels: a label that changed with the cache would make the radio another widget and lose its choice.
    method = st.radio("Projection", list(METHODS), format_func=METHODS.get, horizontal=True, key=METHOD_KEY)
    shown = method if method == "pca" or umap_ready else umap_in_background(chosen)
    if method == "pca" and not umap_ready:
        offer_umap(chosen)
    projections = load_projections(chosen, shown)
    if projections is None:
        return
    split = splits.split_of(chosen[0].run)
    first = projections[0]
    highlight = find_classes(split, np.unique(first.labels))
    thumbnails, slots = thumbnails_for(chosen[0], split, first.indices)
    st.caption(
        "**Hover a point to see its image** (a ring marks the same image in every panel). Drag to pan, scroll to "
        "zoom, double click to fit; **Lasso** (or Shift + drag) or a click selects, and the same images light up in "
        "every panel. Esc clears."
    )
    panels = [
        embedding_map.MapPanel(f"{entry.name} · {run_catalog.setting_summary(entry.run)}", [p.coords])
        for entry, p in zip(chosen, projections)
    ]
    by_change = neighbourhood_view.colour_by_change(chosen)
    change = neighbourhood_view.change_of(chosen) if len(chosen) >= 2 else None
    if by_change and change is not None:
        labels, names, palette = neighbourhood_view.map_colours(change, first.indices)
        data = embedding_map.MapData(labels, first.indices, names, slots, thumbnails)
        rows = embedding_map.embedding_map(panels, data, key=f"map_{shown}_change", palette=palette)
    else:
        data = embedding_map.MapData(first.labels, first.indices, list(split.dataset.class_names), slots, thumbnails)
        rows = embedding_map.embedding_map(panels, data, key=f"map_{shown}", highlight_classes=highlight)
    if rows:
        show_selected_images([int(first.indices[row]) for row in rows], split)
    if change is not None:
        neighbourhood_view.show_change(change, chosen, split)


def find_classes(split, present: np.ndarray) -> list[int]:
    """Classes to colour, found by name; only asked for when there are more classes than colours."""
    if len(present) <= embedding_map.COLOUR_BY_CLASS_UP_TO:
        return []
    names = split.dataset.class_names
    examples = [names[int(c)] for c in (present[0], present[len(present) // 2])]  # hints that match here
    query = st.text_input(
        f"Find classes by name ({len(present):,} classes: the first {OPENING_CLASSES} coloured until you search)",
        key=CLASS_SEARCH_KEY, placeholder=f"part of a class name, e.g. {examples[0]} or {examples[1]}",
    ).strip().lower()
    if not query:
        return [int(c) for c in present[:OPENING_CLASSES]]  # a map opening all grey showed no class at all
    matches = [int(c) for c in present if query in names[c].lower()]
    if not matches:
        st.caption(f"No class name contains “{query}”.")
    elif len(matches) > MAX_HIGHLIGHTED_CLASSES:
        st.caption(
            f"{len(matches):,} classes match; colouring the first {MAX_HIGHLIGHTED_CLASSES}. Type more to narrow."
        )
    return matches[:MAX_HIGHLIGHTED_CLASSES]


def thumbnails_for(entry: run_catalog.RunEntry, split, indices: np.ndarray):
    """(the sprite sheets' folder, each row's slot) while a background job writes any sheet still missing."""
    from ecaml.serve.embeddings_cache import data_identity
    from ecaml.serve.thumbnails import slots

    identity = {key: value for key, value in data_identity(entry.run).items() if key not in ("backbone", "channels")}
    folder, job = errors.attempt(
        "prepare the thumbnails", embedding_map.thumbnails_in_background, split, "unseen",
        {**identity, "part": "unseen"},
    ) or (None, None)
    if job is not None and job.running:
        background_jobs.follow((embedding_map.thumbnails_job_key(folder),), ("Thumbnails for hovering",))
        folder = None  # hovering shows class and image number until the sheets are all there
    return folder, slots(split, "unseen", np.asarray(indices))


def umap_cached(chosen: list[run_catalog.RunEntry]) -> bool:
    """Whether the aligned UMAP of these runs is on disk already (a cheap look-up: nothing is computed)."""
    from ecaml.serve.projection import is_projection_cached

    runs = [entry.run for entry in chosen]
    return is_projection_cached(runs, method="umap", cache_dir=locations.cache_dir(), **projection_jobs.PROJECTION)


def umap_running(chosen: list[run_catalog.RunEntry]) -> bool:
    job = projection_jobs.projection_job(chosen, "umap")
    return job is not None and job.running


def choose_umap() -> None:
    st.session_state[METHOD_KEY] = "umap"


def offer_umap(chosen: list[run_catalog.RunEntry]) -> None:
    """The button that asks for the aligned UMAP, and whether the start-up warm-up is computing it already."""
    st.button(COMPUTE_UMAP, icon=":material/scatter_plot:", key="compute_umap", on_click=choose_umap)
    job = projection_jobs.projection_job(chosen, "umap")
    if umap_running(chosen):
        st.caption(f"It is being computed in the background already (for {job.seconds:.0f} s), so it may take less.")


def umap_in_background(chosen: list[run_catalog.RunEntry]) -> str:
    """Start (or follow) the aligned UMAP's background job; the method to show meanwhile ("umap" once it is done)."""
    job = projection_jobs.project_in_background(chosen, "umap")
    if job.running and errors.attempt("look up the first UMAP layout", first_umap_layout, chosen):
        st.info(
            "A first aligned UMAP layout, from a sample of landmark images, shows below while the final one is "
            "computed in the background; the page switches to it by itself.", icon=":material/hourglass_top:",
        )
        background_jobs.follow((projection_jobs.projection_job_key(chosen, "umap"),), ("Refining the aligned UMAP",))
        return FIRST_LAYOUT
    if job.running:
        count = len(splits.split_of(chosen[0].run).indices("unseen"))
        st.info(
            f"Computing the aligned UMAP of {count:,} images per run in the background (cached afterwards; a first "
            "layout replaces these maps within seconds when the split is large). Meanwhile the PCA maps show below; the page switches to UMAP by "
            "itself when it is ready, and you may leave and come back.",
            icon=":material/hourglass_top:",
        )
        background_jobs.follow((projection_jobs.projection_job_key(chosen, "umap"),), ("Aligned UMAP",))
        return "pca"
    if job.error is not None:
        st.error(f"Could not compute the aligned UMAP: {errors.one_sentence(job.error)} Showing the PCA maps.")
        if st.button("Try again", key="retry_umap"):
            projection_jobs.forget_projection_job(chosen, "umap")
            st.rerun()
        return "pca"
    return "umap"  # done; computed here if the cache could not keep it (a read-only cache, a run still training)


@st.cache_data(max_entries=16, show_spinner=False)
def _projections(keys: tuple, method: str, _runs: list) -> list:
    from ecaml.serve.projection import project_runs

    return project_runs(_runs, method=method, cache_dir=locations.cache_dir(), **projection_jobs.PROJECTION)


def first_umap_layout(chosen: list[run_catalog.RunEntry]):
    """The aligned UMAP's quick first layout while its job computes the final one (a file read), else None."""
    from ecaml.serve.projection import first_layout

    found = first_layout([entry.run for entry in chosen], method="umap", cache_dir=locations.cache_dir(),
                         **projection_jobs.PROJECTION)
    return found if found and found[0].first_layout else None


def load_projections(chosen: list[run_catalog.RunEntry], method: str):
    if method == FIRST_LAYOUT:  # not kept by st.cache_data: the final layout replaces it in the same file
        return errors.attempt("read the first UMAP layout", first_umap_layout, chosen)
    keys = tuple((entry.key, run_catalog.run_fingerprint(entry.path)) for entry in chosen)
    message = "Projecting…" if method == "pca" else "Loading the aligned UMAP maps…"
    with st.spinner(message):
        return errors.attempt("project the embeddings", _projections, keys, method, [entry.run for entry in chosen])


def show_selected_images(indices: list[int], split) -> None:
    counts = Counter(split.dataset.class_name(index) for index in indices)
    summary = ", ".join(f"{name} ×{count}" for name, count in counts.most_common(12))
    more = f" and {len(counts) - 12} more classes" if len(counts) > 12 else ""
    st.markdown(f"**{len(indices):,} selected** — classes: {summary}{more}")
    shown = indices[:MAX_SHOWN_IMAGES]
    st.image(
        [pictures.framed(split.dataset.image(index), None, THUMBNAIL_PIXELS, border=2) for index in shown],
        caption=[split.dataset.class_name(index) for index in shown],
        width=THUMBNAIL_PIXELS,
    )
    if len(indices) > len(shown):
        st.caption(f"Showing the first {len(shown)} of {len(indices):,}.")


# ----------------------------------------------------------------------------- the training film


@st.cache_data(max_entries=8, show_spinner="Laying out the film's frames (once per set of runs)…")
def _film(keys: tuple, paths: tuple):
    """The films of ``paths`` laid out (``keys``: each run's key and fingerprint, for the cache); a lesson pair's
    comes from the job that began laying it out while the pair was being evaluated."""
    from ecaml.serve.film import lay_out_films

    return live_film.whole_film_laid_out(paths) or lay_out_films([Path(path) for path in paths])


def frame_labels(scores: list[dict[str, float]]) -> list[str]:
    return [f"R@1 {100 * s['recall@1']:.1f}% · MAP@R {100 * s['map@r']:.1f}%" for s in scores]


def show_film(chosen: list[run_catalog.RunEntry]) -> None:
    from ecaml.serve.film import has_film

    filmed = [entry for entry in chosen if has_film(entry.path)]
    st.caption(
        "A run trained with `film_every` keeps snapshots of its embeddings of a fixed set of unseen images as it "
        "trains. Press **Play** (or drag the step slider) to watch what training on the seen classes does to the "
        "unseen ones, EC off and EC on side by side, on one aligned projection that keeps neighbourhoods (each "
        "step's t-SNE, started from the step before; runs of one seed start from one picture). Under each title, "
        "that step's unseen Recall@1 and MAP@R, measured on the very points drawn. Unseen classes do not always "
        "form: an untrained network can already separate some, and training on other classes can blur them; "
        "the numbers say which way each step goes."
    )
    missing = [entry.name for entry in chosen if entry not in filmed]
    if missing:
        st.info(f"No training film in {', '.join(missing)}. The **Train** page's lesson trains a pair with one.")
    if not filmed:
        return
    keys = tuple((entry.key, run_catalog.run_fingerprint(entry.path)) for entry in filmed)
    result = errors.attempt("read the training films", _film, keys, tuple(str(entry.path) for entry in filmed))
    if result is None:
        return
    steps, frames, labels, indices, scores = result.steps, result.frames, result.labels, result.indices, result.scores
    split = splits.split_of(filmed[0].run)
    panels = [
        embedding_map.MapPanel(f"{entry.name} · {run_catalog.setting_summary(entry.run)}", run_frames,
                               frame_labels(run_scores))
        for entry, run_frames, run_scores in zip(filmed, frames, scores)
    ]
    folder, slots = thumbnails_for(filmed[0], split, indices)
    data = embedding_map.MapData(labels, indices, list(split.dataset.class_names), slots, folder, steps)
    rows = embedding_map.embedding_map(panels, data, key="film_map", height=420)
    if rows:
        show_selected_images([int(indices[row]) for row in rows], split)


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
