"""The Retrieval page: one query image, its nearest unseen-class neighbours in each run, side by side.

The page opens on a query where the runs disagree. Embeddings are computed by
background jobs (``app.embedding_jobs``, with progress); indexes are built from
the cached vectors (``ecaml.serve.retrieval.RunIndex``: faiss holds the one in-memory
copy) and kept per process with ``st.cache_resource``, keyed by run folder and
weights digest. Classes are found by typing part of a name (only the matches are
offered), images by their number. Uploaded images are decoded in memory by
``ecaml.data.open_image``; nothing is written to disk.
"""

from __future__ import annotations

import random

import numpy as np
import streamlit as st

from app import (background_jobs, deployment, embedding_jobs, errors, layout, locations, pictures, run_catalog,
                 run_picker, splits, upload_preview)
from ecaml.data.images import IMAGE_SUFFIXES, open_image

SOURCES = {
    "disagree": "Where the runs disagree",
    "browse": "Find a class",
    "number": "By image number",
    "random": "At random",
    "upload": "Upload an image",
}
QUICK_JOB_S = 1.0  # how long the page waits for a background job before it shows its progress instead
MAX_CLASS_OPTIONS = 50  # class matches offered at once: never thousands of options in one list
UPLOAD_TYPES = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]
QUERY_PIXELS = 160
NEIGHBOUR_PIXELS = 84
RANDOM_QUERY_KEY = "random_query_index"


def render() -> None:
    st.title("Retrieval on unseen classes")
    st.caption(
        "Pick a query image from classes no run saw in training, or upload your own: each run returns its nearest "
        "neighbours by cosine similarity. Green frames share the query's class, red ones do not."
    )
    chosen = run_picker.choose_runs("retrieval")
    if not chosen:
        return
    chosen = run_picker.same_data_only(chosen, "so its gallery holds other images")
    ready = embedding_jobs.ensure_embedded(chosen, "unseen")
    if len(ready) < len(chosen):
        return  # the progress bars are showing; the page redraws itself when the embeddings are cached
    loaded = load_indexes(ready)
    if not loaded:
        return
    split = loaded[0][1].split
    left, right = st.columns([1, 2], gap="large")
    with left:
        sources = list(SOURCES) if len(loaded) > 1 else [name for name in SOURCES if name != "disagree"]
        imported = [entry.name for entry, _, _ in loaded if entry.run.model is None]
        if imported:  # stored vectors, no model: nothing can embed a new image
            sources.remove("upload")
            st.info(f"Uploads are off: {', '.join(imported)} holds imported vectors, not a model that could embed "
                    "a new image. Query with the images it holds.")
        source = st.radio("Query", sources, format_func=SOURCES.get, key="query_source")
        query = choose_query(source, loaded, split)
        k = st.slider("Neighbours per run", 1, 16, 8, key="neighbours_k")
    with right:
        if query is not None:
            show_query(query, split)
    if query is not None:
        show_results(loaded, query, k)


# ----------------------------------------------------------------------------- indexes


@st.cache_resource(max_entries=16, show_spinner=False)
def _index(path: str, digest: str, _run):
    """The run's RunIndex; ``path`` and ``digest`` key the cache (``weights_digest`` is memoised by the library)."""
    from ecaml.serve.retrieval import build_index

    return build_index(_run, "unseen", cache_dir=locations.cache_dir())


def load_indexes(chosen: list[run_catalog.RunEntry]) -> list[tuple[run_catalog.RunEntry, object, str]]:
    """(entry, RunIndex, weights digest) of each run that could be indexed; the others get one error line each."""
    # Imported here, not at the top: its first import (scikit-learn, torchvision) takes seconds, and the page's
    # title, controls and tables should paint before it.
    from ecaml.serve.embeddings_cache import weights_digest

    loaded = []
    with st.spinner("Indexing the unseen images (cached after the first time)…"):
        for entry in chosen:
            digest = errors.attempt(f"read the weights of {entry.name}", weights_digest, entry.run)
            if digest is None:
                continue
            index = errors.attempt(f"index the unseen images of {entry.name}", _index, entry.key, digest, entry.run)
            if index is not None:
                loaded.append((entry, index, digest))
    return loaded


# ----------------------------------------------------------------------------- the query


