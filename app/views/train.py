"""The Train page: a form that starts a training job in its own process, the job's live progress, a replay of a
finished run, and one click to train any run's EC-off (or EC-on) twin.

``ecaml.serve.jobs.JobManager`` owns the process; this page only asks it to start or
stop, and polls ``progress`` from a fragment so the rest of the page never waits.
The form starts from the featured setting (``checkpoints/featured.json``), so a
new run can be compared with the shipped pair, like with like.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import streamlit as st

from app import (
    charts, data_roots, deployment, errors, layout, lesson, locations, run_catalog, run_picker, train_form, training_job,
)
from ecaml.config import TrainConfig
from ecaml.store.run_files import read_metrics

LIVE_CURVES = (("metric_loss", "total_loss"), ("log_energy",))
LIVE_REFRESH_S = 0.5  # a digits run takes seconds: a slower refresh would show only its first and last steps
OTHER_JOB_LIVE_REFRESH_S = 2.0  # a job started by another session
TWINS_KEY = "twin_of"  # twin run directory -> the run it was made to be compared with
REPLAY_STEP_KEY, REPLAY_PLAYING_KEY = "replay_step", "replay_playing"
REPLAY_FRAMES = 40  # a replay plays in about this many frames, whatever the run's length
REPLAY_FRAME_S = 0.15
FALLBACK_EC_WEIGHT = 0.13  # the paper's λ, for an EC-on twin when no featured run says otherwise


def render() -> None:
    st.title("Train a run")
    if deployment.read_only():
        st.info(deployment.READ_ONLY_TRAINING_MESSAGE, icon=":material/lock:")
        featured = run_catalog.featured_setting() or TrainConfig(**lesson.FALLBACK_SETTING)
        st.markdown(deployment.local_training_hint(featured.dataset, featured.loss, featured.ec_weight))
        return
    st.caption(
        f"Training runs in its own process and writes to `{locations.shown_path(locations.runs_dir())}/`; you can "
        "browse the other pages meanwhile. A finished run appears on the Compare page."
    )
    running = show_job()
    lesson.offer_lesson()
    st.subheader("New run")
    train_form.show_form(running)
    data_roots.show_roots_panel()
    show_twin_section(running)


# ----------------------------------------------------------------------------- the job


def show_job() -> Path | None:
    """The running job (also after a page reload, and whoever started it), else how this session's last job ended,
    with its curves and a replay; returns the running job's folder."""
    running = training_job.current_job()
    if running is not None:
        # Every refresh re-sends the whole chart to the tab: a job someone else started is followed less often, so
        # a room of viewers does not cost the server (and their own browsers) two charts a second each.
        refresh = LIVE_REFRESH_S if training_job.started_here(running) else OTHER_JOB_LIVE_REFRESH_S
        # Every run of the job (the lesson trains EC off and EC on at once), not only its first.
        runs = tuple(str(run) for run in training_job.current_runs()) or (str(running),)
        st.fragment(run_every=refresh)(live_panel)(runs)
        return running
    own = training_job.own_job()
    progress = training_job.job_progress(own) if own else None
    if progress is not None:
        finished_panel(own, progress)
    else:
        training_job.show_last_stop()  # someone else's last job: who stopped it, if someone did
    return None


def live_panel(run_dirs: tuple[str, ...]) -> None:
    progresses = [training_job.job_progress(Path(run_dir)) for run_dir in run_dirs]
    if not any(p is not None and p.state in run_catalog.LIVE_STATES for p in progresses):
        st.rerun()  # finished: redraw the page once, without this refresher
    run_dir = run_dirs[0]
    mine = training_job.started_here(Path(run_dir))
    for number, (each, progress) in enumerate(zip(run_dirs, progresses)):
        st.subheader(training_job.job_title(Path(each)))
        if progress is None:
            continue
        if number == 0 and not mine:
            st.caption("Started from another browser session; you can watch it here, and start yours when it ends.")
        st.progress(training_job.progress_fraction(progress), text=training_job.progress_text(progress))
        show_run_curves(progress.history, key="live" if number == 0 else f"live-{number}", run_dir=each)
    stopping = st.session_state.get(train_form.STOPPING_KEY) == run_dir
    # Someone else's run is read-only unless this session confirms; the stop then names this session.
    confirmed = mine or st.checkbox("Stop someone else's run", key="confirm_stop_other",
                                    help="It ends as 'stopped', and every session sees that your session stopped it.")
    st.button(
        "Stopping after the current step…" if stopping else "Stop",
        icon=":material/stop_circle:",
        key="stop_job",
        on_click=stop_job,
        args=(run_dir,),
        disabled=stopping or not confirmed,
        help="Finishes the current step, saves a checkpoint and ends the run as 'stopped'.",
    )


def show_run_curves(history: list[dict], key: str, run_dir: str, last_step: int | None = None) -> None:
    """The losses, log E and the evaluations of one run's history (up to ``last_step``), side by side."""
    if last_step is not None:
        history = [record for record in history if record.get("step", 0) <= last_step]
    steps = [record for record in history if record.get("kind") == "step"]
    show_live_curves(steps, key, run_dir)
    show_live_evaluations(history, key, run_dir)


