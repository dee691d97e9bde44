"""The Import page: embeddings made elsewhere become a run of yours (``ecaml.serve.imports``), from a file on the
server (inside an allowed data folder, as the Train page lists them) or a small uploaded .npz. Off in read-only mode. The import runs in a background
job (an SOP-sized file takes tens of seconds), and the new run then opens on every page like any other.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import streamlit as st

from app import background_jobs, data_roots, deployment, errors, locations, run_catalog, run_picker

UPLOAD_LIMIT_BYTES = 20 * 1024 * 1024  # an upload sits in memory; bigger files go on the server and are named here
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def render() -> None:
    st.title("Import embeddings")
    st.caption(
        "Bring vectors made elsewhere (pytorch-metric-learning, open-metric-learning, your own pipeline): a `.npz` "
        "with arrays `embeddings` [N, D] and `labels` [N] (optional `split` of seen / unseen / val, optional "
        "`paths`), or a `.parquet` file with those columns. The import scores the unseen rows with the same "
        "evaluator as trained runs; the run then opens on Compare, Embeddings and Retrieval (queries among its "
        "images: uploads need a model). From a shell: `python -m ecaml import embeddings FILE --out runs/NAME`."
    )
    if deployment.read_only():
        st.info("Importing is off on this server: it is a read-only demo, so nothing is written here. "
                "Run the app on your machine to import your own vectors.")
        return
    name = st.text_input("Name of the new run", key="import_name", placeholder="e.g. pml-fashion-triplet").strip()
    source = st.radio("From", ["server", "upload"], horizontal=True, key="import_source",
                      format_func={"server": "A file on the server", "upload": "Upload a small .npz"}.get)
    if source == "server":
        folders = ", ".join(f"`{locations.shown_path(root)}/`" for root in data_roots.allowed_roots())
        path = st.text_input(f"Path (inside an allowed data folder: {folders}; relative to the first)", key="import_path")
        upload = None
    else:
        path, upload = None, st.file_uploader(".npz file (kept until imported)", type=["npz"], key="import_upload")
    image_root = st.text_input(
        "Image folder (optional: the folder the file's `paths` are relative to, for thumbnails)", key="import_images",
        help="Inside an allowed data folder, like the file. Needed when the file has a `paths` column.").strip()
    same_items = choose_same_items()
    if st.button("Import", type="primary", key="import_start", disabled=not name or not (path or upload)):
        start_import(name, path, upload, same_items, image_root or None)
    show_job()


JOB_KEY = ("import",)


def choose_same_items() -> Path | None:
    """Optionally, the trained run whose unseen images the rows are: Embeddings then aligns the two."""
    trained = {str(e.path): e for e in run_catalog.usable(run_catalog.scan_all_runs())
               if e.step is None and e.run.model is not None}
    chosen = st.selectbox(
        "The same images as (optional)", [None, *trained], key="import_same_items",
        format_func=lambda key: "— other images —" if key is None else trained[key].name,
        help="A run whose unseen images the rows are: in its order, as `python -m ecaml embed RUN --split unseen` "
             "writes them, with each row's class. Embeddings then puts the two side by side, image for image, "
             "with their neighbourhood change.",
    )
    return None if chosen is None else Path(chosen)


def start_import(name: str, path: str | None, upload, same_items: Path | None = None,
                 image_root: str | None = None) -> None:
    from ecaml.store.paths import PathError, confine

    if not RUN_NAME.match(name):
        st.error("A run name is letters, digits, '.', '_' and '-' (up to 80), starting with a letter or digit.")
        return
    out = locations.runs_dir() / name
    if upload is not None:
        if upload.size > UPLOAD_LIMIT_BYTES:
            st.error(f"This file is {upload.size / 2**20:.1f} MB; uploads take at most "
                     f"{UPLOAD_LIMIT_BYTES / 2**20:.0f} MB. Put larger files in the data folder and name them here.")
            return
        source, data = None, upload.getvalue()
    else:
        try:
            source, data = confine(path, data_roots.allowed_roots(), base=locations.data_dir()), None
        except PathError as error:
            st.error(f"Could not import: {error}")
            return
    images = None
    if image_root:
        try:
            images = confine(image_root, data_roots.allowed_roots(), base=locations.data_dir())
        except PathError as error:
            st.error(f"Could not import: image folder {error}")
            return
    locations.runs_dir().mkdir(parents=True, exist_ok=True)
    background_jobs.forget(JOB_KEY)
    background_jobs.start(JOB_KEY, f"importing {name}",
                          lambda job: _import(job, source, data, out, same_items, images))


def _import(job, source: Path | None, data: bytes | None, out: Path, same_items: Path | None,
            image_root: Path | None = None) -> None:
    from ecaml.serve.imports import import_embeddings, summary

    with tempfile.TemporaryDirectory() as folder:
        if data is not None:  # an upload: a private temporary file, gone when the import ends
            source = Path(folder) / "upload.npz"
            source.write_bytes(data)
        import_embeddings(source, out, image_root=image_root, same_items_as=same_items)
    # The summary line, and what the pages open on: the import, after the trained run it lines up with (if any).
    job.result = (summary(out), [str(run) for run in (same_items, out) if run is not None])


def show_job() -> None:
    job = background_jobs.job_by_key(JOB_KEY)
    if job is None:
        return
    if job.running:
        background_jobs.follow((JOB_KEY,), (job.label.capitalize(),))
    elif job.error is not None:
        st.error(f"Could not import: {errors.one_sentence(job.error)}")
    elif job.result:
        line, runs = job.result
        st.success(f"{line}.")
        for column, page in zip(st.columns(3), ("compare", "embeddings", "retrieval")):
            if column.button(f"Open it on {page.capitalize()}", key=f"import_open_{page}",
                             icon=":material/arrow_forward:"):
                run_picker.open_runs_on(page, runs)


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
