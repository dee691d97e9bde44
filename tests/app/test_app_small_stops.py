"""Researchers' small stops (issue 22 item 7): the twin picker opens on your own run; a folder holding a model the
app cannot use is listed with the reason instead of being ignored."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from apptest_support import assert_clean, open_page

from app import run_catalog, training_job
from ecaml.serve.job_logs import LOG_NAME, log_header


def test_the_twin_picker_opens_on_your_newest_run_not_a_shipped_one(app_environment, shipped_runs):
    shutil.copytree(shipped_runs / "digits-ec-on", app_environment / "mine", ignore=shutil.ignore_patterns("film"))
    app = open_page("train")  # a new session (a reload): it has started nothing itself
    assert_clean(app)
    assert app.selectbox(key="twin_of_run").value == str(app_environment / "mine")


def test_the_twin_picker_opens_on_a_run_this_session_started_not_a_newer_one_of_someone_else(app_environment,
                                                                                             shipped_runs):
    # A classroom shares runs/: after a reload, "yours" is what your owner token started, not the newest folder.
    for name, owner in (("mine", "me123"), ("theirs", "them456")):
        shutil.copytree(shipped_runs / "digits-ec-on", app_environment / name, ignore=shutil.ignore_patterns("film"))
        (app_environment / name / LOG_NAME).write_bytes(log_header(["python", "-m", "ecaml", "train"], owner))
    newer = (app_environment / "mine" / "config.json").stat().st_mtime_ns + 10**9
    os.utime(app_environment / "theirs" / "config.json", ns=(newer, newer))
    app = open_page("train", {training_job.OWNER_KEY: "me123"})
    assert_clean(app)
    assert app.selectbox(key="twin_of_run").value == str(app_environment / "mine")


def test_the_twin_picker_opens_on_the_last_run_of_your_last_job_after_a_reload(app_environment, shipped_runs,
                                                                              monkeypatch):
    runs = [app_environment / name for name in ("lesson-off", "lesson-on")]
    for run in runs:
        shutil.copytree(shipped_runs / "digits-ec-on", run, ignore=shutil.ignore_patterns("film"))
    monkeypatch.setattr(training_job, "own_last_job", lambda: runs)  # this owner's last job trained a pair
    app = open_page("train")
    assert_clean(app)
    assert app.selectbox(key="twin_of_run").value == str(runs[-1])


def test_a_folder_with_a_foreign_model_is_listed_as_unusable_with_the_reason(app_environment):
    for name, file in (("old-model", "model.pt"), ("just-vectors", "embeddings.npz")):
        (app_environment / name).mkdir(parents=True)
        (app_environment / name / file).write_bytes(b"\0" * 16)
    app = open_page("compare")
    assert_clean(app)
    (expander,) = [e for e in app.expander if "cannot be used" in e.label]
    assert expander.label.startswith("2 run folder(s)")
    listed = " ".join(m.value for m in expander.markdown)
    assert "old-model" in listed and "model.pt" in listed and "never loads" in listed
    assert "just-vectors" in listed and "embeddings.npz" in listed


def test_the_shipped_pair_shows_the_spread_over_the_studys_seeds(monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(repo / "checkpoints"))  # only seed 0 of each setting ships
    monkeypatch.setattr(run_catalog, "photos_available", lambda: False)  # the digits pair, as without Fashion-MNIST
    app = open_page("compare")
    assert_clean(app)
    table = next(frame.value for frame in app.dataframe if frame.key == "seed_spread_table" or
                 any("seeds" in str(column) for column in frame.value.columns))
    assert list(table.columns) == ["digits-triplet-ec0-seed0 · 5 seeds", "digits-triplet-ec1-seed0 · 5 seeds"]
    assert "±" in table.loc["Recall@1"].iloc[0]