def show_live_evaluations(history: list[dict], key: str, run_dir: str) -> None:
    """Recall@1 on each split evaluated so far, one line per split, validation first."""
    evaluations = [r for r in history if r.get("kind") == "eval" and "recall@1" in r and r.get("split") != "train"]
    if not evaluations:
        return
    splits = list(dict.fromkeys(sorted((r.get("split") for r in evaluations), key=split_order)))
    lines = [
        charts.Series(split_name(split), layout.colour_of(i), [r for r in evaluations if r.get("split") == split])
        for i, split in enumerate(splits)
    ]
    signature = ("train evaluations", run_dir, len(evaluations), json.dumps(evaluations[-1], sort_keys=True))
    figure = charts.cached_figure(signature, lambda: charts.evaluation_chart(lines, "recall@1", height=240))
    st.plotly_chart(figure, key=f"{key}_evaluations", width="stretch")
    if "unseen" in splits:
        st.caption("Recall@1 on the test classes is shown to watch generalisation, not to choose an epoch by.")


def split_order(split) -> int:
    return {"val": 0, "seen_test": 1, "unseen": 2}.get(split, 3)


def split_name(split) -> str:
    return {"val": "validation classes", "seen_test": "seen classes, held-out images",
            "unseen": "test classes (not for selection)"}.get(split, str(split))


def show_live_curves(steps: list[dict], key: str, run_dir: str) -> None:
    if not steps:
        st.caption("Waiting for the first step…")
        return
    columns = st.columns(2)
    for column, quantities in zip(columns, LIVE_CURVES):
        present = [q for q in quantities if charts.has_values(steps, q)]
        if not present:
            column.caption("log E appears here when EC is on.")
            continue
        figure = curves_figure(run_dir, len(steps), json.dumps(steps[-1], sort_keys=True), tuple(present), steps)
        column.plotly_chart(figure, key=f"{key}_{'_'.join(present)}", width="stretch")


def curves_figure(run_dir: str, step_count: int, last_record: str, quantities: tuple[str, ...], steps: list[dict]):
    """One run's curves up to a step, built once for every session that shows it (``charts.cached_figure``).

    While a job trains, every open Train page redraws its curves every refresh; a history only grows, so (run,
    record count, last record) names the content, even for a run re-made in the same folder.
    """
    colours = [layout.colour_of(i) for i in range(len(quantities))]
    return charts.cached_figure(
        ("train curves", run_dir, step_count, last_record, quantities),
        lambda: charts.quantities_chart(steps, list(quantities), colours, smoothing=0.6, height=280),
    )


def stop_job(run_dir: str) -> None:
    st.session_state[train_form.STOPPING_KEY] = run_dir
    errors.attempt("stop the training job", training_job.stop)


def finished_panel(run_dir: Path, progress) -> None:
    """How this session's last job ended, its curves (they stay), a replay, and the next steps."""
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
        st.info(f"Last run **{name}** {training_job.stopped_text(progress)}.", icon=":material/stop_circle:")
    show_replay(str(run_dir), progress.history)
    actions = st.columns(2)
    twin_of = st.session_state.get(TWINS_KEY, {}).get(str(run_dir))
    label = "Compare it with the run it twins" if twin_of else "Compare it with the shipped runs"
    if actions[0].button(label, key="compare_finished", icon=":material/compare_arrows:"):
        compare_finished(run_dir)
    entry = next((e for e in run_catalog.scan_all_runs() if e.key == str(run_dir) and e.run is not None), None)
    if entry is not None and not twin_of:
        twin_button(entry, actions[1], key="twin_finished")


def compare_finished(run_dir: Path) -> None:
    """Open Compare on this run and what it should be compared with: its twin's original, else the default pair."""
    twin_of = st.session_state.get(TWINS_KEY, {}).get(str(run_dir))
    if twin_of:
        selection = [twin_of, str(run_dir)]
    else:
        entries = run_catalog.scan_all_runs()
        selection = [key for key in run_catalog.default_selection(entries) if key != str(run_dir)] + [str(run_dir)]
    run_picker.open_runs_on("compare", selection)


# ----------------------------------------------------------------------------- replay


def show_replay(run_dir: str, history: list[dict]) -> None:
    """The finished run's curves, with a step slider and a play button that redraws them as training went."""
    last = max((r.get("step", 0) for r in history if r.get("kind") == "step"), default=0)
    if last < 2:
        return
    if st.session_state.get("replay_run") != run_dir:  # a new run: start the replay at its end
        st.session_state.update({"replay_run": run_dir, REPLAY_STEP_KEY: last, REPLAY_PLAYING_KEY: False})
    playing = bool(st.session_state.get(REPLAY_PLAYING_KEY))
    st.fragment(run_every=REPLAY_FRAME_S if playing else None)(replay_frame)(run_dir, history, last, playing)


