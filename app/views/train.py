"""The Train page: a form that starts a training job in its own process, and the job's live progress.

``ecaml.jobs.JobManager`` owns the process; this page only asks it to start or
stop, and polls ``progress`` from a fragment so the rest of the page never waits.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import charts, errors, layout, lesson, locations, run_catalog, run_picker, training_job
from ecaml.config import DATASET_DEFAULTS, TrainConfig
from ecaml.paths import PathError, confine
from ecaml.runs import read_metrics

DATASETS = {
    "digits": "digits: 8×8 handwritten digits, 0–4 seen, 5–9 unseen (a run takes about a minute on a CPU)",
    "glyphs": "glyphs: 104 letters and digits from many fonts, half seen, half unseen",
    "folder": "folder: your own images, one sub-folder per class",
}
LOSSES = ("binomial", "triplet", "npair")
BACKBONES = ("smallcnn", "resnet18", "resnet50", "googlenet")
DEVICES = ("auto", "cpu", "cuda")
LIVE_CURVES = (("metric_loss", "total_loss"), ("log_energy",))
LAST_JOB_KEY = "last_training_job"  # the job this session started, to report on once it ends
STOPPING_KEY = "stop_requested_for"  # the job this session asked to stop (it ends after its current step)


def render() -> None:
    st.title("Train a run")
    st.caption(
        f"Training runs in its own process and writes to `{locations.shown_path(locations.runs_dir())}/`; you can browse "
        "the other pages meanwhile. A finished run appears on the Compare page."
    )
    running = show_job()
    lesson.offer_lesson()
    st.subheader("New run")
    show_form(running)


# ----------------------------------------------------------------------------- the job


def show_job() -> Path | None:
    """The running job (also after a page reload), else how this session's last job ended; the running job's folder."""
    running = training_job.current_job()
    if running is not None:
        st.session_state[LAST_JOB_KEY] = str(running)
        live_panel(str(running))
        return running
    last = st.session_state.get(LAST_JOB_KEY)
    progress = training_job.job_progress(Path(last)) if last else None
    if progress is not None:
        finished_panel(Path(last), progress)
    return None


@st.fragment(run_every=2.0)
def live_panel(run_dir: str) -> None:
    progress = training_job.job_progress(Path(run_dir))
    if progress is None or progress.state not in run_catalog.LIVE_STATES:
        st.rerun()  # finished: redraw the page once, without this refresher
    st.subheader(f"Training {Path(run_dir).name}")
    st.progress(training_job.progress_fraction(progress), text=training_job.progress_text(progress))
    steps = [record for record in progress.history if record.get("kind") == "step"]
    show_live_curves(steps)
    stopping = st.session_state.get(STOPPING_KEY) == run_dir
    st.button(
        "Stopping after the current step…" if stopping else "Stop",
        icon=":material/stop_circle:",
        key="stop_job",
        on_click=stop_job,
        args=(run_dir,),
        disabled=stopping,
        help="Finishes the current step, saves a checkpoint and ends the run as 'stopped'.",
    )


def show_live_curves(steps: list[dict]) -> None:
    if not steps:
        st.caption("Waiting for the first step…")
        return
    columns = st.columns(2)
    for column, quantities in zip(columns, LIVE_CURVES):
        present = [q for q in quantities if charts.has_values(steps, q)]
        if not present:
            column.caption("log E appears here when EC is on.")
            continue
        colours = [layout.colour_of(i) for i in range(len(present))]
        chart = charts.quantities_chart(steps, present, colours, smoothing=0.6, height=280)
        column.altair_chart(chart, key=f"live_{'_'.join(present)}", width="stretch")


def stop_job(run_dir: str) -> None:
    st.session_state[STOPPING_KEY] = run_dir
    errors.attempt("stop the training job", training_job.job_manager().stop)


def finished_panel(run_dir: Path, progress) -> None:
    name = run_dir.name
    if progress.state == "failed":
        log = f" Its log: `{locations.shown_path(progress.log_path)}`." if progress.log_path else ""
        st.error(
            f"Training {name} failed: {errors.one_sentence(Exception(progress.message or 'no reason given'))}{log}"
        )
        return
    metrics = errors.attempt("read the final metrics", read_metrics, run_dir) if progress.state == "completed" else None
    summary = f" Unseen Recall@1 {100 * metrics['recall@1']:.1f}%." if metrics and "recall@1" in metrics else ""
    if progress.state == "completed":
        st.success(f"Last run **{name}** finished.{summary}", icon=":material/check_circle:")
    else:
        st.info(f"Last run **{name}** was stopped at step {progress.step:,}.", icon=":material/stop_circle:")
    if st.button("Compare it with the shipped runs", key="compare_finished"):
        compare_with_defaults(run_dir)


def compare_with_defaults(run_dir: Path) -> None:
    entries = run_catalog.scan_all_runs()
    selection = [key for key in run_catalog.default_selection(entries) if key != str(run_dir)] + [str(run_dir)]
    st.session_state[run_picker.SELECTION_KEY] = selection
    st.switch_page("views/compare.py")


# ----------------------------------------------------------------------------- the form


def default_epochs_help() -> str:
    defaults = ", ".join(f"{name} {values['epochs']}" for name, values in DATASET_DEFAULTS.items())
    return f"Empty: the dataset's default ({defaults})."


def show_form(running: Path | None) -> None:
    """The settings of a new run; its Start button is disabled while a job runs (the page redraws when it ends)."""
    with st.form("train_form", border=True):
        first, second, third = st.columns(3)
        dataset = first.selectbox(
            "Dataset",
            list(DATASETS),
            format_func=lambda d: DATASETS[d].split(":")[0],
            key="train_dataset",
            help="\n\n".join(DATASETS.values()),
        )
        data_root = first.text_input(
            "Data root (folder dataset only)",
            key="train_data_root",
            placeholder="my-images",
            help=f"A folder inside `{locations.shown_path(locations.data_dir())}/` (set ECAML_DATA_DIR to allow another) "
            "with one sub-folder of images per class.",
        )
        loss = second.selectbox("Base metric loss", LOSSES, key="train_loss")
        ec_weight = second.number_input(
            "Energy Confusion weight λ",
            0.0,
            10.0,
            0.13,
            0.01,
            format="%.2f",
            key="train_ec_weight",
            help="0 trains the plain baseline; the paper uses 0.13.",
        )
        epochs = third.number_input(
            "Epochs", 1, 1000, value=None, key="train_epochs", placeholder="dataset default", help=default_epochs_help()
        )
        seed = third.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
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
                key="train_backbone",
                help="The torchvision networks need large images and are slow without a GPU.",
            )
            device = more[1].selectbox(
                "Device", DEVICES, key="train_device", help="auto: a CUDA GPU when there is one."
            )
            max_steps = more[1].number_input(
                "Stop after steps", 0, 10**7, 0, key="train_max_steps", help="0: train all epochs."
            )
            eval_every = more[2].number_input(
                "Evaluate every (epochs)",
                0,
                1000,
                5,
                key="train_eval_every",
                help="0: only at the end. Evaluations draw the Recall@K-over-training chart.",
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
    config = TrainConfig(
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
    )
    start(config, name.strip() or None)


def confined_data_root(text: str) -> str | None:
    """The data root typed in, resolved inside the allowed data folder; None (after an error) when outside."""
    try:
        return str(confine(text, [locations.data_dir()], base=locations.data_dir()))
    except PathError as error:
        st.error(f"Could not use this data root: {errors.one_sentence(error)}")
        return None


def start(config: TrainConfig, name: str | None) -> None:
    if config.dataset == "folder":
        if not config.data_root:
            st.error("The folder dataset needs a data root: a folder with one sub-folder of images per class.")
            return
        config.data_root = confined_data_root(config.data_root)
        if config.data_root is None:
            return
    # The job manager refuses a second job (one started from another tab since this page was drawn) with a JobError.
    run_dir = errors.attempt("start training", training_job.job_manager().start, config, name=name)
    if run_dir is not None:
        st.session_state[LAST_JOB_KEY] = str(run_dir)
        st.toast(f"Started {Path(run_dir).name}.", icon=":material/rocket_launch:")
        st.rerun()


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
