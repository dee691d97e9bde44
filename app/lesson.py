"""The Train page's lesson: one click trains an EC-off / EC-on pair on the built-in digits with a training film,
then opens the film on the Embeddings page.

The pair is the featured pair's setting (``checkpoints/featured.json``, written by
``scripts/study.py``): its dataset, loss, λ, length and seed, so the lesson re-makes
the comparison the app opens on and lets it be watched forming. Both runs train
at once, each in its own ``python -m ecaml train`` process (one CPU thread each),
started and waited for (so reaped) by a background job of this server; their
progress is read from their run folders.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import streamlit as st

from app import background_jobs, errors, run_catalog, run_picker
from app.background_jobs import BackgroundJob
from app.locations import REPO_ROOT, runs_dir
from ecaml.config import TrainConfig
from ecaml.jobs import config_flags
from ecaml.runs import read_status

# Used when no featured pair can be read: the featured setting of the study in results/ (digits, triplet, λ = 1).
FALLBACK_SETTING = {"dataset": "digits", "loss": "triplet", "ec_weight": 1.0, "epochs": 2, "seed": 0}
# The real-photos lesson when no Fashion-MNIST pair is featured: its data set's defaults (the lecture's length).
FASHION_FALLBACK = {"dataset": "fashion-mnist", "loss": "triplet", "ec_weight": 1.0, "seed": 0, "film_every": 70}
LESSON_DATASETS = {"digits": "Digits (8×8, seconds)", "fashion-mnist": "Fashion-MNIST (real photos, about 3 minutes)"}
DATASET_CHOICE_KEY = "lesson_dataset"
LESSON_FILM_EVERY = 2  # when the featured run has no film of its own to take the spacing from
LESSON_OVERRIDES: dict = {}  # further config fields (tests shorten the lesson with max_steps)
LESSON_KEY = "lesson_runs"  # this session's lesson: its run folders
FILM_VIEW = "film"


def lesson_configs(dataset: str | None = None) -> dict[str, TrainConfig]:
    """The pair, keyed by λ tag ("ec0", "ec0.6"): the featured EC-on run's config, on the CPU, filmed, EC off and on.

    ``dataset``: "fashion-mnist" for the real-photos pair, "digits" for the top-level one; None: the pair the app
    opens on."""
    fashion = (dataset or run_catalog.opening_dataset()) == run_catalog.FASHION
    featured = run_catalog.featured_setting(dataset) or TrainConfig(**(FASHION_FALLBACK if fashion else FALLBACK_SETTING))
    settings = {"device": "cpu", "eval_every": 0, "film_every": featured.film_every or LESSON_FILM_EVERY,
                **LESSON_OVERRIDES}
    base = dataclasses.replace(featured, **settings)
    return {f"ec{weight:g}": dataclasses.replace(base, ec_weight=weight) for weight in (0.0, featured.ec_weight)}


def lesson_job_key(folders: tuple[str, ...]) -> tuple:
    return ("lesson",) + folders


def start_lesson(dataset: str | None = None) -> tuple[str, ...]:
    """Start both runs (in the background) into new folders under runs/; their folders."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    configs = lesson_configs(dataset)
    folders = tuple(str(runs_dir() / f"lesson-{config.dataset}-{config.loss}-{suffix}-{stamp}")
                    for suffix, config in configs.items())

    def work(job: BackgroundJob) -> None:
        runs_dir().mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        processes = []
        for folder, config in zip(folders, configs.values()):
            command = [sys.executable, "-m", "ecaml", "train", *config_flags(config.resolved()), f"--out={folder}",
                       "--quiet"]
            processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        failures = []
        for folder, process in zip(folders, processes):
            output, _ = process.communicate()  # waits, so the process is reaped
            if process.returncode != 0:
                failures.append(f"{Path(folder).name}: {(output or '').strip().splitlines()[-1:] or ['no output']}")
        if failures:
            raise RuntimeError("; ".join(failures))

    background_jobs.start(lesson_job_key(folders), "the lesson pair", work)
    return folders


def lesson_progress(folders: tuple[str, ...]) -> tuple[int, int]:
    done = total = 0
    for folder in folders:
        status = read_status(Path(folder)) or {}
        done += int(status.get("step") or 0)
        total += int(status.get("total_steps") or 0)
    return done, total


@st.fragment(run_every=1.0)
def _follow(folders: tuple[str, ...]) -> None:
    job = background_jobs.job_by_key(lesson_job_key(folders))
    if job is None or not job.running:
        st.rerun()
    done, total = lesson_progress(folders)
    st.progress(done / total if total else 0.0, text=f"Training the lesson pair: step {done:,} of {total or '…'} "
                                                     f"({job.seconds:.0f} s)")


def open_film(folders: tuple[str, ...]) -> None:
    from app.views import embeddings

    st.session_state[run_picker.SELECTION_KEY] = list(folders)
    st.session_state.pop("runs_embeddings", None)  # the picker's own state would win over the selection
    st.session_state[embeddings.VIEW_KEY] = FILM_VIEW
    st.switch_page("views/embeddings.py")


def offer_lesson() -> None:
    """The lesson's panel on the Train page: the button, the pair's progress, then the way to its film."""
    st.subheader("Lesson: watch Energy Confusion shape an embedding")
    dataset = choose_lesson_dataset()
    _, on = lesson_configs(dataset).values()
    st.caption(
        f"Trains two small networks on {on.dataset}, EC off and EC on ({on.loss} loss, λ = {on.ec_weight:g}: the "
        "featured pair's setting), both at once, filming their embeddings of the classes they never see. "
        "Then the film plays them side by side."
    )
    folders = tuple(st.session_state.get(LESSON_KEY) or ())
    job = background_jobs.job_by_key(lesson_job_key(folders)) if folders else None
    if job is not None and job.running:
        _follow(folders)
        return
    if job is not None and job.error is not None:
        st.error(f"The lesson's training failed: {errors.one_sentence(job.error)}")
    elif folders and all(Path(folder, "metrics.json").is_file() for folder in folders):
        st.success("The lesson pair has finished training.", icon=":material/check_circle:")
        if st.button("Open the training film", icon=":material/movie:", key="lesson_film", type="primary"):
            open_film(folders)
        return
    if st.button("Train the lesson pair", icon=":material/school:", key="lesson_start"):
        st.session_state[LESSON_KEY] = list(start_lesson(dataset))
        st.rerun()


def choose_lesson_dataset() -> str | None:
    """Digits or Fashion-MNIST's real photos when they are here (starting on the pair the app opens on), else
    digits with one line on how to get the photos; None: the pair the app opens on."""
    if not run_catalog.photos_available():
        st.caption(run_catalog.PHOTOS_HINT)
        return None
    options = list(LESSON_DATASETS)
    default = run_catalog.opening_dataset() or "digits"
    return st.radio("Data", options, index=options.index(default), format_func=LESSON_DATASETS.get,
                    horizontal=True, key=DATASET_CHOICE_KEY)
