"""The Train page's form: its choices and defaults (the featured setting at lecture length), and starting a job.

``start`` is also how the page trains a run's twin: one way in for every job this session starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from app import data_roots, errors, layout, lesson, locations, run_catalog, training_job
from ecaml.config import DATASET_DEFAULTS, TrainConfig


DATASETS = {
    "digits": "digits: 8×8 handwritten digits, 0–4 seen, 5–9 unseen (a run trains in seconds on a CPU)",
    "glyphs": "glyphs: 104 letters and digits from many fonts, half seen, half unseen",
    "fashion-mnist": "Fashion-MNIST (real photos): 70,000 garment photos at 28×28, clothes seen, shoes, bags and "
                     "shirts unseen (at its defaults an EC-off / EC-on pair trains in about 2 minutes on a 2-core CPU)",
    "folder": "folder: your own images, one sub-folder per class",
}


LOSSES = ("binomial", "triplet", "npair")


BACKBONES = ("smallcnn", "resnet18", "resnet50", "googlenet")


DEVICES = ("auto", "cpu", "cuda")


# Evaluate every 12th epoch of the lecture length (lesson.LECTURE_EPOCHS, 192): quality during training is a curve of
# 16 points.
EVALUATE_EVERY_EPOCHS = 12
CURVE_POINTS = 16
# One run of the form's defaults, alone on 2 cores (the lesson's pairs: benchmarks/digits_lecture.json, 70 s;
# benchmarks/fashion_lecture.json, 119 s, final evaluations included).
RUN_LENGTHS = {"digits": "about a minute", "fashion-mnist": "1-2 minutes with its final evaluation"}


DATASET_KEY, EPOCHS_KEY, EVAL_EVERY_KEY = "train_dataset", "train_epochs", "train_eval_every"
STOPPING_KEY = "stop_requested_for"  # the job this session asked to stop (it ends after its current step)


def default_epochs_help() -> str:
    defaults = ", ".join(f"{name} {values['epochs']}" for name, values in DATASET_DEFAULTS.items())
    return f"Empty: the dataset's default ({defaults})."


def form_defaults() -> TrainConfig:
    """What the form starts from: the featured EC-on run's setting (so a new run is comparable with the shipped
    pair), else the library's defaults; evaluated every epoch, so quality during training is a curve."""
    featured = run_catalog.featured_setting()
    base = featured if featured is not None and featured.dataset in DATASETS else TrainConfig()
    # Fashion-MNIST's own defaults are the lecture's length already (1 epoch, about 2 minutes a pair on 2 cores:
    # benchmarks/fashion_lecture.json).
    lecture = base if base.dataset == run_catalog.FASHION else lesson.lecture_length(base)
    return evaluated_along(lecture)


def evaluated_along(config: TrainConfig) -> TrainConfig:
    """``config`` evaluated about CURVE_POINTS times along its epochs (``evaluation_spacing``)."""
    return dataclasses.replace(config, eval_every=evaluation_spacing(config.resolved().epochs))


def dataset_defaults(dataset: str, defaults: TrainConfig) -> TrainConfig:
    """The form's values on ``dataset``: the featured setting on its own data set, else the same loss, λ and seed
    at that data set's lecture length, evaluated along it."""
    if dataset == defaults.dataset:
        return defaults
    return evaluated_along(TrainConfig(dataset=dataset, loss=defaults.loss, ec_weight=defaults.ec_weight,
                                       seed=defaults.seed, epochs=lecture_epochs(dataset)))


def _show_dataset_defaults() -> None:
    """The chosen data set's lecture length and evaluation spacing put into the form's boxes (a form's own fields
    cannot redraw until it is submitted, so the data set is chosen outside it)."""
    shown = dataset_defaults(st.session_state[DATASET_KEY], form_defaults())
    st.session_state[EPOCHS_KEY] = shown.epochs
    st.session_state[EVAL_EVERY_KEY] = int(shown.eval_every)


def _kept_or(key: str, value) -> dict:
    """``value=`` for a box the first time it is drawn; afterwards its state (set by the data set's choice) rules."""
    return {} if key in st.session_state else {"value": value}


