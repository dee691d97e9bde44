"""A run's embeddings of a split, computed by a background job, with a progress bar on every page that needs them.

Compare (distance histograms), Embeddings and Retrieval all call ``ensure_embedded``:
it returns True at once when the library's disk cache holds the embeddings
(``ecaml.serve.embeddings_cache.cached_embeddings``, keyed by weights digest and data), and
otherwise starts (or re-attaches to) one job per run and split, shows its
progress, and redraws the page when it ends. No request ever embeds a split.
"""

from __future__ import annotations

import streamlit as st

from app import background_jobs, errors, splits
from app.background_jobs import BackgroundJob
from app.locations import cache_dir
from app.run_catalog import RunEntry, run_fingerprint


def embedding_job_key(entry: RunEntry, part: str) -> tuple:
    return ("embed", part, str(cache_dir()), entry.key, run_fingerprint(entry.path))


def embed_in_background(entry: RunEntry, part: str) -> BackgroundJob:
    run, cache = entry.run, cache_dir()

    def work(job: BackgroundJob) -> None:
        from ecaml.serve.embeddings_cache import cached_embeddings  # slow first import (torchvision, faiss): off the page

        # The split through the app's per-process cache: a large folder is loaded (every image checked) once,
        # not once per run's job.
        cached_embeddings(run, part, cache, progress=job.report, split=splits.split_of(run))

    return background_jobs.start(embedding_job_key(entry, part), f"embedding the {part} images of {entry.name}", work)


def is_embedded(entry: RunEntry, part: str) -> bool:
    from ecaml.serve.embeddings_cache import is_embedded as cached  # slow first import: only once the page has painted

    return cached(entry.run, part, cache_dir())


def ensure_embedded(chosen: list[RunEntry], part: str = "unseen") -> list[RunEntry]:
    """The runs whose ``part`` embeddings are cached; for the others, a background job each, with progress.

    While any job runs, the page shows their progress bars (redrawn every second) and the whole page reruns once
    they have all ended. A job that failed shows its error once, with a button to try again.
    """
    ready, waiting = [], []
    for entry in chosen:
        cached = errors.attempt(f"read the weights of {entry.name}", is_embedded, entry, part)
        if cached is None:
            continue
        if cached:
            ready.append(entry)
            continue
        job = embed_in_background(entry, part)
        if job.error is not None:
            st.error(f"Could not embed the {part} images of {entry.name}: {errors.one_sentence(job.error)}")
            if st.button("Try again", key=f"retry_embedding_{entry.key}"):
                background_jobs.forget(embedding_job_key(entry, part))
                st.rerun()
        elif job.running:
            waiting.append((entry, job))
        else:  # ended without a cache file: a run still training, or a cache that cannot be written
            ready.append(entry)
    if waiting:
        st.info(
            f"Embedding the {part} images in the background (once per run: cached on disk afterwards). You can "
            "leave this page and come back: the job goes on, and this page picks it up again.",
            icon=":material/hourglass_top:",
        )
        background_jobs.follow(
            tuple(embedding_job_key(entry, part) for entry, _ in waiting),
            tuple(f"Embedding {entry.name}" for entry, _ in waiting),
        )
    return ready
