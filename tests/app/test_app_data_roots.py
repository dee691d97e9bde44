"""Paths a page accepts: every one is confined to the allowed folders (a twin's data and weights too, not only the
form's folder dataset), the allowed folders are shown and can be extended from the Train page, and the default
data folder exists once the page has been opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from apptest_support import assert_clean, open_page

from app import data_roots, deployment
from ecaml.config import TrainConfig
from ecaml.serve.jobs import JobManager


@pytest.fixture
def data_dir(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "fresh-clone" / "data"  # does not exist yet, as in a fresh clone
    monkeypatch.setenv("ECAML_DATA_DIR", str(folder))
    return folder


def imported_run(runs: Path, shipped_runs: Path, **config_changes) -> Path:
    """A copy of a fixture run in the runs folder, its config naming other files (as a run made elsewhere may)."""
    run = runs / "made-elsewhere"
    shutil.copytree(shipped_runs / "digits-ec-off", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **config_changes}))
    return run


def start_twin_of(app, run: Path) -> None:
    app.selectbox(key="twin_of_run").set_value(str(run)).run()
    app.button(key="twin_start").click().run()


def test_a_twin_of_a_run_naming_weights_outside_the_allowed_folders_is_refused(app_environment, shipped_runs,
                                                                                 tmp_path, data_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(shipped_runs / "digits-ec-off" / "model.safetensors", outside / "weights.safetensors")
    run = imported_run(app_environment, shipped_runs, weights_path=str(outside / "weights.safetensors"))
    app = open_page("train")
    start_twin_of(app, run)
    assert not app.exception
    assert len(app.error) == 1 and "outside the allowed folders" in app.error[0].value
    assert JobManager(app_environment).current() is None
    assert sorted(p.name for p in app_environment.iterdir() if not p.name.startswith(".")) == ["made-elsewhere"]


def test_a_twin_of_a_benchmark_run_with_its_data_outside_the_allowed_folders_is_refused(app_environment,
                                                                                      shipped_runs, tmp_path,
                                                                                      data_dir):
    benchmark = tmp_path / "benchmarks" / "CUB_200_2011"
    benchmark.mkdir(parents=True)
    run = imported_run(app_environment, shipped_runs, data_root=str(benchmark))
    app = open_page("train")
    start_twin_of(app, run)
    assert not app.exception
    assert len(app.error) == 1 and "outside the allowed folders" in app.error[0].value
    assert JobManager(app_environment).current() is None


def test_the_data_folder_is_created_and_allowed_folders_can_be_shown_and_added(app_environment, data_dir, tmp_path):
    assert not data_dir.exists()
    app = open_page("train")
    assert_clean(app)
    assert data_dir.is_dir(), "the default data folder is created on first use"
    shown = [m.value for m in app.markdown]
    assert any(str(data_dir) in text for text in shown), "the allowed folders are visible"

    images = tmp_path / "elsewhere" / "my-images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
    # An absolute path outside the allowed folders is refused, with the way out in the message...
    app.selectbox(key="train_dataset").set_value("folder")
    app.text_input(key="train_data_root").set_value(str(images))
    next(b for b in app.button if b.label == "Start training").click().run()
    assert len(app.error) == 1 and "outside the allowed folders" in app.error[0].value
    # ... until whoever runs the server allows its folder from the page.
    app.text_input(key="data_root_new").set_value(str(images.parent))
    app.button(key="data_root_add").click().run()
    assert not app.error and any(str(images.parent) in s.value for s in app.success)
    assert data_roots.allowed_roots() == [data_dir, images.parent]
    assert any(str(images.parent) in m.value for m in app.markdown)
    confined = data_roots.confine_config(TrainConfig(dataset="folder", data_root=str(images)))
    assert confined.data_root == str(images)
    # Nonsense is refused in one sentence, and nothing is added.
    for bad in ("relative/folder", str(tmp_path / "missing"), "/"):
        app.text_input(key="data_root_new").set_value(bad).run()
        app.button(key="data_root_add").click().run()
        assert len(app.error) == 1 and "Could not allow this folder" in app.error[0].value
    assert data_roots.allowed_roots() == [data_dir, images.parent]
    app.button(key="data_root_remove_0").click().run()
    assert data_roots.allowed_roots() == [data_dir]


def test_a_read_only_server_shows_and_adds_no_folder(monkeypatch, app_environment, data_dir):
    monkeypatch.setenv(deployment.READ_ONLY_ENV, "1")
    app = open_page("train")
    assert_clean(app)
    assert not [b for b in app.button if b.key == "data_root_add"]
    with pytest.raises(ValueError, match="read-only"):
        data_roots.add_root(str(data_dir.parent))
    assert not data_dir.exists() and not app_environment.exists()