def replay_frame(run_dir: str, history: list[dict], last: int, timed: bool) -> None:
    """One frame of the replay. ``timed``: whether this fragment was drawn with a timer (it keeps the arguments of
    the full run that drew it, so a Replay or Pause clicked inside it needs a full rerun to start or drop the timer)."""
    if bool(st.session_state.get(REPLAY_PLAYING_KEY)) != timed:
        st.rerun()
    if st.session_state.get(REPLAY_PLAYING_KEY):
        following = st.session_state.get(REPLAY_STEP_KEY, 1) + max(1, last // REPLAY_FRAMES)
        st.session_state[REPLAY_STEP_KEY] = min(last, following)
        if following >= last:
            st.session_state[REPLAY_PLAYING_KEY] = False
            st.rerun()  # the whole page, so the fragment is drawn again without its timer
    controls = st.columns([1, 6], vertical_alignment="bottom")
    playing = bool(st.session_state.get(REPLAY_PLAYING_KEY))
    controls[0].button(
        "Pause" if playing else "Replay",
        icon=":material/pause:" if playing else ":material/play_arrow:",
        key="replay_toggle",
        on_click=toggle_replay,
        args=(last,),
        help="Redraw the curves step by step, as they grew during training.",
    )
    step = controls[1].slider("Training step", 1, last, key=REPLAY_STEP_KEY, disabled=playing)
    show_run_curves(history, key="replay", run_dir=run_dir, last_step=step)


def toggle_replay(last: int) -> None:
    playing = not st.session_state.get(REPLAY_PLAYING_KEY)
    if playing and st.session_state.get(REPLAY_STEP_KEY, last) >= last:
        st.session_state[REPLAY_STEP_KEY] = 1
    st.session_state[REPLAY_PLAYING_KEY] = playing


# ----------------------------------------------------------------------------- twins


def twin_config(config: TrainConfig, ec_weight_on: float) -> TrainConfig:
    """The run's config with the Energy Confusion term switched: off (λ 0) for an EC-on run, on for an EC-off run.

    Everything else (data, split, loss, seed, length, evaluation) is kept, so the two differ in λ alone.
    """
    return dataclasses.replace(config, ec_weight=0.0 if config.ec_weight > 0 else ec_weight_on)


def twin_ec_weight() -> float:
    """The λ an EC-on twin gets: the featured run's, else the paper's."""
    featured = run_catalog.featured_setting()
    return featured.ec_weight if featured is not None else FALLBACK_EC_WEIGHT


def twin_button(entry: run_catalog.RunEntry, where, key: str, disabled: bool = False) -> None:
    twin = twin_config(entry.run.config, twin_ec_weight())
    switched = "EC-off" if twin.ec_weight == 0 else f"EC-on (λ {twin.ec_weight:g})"
    if where.button(
        f"Train its {switched} twin",
        key=key,
        icon=":material/content_copy:",
        disabled=disabled,
        help="Same seed, data, split, loss and length; only λ differs, so the two can be compared like with like.",
    ):
        start_twin(entry)


def start_twin(entry: run_catalog.RunEntry) -> None:
    run_dir = train_form.start(twin_config(entry.run.config, twin_ec_weight()), None, rerun=False)
    if run_dir is not None:
        st.session_state.setdefault(TWINS_KEY, {})[str(run_dir)] = entry.key
        st.rerun()


def show_twin_section(running: Path | None) -> None:
    """Any run's twin in one click: pick a run, train the same setting with EC switched."""
    entries = run_catalog.usable(run_catalog.scan_all_runs())
    if not entries:
        return
    st.subheader("Train a twin")
    st.caption(
        "A difference means something only between runs that differ in one thing. Pick any run (shipped or yours): "
        "its twin has the same seed, data, loss and length, with Energy Confusion switched off (or on, with the "
        f"featured λ = {twin_ec_weight():g})."
    )
    by_key = {entry.key: entry for entry in entries}
    default = twin_default(entries)
    columns = st.columns([3, 2], vertical_alignment="bottom")
    key = columns[0].selectbox(
        "Run", list(by_key), index=list(by_key).index(default), format_func=lambda k: by_key[k].label, key="twin_of_run"
    )
    twin_button(by_key[key], columns[1], key="twin_start", disabled=running is not None)


def twin_default(entries: list[run_catalog.RunEntry]) -> str:
    """The run the twin picker opens on: this session's last run (after a reload, the last run of its last job);
    else the newest run its owner token started; else the newest in runs/; else the first shipped run. In a
    classroom everyone shares runs/, so the newest folder is often someone else's."""
    keys = {entry.key for entry in entries}
    own = training_job.own_job() or next(iter(training_job.own_last_job()[::-1]), None)
    if own is not None and str(own) in keys:
        return str(own)
    yours = [entry for entry in entries if not entry.shipped]
    started_here = [entry for entry in yours if training_job.started_by_this_session(entry.path)]
    if started_here or yours:
        return max(started_here or yours, key=lambda entry: run_catalog.run_fingerprint(entry.path)[0][1] or 0).key
    return entries[0].key


# ----------------------------------------------------------------------------- the form


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