def evaluation_spacing(epochs: int) -> int:
    """Evaluate about CURVE_POINTS times along ``epochs`` (every EVALUATE_EVERY_EPOCHS at most): never an interval
    longer than the run (Fashion-MNIST's one epoch once read "evaluated every 12 epochs")."""
    return min(EVALUATE_EVERY_EPOCHS, max(1, epochs // CURVE_POINTS))


def lecture_epochs(dataset: str) -> int | None:
    """The epochs a run the room can watch trains on ``dataset``: digits the lesson's length, the others their own
    defaults (None; Fashion-MNIST's single epoch is already about a minute)."""
    return lesson.LECTURE_EPOCHS if dataset == "digits" else None


def schedule_text(config: TrainConfig) -> str:
    """"trained for 192 epochs (about a minute on two cores), evaluated every 12 epochs" and the like."""
    epochs = config.resolved().epochs
    evaluated = (f"evaluated every {layout.plural(config.eval_every, 'epoch')}" if config.eval_every < epochs
                 else "evaluated when it ends")
    length = RUN_LENGTHS.get(config.dataset, "minutes")
    return f"trained for {layout.plural(epochs, 'epoch')} ({length} on two cores), {evaluated}"


def index_of(options, value) -> int:
    options = list(options)
    return options.index(value) if value in options else 0


def show_form(running: Path | None) -> None:
    """The settings of a new run; its Start button is disabled while a job runs (the page redraws when it ends)."""
    featured = form_defaults()
    dataset = st.selectbox(
        "Dataset",
        list(DATASETS),
        index=index_of(DATASETS, featured.dataset),
        format_func=lambda d: DATASETS[d].split(":")[0],
        key=DATASET_KEY,
        on_change=_show_dataset_defaults,
        help="\n\n".join(DATASETS.values()),
    )
    defaults = dataset_defaults(dataset, featured)
    if dataset == featured.dataset and run_catalog.featured_setting() is not None:
        st.caption(
            f"Starts from the featured setting ({defaults.dataset}, {defaults.loss}, λ = {defaults.ec_weight:g}, "
            f"seed {defaults.seed}): the run the app opens on, so yours can be compared with it; "
            f"{schedule_text(defaults)} and filmed every {layout.plural(defaults.film_every, 'step')}, so the curves "
            "can be watched as they grow."
        )
    elif dataset != "folder":
        st.caption(f"On {dataset}: {schedule_text(defaults)}, so the curves can be watched as they grow.")
    # Enter in a field must not start a run (minutes of CPU) before the rest of the form is filled in.
    with st.form("train_form", border=True, enter_to_submit=False):
        first, second, third = st.columns(3)
        data_root = first.text_input(
            "Data root (folder dataset only)",
            key="train_data_root",
            placeholder="my-images",
            help=f"A folder inside `{locations.shown_path(locations.data_dir())}/` or another allowed folder (see "
            "'Folders the app may read data from' below) with one sub-folder of images per class.",
        )
        loss = second.selectbox("Base metric loss", LOSSES, index=index_of(LOSSES, defaults.loss), key="train_loss")
        ec_weight = second.number_input(
            "Energy Confusion weight λ",
            0.0,
            10.0,
            float(defaults.ec_weight),
            0.01,
            format="%.2f",
            key="train_ec_weight",
            help="0 trains the plain baseline; the paper uses 0.13; the weights the study chose on validation classes "
            "are in results/study.md.",
        )
        epochs = third.number_input(
            "Epochs",
            1,
            1000,
            **_kept_or(EPOCHS_KEY, defaults.epochs),
            key=EPOCHS_KEY,
            placeholder="dataset default",
            help=default_epochs_help(),
        )
        seed = third.number_input("Seed", 0, 2**31 - 1, int(defaults.seed), key="train_seed")
        with st.expander("More settings"):
            more = st.columns(3)
            name = more[0].text_input(
                "Run name",
                key="train_name",
                placeholder="automatic",
                help="A folder name under runs/; empty: made from the settings.",
            )
            backbone = more[0].selectbox(
                "Backbone",
                BACKBONES,
                index=index_of(BACKBONES, defaults.backbone),
                key="train_backbone",
                help="The torchvision networks need large images and are slow without a GPU.",
            )
            device = more[1].selectbox(
                "Device", DEVICES, key="train_device", help="auto: a CUDA GPU when there is one."
            )
            max_steps = more[1].number_input(
                "Stop after steps", 0, 10**7, int(defaults.max_steps or 0), key="train_max_steps",
                help="0: train all epochs.",
            )
            eval_every = more[2].number_input(
                "Evaluate every (epochs)",
                0,
                1000,
                **_kept_or(EVAL_EVERY_KEY, int(defaults.eval_every)),
                key=EVAL_EVERY_KEY,
                help="0: only at the end. Evaluations draw the Recall@K-over-training chart.",
            )
            val_classes = more[2].number_input(
                "Validation classes",
                0,
                10000,
                int(defaults.val_classes),
                key="train_val_classes",
                help="Seen classes held out of training to choose epochs and λ by. Digits has only 5 seen classes: "
                "holding out 2 leaves 3 to train on, a different run that no longer compares with the shipped pair, "
                "so the default keeps all 5 and the curves show the test classes, labelled as such (for watching, "
                "not for choosing). On glyphs or your own data, hold out some (the study used 13 of glyphs' 52).",
            )
        submitted = st.form_submit_button(
            "Start training",
            type="primary",
            icon=":material/play_arrow:",
            disabled=running is not None,  # the caption below says why
        )
        if running is not None:
            st.caption(f"A job is running: **{running.name}**. You can start a new run when it ends or is stopped.")
    if not submitted:
        return
    config = form_config(
        featured,
        dataset=dataset,
        data_root=data_root.strip() or None,
        loss=loss,
        ec_weight=float(ec_weight),
        epochs=int(epochs) if epochs else None,
        seed=int(seed),
        backbone=backbone,
        device=device,
        max_steps=int(max_steps) or None,
        eval_every=int(eval_every),
        val_classes=int(val_classes),
    )
    start(config, name.strip() or None)


def form_config(defaults: TrainConfig, **shown) -> TrainConfig:
    """The run the form asks for: its fields, and on the featured run's data set the featured run's split too.

    What the form does not show (images held out of training, the validation seed, the film's spacing) follows the
    featured run and the lecture length, so a
    run from the form shares its split and gets a Δ against it on Compare. During training it scores the validation
    classes when some are held out, else the test classes, which Compare labels "not for model selection".
    """
    hidden = {}
    if shown["dataset"] == defaults.dataset:
        hidden = {"seen_test_per_class": defaults.seen_test_per_class, "val_seed": defaults.val_seed,
                  "film_every": defaults.film_every}
    scored = (["val"] if shown["val_classes"] else ["unseen"]) if shown["eval_every"] else None
    return TrainConfig(**hidden, **shown, eval_splits=scored)


def start(config: TrainConfig, name: str | None, rerun: bool = True) -> Path | None:
    """Start a job for ``config``; this session then calls it its own. The run folder, or None after an error."""
    if config.dataset == run_catalog.FASHION and not run_catalog.photos_available():
        st.error(run_catalog.PHOTOS_HINT)
        return None
    if config.dataset == "folder" and not config.data_root:
        st.error("The folder dataset needs a data root: a folder with one sub-folder of images per class.")
        return None
    config = errors.attempt("use this run's data or weights", data_roots.confine_config, config)  # every path
    if config is None:
        return None
    # The job manager refuses a second job (one started from another tab since this page was drawn) with a JobError.
    run_dir = errors.attempt("start training", training_job.start, config, name)
    if run_dir is None:
        return None
    training_job.remember_own_job(Path(run_dir))
    st.session_state[STOPPING_KEY] = None
    st.toast(f"Started {Path(run_dir).name}.", icon=":material/rocket_launch:")
    if rerun:
        st.rerun()
    return Path(run_dir)
