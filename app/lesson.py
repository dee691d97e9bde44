"""The Train page's lesson: one click trains an EC-off / EC-on pair on the built-in digits with a training film,
then opens the film on the Embeddings page.

The pair is the featured pair's setting (``checkpoints/featured.json``, written by
``scripts/study.py``): its dataset, loss, λ, length and seed, so the lesson re-makes
the comparison the app opens on and lets it be watched forming. Both runs train
at once, each in its own ``python -m ecaml train`` process (one CPU thread each),
as one job of the runs folder's job manager: the same lock as any other run (no
second job starts beside it, nor it beside another), the same owner and stop,
and no lesson at all on a read-only server. Its progress is read from its run folders.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import streamlit as st

from app import errors, layout, live_film, run_catalog, run_picker, training_job
from app.page_state import EMBEDDINGS_VIEW_KEY, FILM_VIEW
from ecaml.config import TrainConfig
from ecaml.serve.jobs import FINAL_STATES
from ecaml.store.run_files import FINAL_EVALUATION

# Used when no featured pair can be read: the featured setting of the study in results/ (digits, triplet, λ = 1).
FALLBACK_SETTING = {"dataset": "digits", "loss": "triplet", "ec_weight": 1.0, "epochs": 2, "seed": 0}
# Long enough to watch: the featured digits pair trains 2 epochs (28 steps, 7 s: over within one refresh), and 32
# epochs took 19 s for the pair on 2 idle cores; 192 epochs (2,688 steps) took 70 s with its film
# (benchmarks/digits_lecture.json; 103 s with the film laid out live on the page: digits_lecture_live_film.json),
# filmed in about LECTURE_FRAMES frames so the film grows while it trains. The
# length is chosen for the clock; on validation classes EC still helps at it (digits_lecture_validation.json).
LECTURE_EPOCHS = 192
LECTURE_FRAMES = 30
FALLBACK_STEPS_PER_EPOCH = 14  # the digits split's: 70 images per seen class in batches of 5 x 12
# The real-photos lesson when no Fashion-MNIST pair is featured: its data set's defaults (the lecture's length).
FASHION_FALLBACK = {"dataset": "fashion-mnist", "loss": "triplet", "ec_weight": 1.0, "seed": 0, "film_every": 70}
LESSON_DATASETS = {"digits": "Digits (8×8, under 2 minutes)", "fashion-mnist": "Fashion-MNIST (real photos, about 3 minutes)"}
DATASET_CHOICE_KEY = "lesson_dataset"
LESSON_OVERRIDES: dict = {}  # further config fields (tests shorten the lesson with max_steps)
LESSON_KEY = "lesson_runs"  # this session's lesson: its run folders


def lesson_configs(dataset: str | None = None) -> dict[str, TrainConfig]:
    """The pair, keyed by λ tag ("ec0", "ec0.6"): the featured EC-on run's config, on the CPU, filmed, EC off and on.

    ``dataset``: "fashion-mnist" for the real-photos pair (its data set's defaults are the lecture's length), "digits"
    for the top-level one (trained for the lecture's length); None: the pair the app opens on."""
    if (dataset or run_catalog.opening_dataset()) == run_catalog.FASHION:
        featured = run_catalog.featured_setting(run_catalog.FASHION) or TrainConfig(**FASHION_FALLBACK)
        lecture = featured
    else:
        featured = run_catalog.featured_setting("digits") or TrainConfig(**FALLBACK_SETTING)
        lecture = lecture_length(featured)
    base = dataclasses.replace(lecture, device="cpu", eval_every=0, **LESSON_OVERRIDES)
    return {f"ec{weight:g}": dataclasses.replace(base, ec_weight=weight) for weight in (0.0, featured.ec_weight)}


def lecture_length(config: TrainConfig) -> TrainConfig:
    """``config`` trained for LECTURE_EPOCHS, filmed about LECTURE_FRAMES times: a run a room can watch grow."""
    steps = (run_catalog.featured_steps_per_epoch("digits") or FALLBACK_STEPS_PER_EPOCH) * LECTURE_EPOCHS
    return dataclasses.replace(config, epochs=LECTURE_EPOCHS, film_every=max(1, -(-steps // LECTURE_FRAMES)))


def start_lesson(dataset: str | None = None) -> tuple[str, ...]:
    """Start both runs as one job into new folders under runs/; their folders. JobError (one line) when refused:
    a job already runs, or the server is read-only."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    configs = lesson_configs(dataset)
    named = [(config, f"lesson-{config.dataset}-{config.loss}-{suffix}-{stamp}") for suffix, config in configs.items()]
    folders = training_job.job_manager().start_together(named, owner=training_job.session_owner())
    return tuple(str(folder) for folder in folders)


def lesson_running(folders: tuple[str, ...]) -> bool:
    running = {str(run_dir) for run_dir in training_job.current_runs()}
    return any(folder in running for folder in folders)


def own_lesson_after_reload() -> tuple[str, ...]:
    """The lesson this session started, when its page was reloaded meanwhile (it was the folder's last job)."""
    runs = training_job.own_last_job()
    if len(runs) == 2 and all(run.name.startswith("lesson-") for run in runs):
        return tuple(str(run) for run in runs)
    return ()


@dataclasses.dataclass(frozen=True)
class PairProgress:
    done: int  # steps trained, both runs together
    total: int  # steps to train, both runs together (0 until a run has said)
    evaluating: bool  # a run has trained its steps and is being scored (which can take minutes)
    trained: bool  # every run has trained its steps (and filmed its last frame)


def lesson_progress(folders: tuple[str, ...]) -> PairProgress:
    """Where the pair stands, from each run's progress: its history's steps as well as its status, since the status
    moves only at checkpoints (once an epoch) and the Fashion-MNIST lesson trains one epoch."""
    progresses = [progress for folder in folders if (progress := training_job.job_progress(Path(folder)))]
    trained = [p.phase == FINAL_EVALUATION or p.state == "completed" for p in progresses]
    return PairProgress(sum(p.step for p in progresses), sum(p.total_steps for p in progresses),
                        any(p.phase == FINAL_EVALUATION for p in progresses),
                        len(trained) == len(folders) > 0 and all(trained))


@st.fragment(run_every=1.0)
def _follow(folders: tuple[str, ...]) -> None:
    if not lesson_running(folders):
        st.rerun()
    pair = lesson_progress(folders)
    total_text = f"{pair.total:,}" if pair.total else "…"
    st.progress(min(pair.done / pair.total, 1.0) if pair.total else 0.0,
                text=f"Training the lesson pair: step {pair.done:,} of {total_text}"
                + (": training done, evaluating both runs…" if pair.evaluating else ""))
    live_film.show_live_film(folders)
    if pair.trained:  # the films are complete: lay out the whole one while the runs are evaluated
        live_film.lay_out_whole_film(folders)


def open_film(folders: tuple[str, ...]) -> None:
    st.session_state[EMBEDDINGS_VIEW_KEY] = FILM_VIEW
    run_picker.open_runs_on("embeddings", list(folders))


def offer_lesson() -> None:
    """The lesson's panel on the Train page: the button, the pair's progress, then the way to its film."""
    st.subheader("Lesson: watch Energy Confusion shape an embedding")
    dataset = choose_lesson_dataset()
    _, on = lesson_configs(dataset).values()
    st.caption(
        f"Trains two small networks on {on.dataset}, EC off and EC on ({on.loss} loss, λ = {on.ec_weight:g}: the "
        f"featured pair's setting, for {layout.plural(on.epochs, 'epoch')} so it can be watched), both at once, "
        "filming their embeddings of the classes they never see: each run's newest frame shows as they train, "
        "then the whole film plays them side by side."
    )
    folders = tuple(st.session_state.get(LESSON_KEY) or own_lesson_after_reload())
    if folders and lesson_running(folders):
        _follow(folders)
        return
    failures = [progress for progress in map(training_job.job_progress, map(Path, folders))
                if progress is not None and progress.state in FINAL_STATES and progress.state != "completed"]
    if failures:
        reasons = "; ".join(f"{p.run_dir.name} {training_job.stopped_text(p) if p.state == 'stopped' else p.message}"
                            for p in failures)
        st.error(f"The lesson's training did not finish: {errors.one_sentence(Exception(reasons))}")
    elif folders and all(Path(folder, "metrics.json").is_file() for folder in folders):
        st.success("The lesson pair has finished training.", icon=":material/check_circle:")
        if st.button("Open the training film", icon=":material/movie:", key="lesson_film", type="primary"):
            open_film(folders)
        return
    if st.button("Train the lesson pair", icon=":material/school:", key="lesson_start"):
        started = errors.attempt("start the lesson", start_lesson, dataset)
        if started is not None:
            st.session_state[LESSON_KEY] = list(started)
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