def choose_query(source: str, loaded: list, split):
    """A dataset index (int) or an uploaded PIL image, or None when there is nothing to ask yet."""
    if source == "browse":
        return browse_query(loaded, split)
    if source == "number":
        return numbered_query(loaded, split)
    if source == "random":
        return random_query(split)
    if source == "disagree":
        return disagreement_query(loaded, split)
    return uploaded_query(split, loaded[0][0].run)


@st.cache_resource(max_entries=64, show_spinner=False)
def _opening_query(runs: tuple, label: int | None, _loaded: list) -> int | None:
    """Where a query box opens: an image of class ``label`` (None: any unseen one) that tells the runs apart.

    ``runs`` (each run's folder and weights digest) and ``label`` key the cache; the answer is the same every rerun,
    so the box's default does not move under the user.
    """
    from ecaml.serve.retrieval import telling_query

    indexes = [index for _, index, _ in _loaded]
    candidates = np.sort(indexes[0].embeddings.indices) if label is None else indexes[0].class_members(label)
    return telling_query(indexes, candidates)  # in dataset order: the image numbers a person would try first


def opening_query(loaded: list, label: int | None) -> int | None:
    runs = tuple((entry.key, digest) for entry, _, digest in loaded)
    return errors.attempt("find an image the runs differ on", _opening_query, runs, label, loaded)


def browse_query(loaded: list, split) -> int | None:
    """Type part of a class name; pick among the matches (at most MAX_CLASS_OPTIONS listed); then an image of it."""
    names = split.dataset.class_names
    classes = split.classes("unseen")
    typed = st.text_input(
        f"Class name contains ({len(classes):,} unseen classes)", key="query_class_search",
        placeholder="type part of a name",
    ).strip().lower()
    matches = [c for c in classes if typed in names[c].lower()] if typed else list(classes)
    if not matches:
        st.caption(f"No unseen class name contains “{typed}”.")
        return None
    if len(matches) > MAX_CLASS_OPTIONS:
        st.caption(f"{len(matches):,} classes match; the first {MAX_CLASS_OPTIONS} are listed. Type more to narrow.")
    label = st.selectbox("Class", matches[:MAX_CLASS_OPTIONS], format_func=lambda c: names[c], key="query_class")
    members = list(loaded[0][1].class_members(label))
    opening = opening_query(loaded, label)
    first = members.index(opening) + 1 if opening in members else 1
    number = st.number_input(f"Image number (1–{len(members)})", 1, len(members), first, key=f"query_number_{label}")
    return int(members[int(number) - 1])


def numbered_query(loaded: list, split) -> int | None:
    """Any unseen image by its dataset number (the number the map's hover and the captions show).

    The box has no upper bound: a number past a bound is refused by the browser without a word (the box keeps it,
    the page keeps the last image), so every number reaches the page, and a seen image's number or one past the
    data set is kept as typed with a caption saying why it is no query.
    """
    index = loaded[0][1]
    highest = len(split.dataset) - 1
    opening = opening_query(loaded, None)
    first = opening if opening is not None else int(index.embeddings.indices.min())
    number = int(st.number_input(f"Dataset image number (0–{highest}, unseen classes only)", 0, None, first,
                                 key="query_image"))
    if number > highest:
        st.caption(f"There is no image {number:,}: this data set's images are numbered 0 to {highest:,}.")
        return None
    try:
        index.row_of(number)
    except ValueError:
        st.caption(
            f"Image {number} is not of an unseen class (it is of class {split.dataset.class_name(number)}, which "
            "the runs trained on); choose another number."
        )
        return None
    return number


def random_query(split) -> int:
    unseen = split.indices("unseen")
    if (
        st.button("Another random image", icon=":material/casino:", key="random_again")
        or RANDOM_QUERY_KEY not in st.session_state
    ):
        st.session_state[RANDOM_QUERY_KEY] = int(random.choice(list(unseen)))
    return st.session_state[RANDOM_QUERY_KEY]


def disagreement_job(loaded: list):
    """The background job ranking the queries where these runs disagree (on a large gallery it takes a while)."""
    indexes = [index for _, index, _ in loaded]
    key = ("disagreement",) + tuple((entry.key, digest) for entry, _, digest in loaded)

    def work(job) -> None:
        from ecaml.serve.retrieval import disagreement_queries

        job.result = [int(i) for i in disagreement_queries(indexes, k=4, limit=50)]

    return key, background_jobs.start(key, "finding where the runs disagree", work)


