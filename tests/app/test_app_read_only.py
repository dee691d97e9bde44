"""Demo mode (ECAML_READ_ONLY=1): the app is a viewer. Training is off and says how to train locally, nothing is
written under the runs folder, no job can be started by any route, and uploads have a smaller size limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_support import assert_clean, open_page

from app import deployment, run_catalog, training_job
from ecaml.serve.job_command import JobError

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = ("compare", "embeddings", "retrieval", "train", "imports", "about")


@pytest.fixture
def read_only(monkeypatch):
    monkeypatch.setenv(deployment.READ_ONLY_ENV, "1")


def test_every_page_opens_and_nothing_is_written_under_runs(read_only, app_environment):
    for page in PAGES:
        app = open_page(page)
        assert_clean(app)
    assert not app_environment.exists(), "a read-only server wrote into the runs folder"


def test_the_train_page_says_training_is_off_and_how_to_train_locally(read_only):
    app = open_page("train")
    assert_clean(app)
    assert any(deployment.READ_ONLY_TRAINING_MESSAGE in info.value for info in app.info)
    assert any("python -m ecaml train" in block.value for block in app.markdown)
    assert not [button for button in app.button if button.label == "Start training"]


def test_no_job_can_be_started_or_looked_up(read_only, app_environment):
    with pytest.raises(JobError, match="read-only demo"):
        training_job.job_manager()
    assert training_job.current_job() is None
    assert training_job.job_progress(app_environment / "anything") is None
    assert not app_environment.exists()


def test_the_train_page_is_back_when_read_only_is_off(monkeypatch):
    for value in ("0", "false", "off", ""):
        monkeypatch.setenv(deployment.READ_ONLY_ENV, value)
        assert not deployment.read_only()
    app = open_page("train")
    assert any(button.label == "Start training" for button in app.button)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE"])
def test_upload_limit_is_smaller_in_read_only_mode_and_refused_in_one_sentence(monkeypatch, value):
    monkeypatch.setenv(deployment.READ_ONLY_ENV, value)
    limit = deployment.upload_limit_bytes()
    assert limit < deployment.UPLOAD_LIMIT_BYTES[False]
    assert deployment.upload_refusal(limit) is None
    refusal = deployment.upload_refusal(limit + 1)
    assert refusal and refusal.count(".") >= 1 and "\n" not in refusal
    assert f"{limit / 2**20:.0f} MB" in refusal


def test_the_example_command_trains_the_featured_setting(read_only, monkeypatch):
    # issue 22: the demo's example said --ec-weight 0.6 while the app features λ = 1
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(REPO_ROOT / "checkpoints"))  # the shipped featured pair
    featured = run_catalog.featured_setting()  # the pair the app opens on (Fashion-MNIST where its photos are)
    assert featured is not None and featured.ec_weight != 0.6
    app = open_page("train")
    assert_clean(app)
    (hint,) = [block.value for block in app.markdown if "python -m ecaml train" in block.value]
    assert f"--dataset {featured.dataset} --loss {featured.loss} --ec-weight {featured.ec_weight:g} " in hint
