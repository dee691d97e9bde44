"""The Train page: the form starts a job in its own process, Start is disabled while it runs (and a second job from
another tab is refused), stop works, the run shows up."""

from __future__ import annotations

import time
from pathlib import Path

from apptest_support import MAIN_SCRIPT, assert_clean, named_lines, open_page, plotly_figures
from streamlit.testing.v1 import AppTest

from app import training_job  # the repository root is on sys.path (conftest.py)
from ecaml.serve.jobs import JobManager

JOB_TIMEOUT_S = 120


def fill_form(app, name: str, max_steps: int) -> None:
    app.number_input(key="train_ec_weight").set_value(0.13)
    app.text_input(key="train_name").set_value(name)
    app.number_input(key="train_max_steps").set_value(max_steps)
    app.number_input(key="train_eval_every").set_value(0)


def start_button(app):
    return next(button for button in app.button if button.label == "Start training")


def submit(app) -> None:
    start_button(app).click().run()


def wait_until_idle(runs: Path) -> None:
    manager = JobManager(runs)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while manager.current() is not None:
        assert time.monotonic() < deadline, "the training job did not finish in time"
        time.sleep(0.5)


def test_the_form_starts_a_job_refuses_a_second_and_the_run_appears_in_compare(app_environment, monkeypatch):
    runs = app_environment.resolve()
    app = open_page("train")
    assert_clean(app)
    assert not start_button(app).disabled
    fill_form(app, "tiny-job", max_steps=40)
    submit(app)
    assert not app.exception
    assert (runs / "tiny-job").exists() or list(runs.glob(".tiny-job.*"))
    assert any("Training tiny-job" in header.value for header in app.subheader)
    assert app.get("progress"), "the live panel shows a progress bar"
    # While the job runs, this tab cannot start another one, and says why.
    assert start_button(app).disabled
    assert any("A job is running: **tiny-job**" in caption.value for caption in app.caption)

    # A tab that has not seen the job yet (another tab started it between this tab's two runs) still submits:
    # the job manager refuses the second job.
    with monkeypatch.context() as patched:
        patched.setattr(training_job, "current_job", lambda: None)
        other_tab = open_page("train")
        fill_form(other_tab, "second-job", max_steps=40)
        submit(other_tab)
    assert len(other_tab.error) == 1 and "already running" in other_tab.error[0].value
    assert not (runs / "second-job").exists()

    # A new browser session (another tab, or a reload) sees the running job, named as someone else's.
    reloaded = open_page("train")
    owner = app.query_params[training_job.OWNER_PARAM]
    assert [h.value for h in reloaded.subheader if "tiny-job" in h.value] == [f"Session {owner} is training tiny-job"]
    elsewhere = open_page("about")
    assert elsewhere.sidebar.get("progress"), "other pages show the job's progress in the sidebar"

    wait_until_idle(runs)
    app.run()
    assert not app.exception
    assert any("tiny-job" in success.value and "finished" in success.value for success in app.success)
    assert not start_button(app).disabled
    assert not any("A job is running" in caption.value for caption in app.caption)
    # The other session never claims this job as its own.
    reloaded.run()
    assert not any("tiny-job" in message.value for message in [*reloaded.success, *reloaded.info, *reloaded.error])

    # The curves stay after the run ends, and a step slider replays them.
    slider = app.slider(key="replay_step")
    assert slider.value == slider.max == 40
    full = next(chart for chart in plotly_figures(app) if "Metric loss" in named_lines(chart))
    assert max(named_lines(full)["Metric loss"]["x"]) == 40
    slider.set_value(10).run()
    assert not app.exception
    replayed = [line["x"] for chart in plotly_figures(app) for line in named_lines(chart).values()]
    assert replayed and all(max(steps) == 10 for steps in replayed)

    compare = open_page("compare")
    assert_clean(compare)
    assert any(option.startswith("tiny-job (yours)") for option in compare.multiselect(key="runs_compare").options)

    app.button(key="compare_finished").click().run()
    assert_clean(app)
    assert app.title[0].value == "Compare runs"
    assert list(app.dataframe[0].value.columns) == [
        "digits-ec-off", "digits-ec-on", "Δ digits-ec-on", "tiny-job (yours)", "Δ tiny-job (yours)"
    ]


def test_the_stop_button_stops_the_job(app_environment):
    runs = app_environment.resolve()
    app = open_page("train")
    fill_form(app, "long-job", max_steps=100000)
    submit(app)
    assert not app.exception
    app.button(key="stop_job").click().run()
    assert not app.exception
    wait_until_idle(runs)
    assert JobManager(runs).progress(runs / "long-job").state == "stopped"
    app.run()
    assert any("was stopped" in info.value for info in app.info)


def test_the_folder_dataset_needs_a_data_root_inside_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ECAML_DATA_DIR", str(tmp_path / "data"))
    app = open_page("train")
    app.selectbox(key="train_dataset").set_value("folder")
    submit(app)
    assert not app.exception
    assert len(app.error) == 1 and "needs a data root" in app.error[0].value
    app.text_input(key="train_data_root").set_value("../../etc")
    submit(app)
    assert len(app.error) == 1 and "outside the allowed folders" in app.error[0].value
    assert JobManager(tmp_path / "runs").current() is None


def reload_page(app, page: str = "train") -> AppTest:
    """The same address opened again (a reload, or the URL pasted into a new tab): a new session, same query."""
    again = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=120)
    again.query_params.update(app.query_params)
    again.run()
    again.switch_page(f"views/{page}.py").run()
    return again


def stop_button(app):
    return app.button(key="stop_job")


def test_a_run_belongs_to_its_session_across_reloads_others_watch_and_a_stop_says_who(app_environment):
    runs = app_environment.resolve()
    app = open_page("train")
    fill_form(app, "owned-job", max_steps=100000)
    submit(app)
    assert_clean(app)
    owner = app.query_params[training_job.OWNER_PARAM]

    reloaded = reload_page(app)
    assert_clean(reloaded)
    assert "Training owned-job" in [h.value for h in reloaded.subheader]
    assert not stop_button(reloaded).disabled  # its own run: Stop, no confirmation

    other = open_page("train")  # someone else
    assert_clean(other)
    assert f"Session {owner} is training owned-job" in [h.value for h in other.subheader]
    assert stop_button(other).disabled, "another session's run is read-only until it confirms"
    other.checkbox(key="confirm_stop_other").check().run()
    stop_button(other).click().run()
    assert_clean(other)
    stopper = other.query_params[training_job.OWNER_PARAM]
    assert stopper != owner

    wait_until_idle(runs)
    progress = JobManager(runs).progress(runs / "owned-job")
    assert progress.state == "stopped" and progress.owner == owner and progress.stopped_by == stopper
    expected = f"was stopped at step {progress.step:,} by"
    for session, who in ((app, f"session {stopper}"), (reload_page(app), f"session {stopper}"), (other, "you")):
        session.run()
        assert_clean(session)
        assert any(expected in info.value and info.value.endswith(f"by {who}.") and "owned-job" in info.value
                   for info in session.info), [info.value for info in session.info]