def disagreement_query(loaded: list, split) -> int | None:
    if len(loaded) < 2:
        st.info("Pick at least two runs to find the queries they disagree on.")
        return None
    key, job = disagreement_job(loaded)
    if job.running:  # a small gallery is ranked in well under a second: show its answer rather than a progress bar
        job.thread.join(timeout=QUICK_JOB_S)
    if job.running:
        st.info("Finding the queries where the runs disagree (a background job)…", icon=":material/hourglass_top:")
        background_jobs.follow((key,), ("Comparing the runs' answers",))
        return None
    if job.error is not None:
        st.error(f"Could not find where the runs disagree: {errors.one_sentence(job.error)}")
        return None
    candidates = job.result
    if not candidates:
        st.info("These runs agree on every query.")
        return None
    return st.selectbox(
        f"Query ({len(candidates)} found, most disagreement first)",
        candidates,
        key="query_disagreement",
        format_func=lambda i: f"class {split.dataset.class_name(i)}, dataset image {i}",
        help="Queries whose top-4 neighbours are right for one run and wrong for another.",
    )


def uploaded_query(split, run):
    upload = st.file_uploader("An image (kept in memory only)", type=UPLOAD_TYPES, key="query_upload")
    if upload is None:
        st.caption("Any picture works; it is converted to the dataset's format before embedding.")
        return None
    refusal = deployment.upload_refusal(upload.size)
    if refusal:
        st.error(refusal)
        return None
    content = upload.getvalue()
    image = errors.attempt("read this upload", open_image, content, split.dataset.mode, upload.name)
    return upload_preview.prepared_upload(image, content, run, split) if image is not None else None


def show_query(query, split) -> None:
    if isinstance(query, int):
        st.image(
            pictures.enlarged(split.dataset.image(query), QUERY_PIXELS),
            caption=f"query: class {split.dataset.class_name(query)}",
        )
        st.caption(f"Dataset image {query}. It is left out of its own neighbour list.")
    else:  # the upload and the model's view of it are shown beside the uploader
        st.caption(
            "Query: your upload, as the model sees it (left). Its class is unknown, so neighbours get grey frames."
        )


# ----------------------------------------------------------------------------- the answers


def ask(index, query, k: int):
    if isinstance(query, int):
        return errors.attempt(f"query {index.run.name}", index.query_by_index, query, k)
    return errors.attempt(f"query {index.run.name}", index.query_by_image, query, k)


def show_results(loaded: list, query, k: int) -> None:
    st.subheader("Nearest neighbours")
    st.caption(
        "Best match first. Under each image: ✓ or ✗ (same class as the query or not), its class, and its cosine "
        "similarity to the query."
    )
    for panel, (entry, index, _) in zip(layout.panels(len(loaded)), loaded):
        with panel:
            result = ask(index, query, k)
            if result is not None:
                show_neighbours(entry, result)


def show_neighbours(entry: run_catalog.RunEntry, result) -> None:
    st.markdown(f"#### {entry.name}")
    verdicts = [n.correct for n in result.neighbours]
    score = (
        f"{sum(v is True for v in verdicts)} of {len(verdicts)} share the query's class · "
        if None not in verdicts
        else ""
    )
    st.caption(f"{run_catalog.setting_summary(entry.run)} · {score}answered in {1000 * result.seconds:.1f} ms")
    split = splits.split_of(entry.run)
    st.image(
        [pictures.framed(split.dataset.image(n.dataset_index), n.correct, NEIGHBOUR_PIXELS) for n in result.neighbours],
        caption=neighbour_captions(result.neighbours),
        width=NEIGHBOUR_PIXELS + 10,  # the thumbnail and its frame
    )


def neighbour_captions(neighbours) -> list[str]:
    """Each neighbour's verdict, class and cosine similarity, with as many decimals (2 to 5) as tell the listed
    similarities apart: a tight embedding (a Fashion-MNIST run's unseen photos lie within 0.01 of each other)
    showed 1.00 under every neighbour."""
    similarities = [float(n.similarity) for n in neighbours]
    decimals = next((d for d in range(2, 6) if len({round(s, d) for s in similarities}) == len(similarities)), 5)
    return [f"{VERDICT_MARKS[n.correct]}{n.class_name} · {s:.{decimals}f}" for n, s in zip(neighbours, similarities)]


VERDICT_MARKS = {True: "✓ ", False: "✗ ", None: ""}  # same class as the query, another, or no class to compare


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
