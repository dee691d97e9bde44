"""The Train page: the form starts a job in its own process, a second one is refused, stop works, the run shows up."""

from __future__ import annotations

import time
from pathlib import Path

from apptest_support import assert_clean, open_page

from ecaml.jobs import JobManager

JOB_TIMEOUT_S = 120


def fill_form(app, name: str, max_steps: int) -> None:
    app.number_input(key="train_ec_weight").set_value(0.13)
    app.text_input(key="train_name").set_value(name)
    app.number_input(key="train_max_steps").set_value(max_steps)
    app.number_input(key="train_eval_every").set_value(0)


def submit(app) -> None:
    next(button for button in app.button if button.label == "Start training").click().run()


def wait_until_idle(runs: Path) -> None:
    manager = JobManager(runs)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while manager.current() is not None:
        assert time.monotonic() < deadline, "the training job did not finish in time"
        time.sleep(0.5)


def test_the_form_starts_a_job_refuses_a_second_and_the_run_appears_in_compare(app_environment):
    runs = app_environment.resolve()
    app = open_page("train")
    assert_clean(app)
    fill_form(app, "tiny-job", max_steps=40)
    submit(app)
    assert not app.exception
    assert (runs / "tiny-job").exists() or list(runs.glob(".tiny-job.*"))
    assert any("Training tiny-job" in header.value for header in app.subheader)
    assert app.get("progress"), "the live panel shows a progress bar"

    app.text_input(key="train_name").set_value("second-job")
    submit(app)
    assert len(app.error) == 1 and "already running" in app.error[0].value

    reloaded = open_page("train")  # a new browser session re-attaches to the running job
    assert any("Training tiny-job" in header.value for header in reloaded.subheader)
    elsewhere = open_page("about")
    assert elsewhere.sidebar.get("progress"), "other pages show the job's progress in the sidebar"

    wait_until_idle(runs)
    app.run()
    assert not app.exception
    assert any("tiny-job" in success.value and "finished" in success.value for success in app.success)

    compare = open_page("compare")
    assert_clean(compare)
    assert any(option.startswith("tiny-job (yours)") for option in compare.multiselect(key="runs_compare").options)

    app.button(key="compare_finished").click().run()
    assert_clean(app)
    assert app.title[0].value == "Compare runs"
    assert list(app.dataframe[0].value.columns)[:3] == ["digits-ec-off", "digits-ec-on", "tiny-job (yours)"]


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
