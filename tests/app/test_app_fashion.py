"""Fashion-MNIST in the app: the first screen opens on its featured pair when the photos are here (digits and one
line on how to get them otherwise), the lesson and the Train form offer it with its lecture defaults, and an
uploaded photo is shown converted like the training images.

The photos are a tiny Fashion-MNIST written by these tests (tests/test_fashion.py's writer) and found through
ECAML_DATA_DIR; "absent" points every place the reader searches at empty folders.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apptest_support import assert_clean, image_captions, open_page

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_app_lesson import CapturingManager  # noqa: E402
from test_fashion import boot_silhouette, phone_photo, write_fashion  # noqa: E402

from app import lesson, run_catalog, training_job  # noqa: E402
from ecaml.data import fashion  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FASHION_RUNS = {"fashion-mnist-triplet-ec0-seed0": "0", "fashion-mnist-triplet-ec1-seed0": "1"}


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_fashion(folder, train_per_class=4, test_per_class=2)
    return folder


@pytest.fixture(scope="module")
def fashion_runs(tmp_path_factory, tiny_photos) -> Path:
    """Two real Fashion-MNIST runs of 3 steps on the tiny photos (EC off, λ = 1), trained at once."""
    root = tmp_path_factory.mktemp("fashion-runs")
    processes = [subprocess.Popen(
        [sys.executable, "-m", "ecaml", "train", "--dataset", "fashion-mnist", "--loss", "triplet", "--ec-weight",
         weight, "--max-steps", "3", "--film-every", "2", "--seen-test-per-class", "1", "--quiet",
         "--out", str(root / name)],
        cwd=REPO, env={**os.environ, "ECAML_DATA_DIR": str(tiny_photos), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name, weight in FASHION_RUNS.items()]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    return root


@pytest.fixture
def featured_both(checkpoints_copy, fashion_runs) -> Path:
    """The digits fixture pair featured at the top level, the Fashion-MNIST pair under "fashion-mnist"."""
    for name in FASHION_RUNS:
        shutil.copytree(fashion_runs / name, checkpoints_copy / name)
    (checkpoints_copy / "featured.json").write_text(json.dumps({
        "runs": ["digits-ec-off", "digits-ec-on"], "fashion-mnist": {"runs": list(FASHION_RUNS)}}))
    return checkpoints_copy


@pytest.fixture
def photos_here(monkeypatch, tiny_photos):
    monkeypatch.setenv(fashion.DATA_DIR_ENV, str(tiny_photos))


@pytest.fixture
def photos_absent(monkeypatch, tmp_path):
    monkeypatch.setenv(fashion.DATA_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fashion, "DEBIAN_FOLDER", tmp_path / "no-debian")


def selected_names(app) -> list[str]:
    return [Path(key).name for key in app.multiselect(key="runs_compare").value]


def captions(app) -> list[str]:
    return [caption.value for caption in app.caption]


def test_with_the_photos_the_first_screen_opens_on_the_fashion_pair(featured_both, photos_here):
    app = open_page("compare")
    assert_clean(app)
    assert selected_names(app) == list(FASHION_RUNS)
    assert run_catalog.PHOTOS_HINT not in captions(app)


def test_without_the_photos_it_opens_on_digits_with_one_line_on_how_to_get_them(featured_both, photos_absent):
    app = open_page("compare")
    assert_clean(app)
    assert selected_names(app) == ["digits-ec-off", "digits-ec-on"]
    (hint,) = [text for text in captions(app) if "Fashion-MNIST" in text]
    assert "apt-get install dataset-fashion-mnist" in hint and "python -m ecaml data fetch fashion-mnist" in hint


def test_the_lesson_offers_the_real_photos_pair_with_its_setting(featured_both, photos_here):
    app = open_page("train")
    assert_clean(app)
    assert app.radio(key=lesson.DATASET_CHOICE_KEY).value == "fashion-mnist"
    assert any("on fashion-mnist, EC off and EC on (triplet loss, λ = 1" in text for text in captions(app))
    off, on = lesson.lesson_configs("fashion-mnist").values()
    assert (off.dataset, off.ec_weight, on.ec_weight, on.film_every) == ("fashion-mnist", 0.0, 1.0, 2)
    app.radio(key=lesson.DATASET_CHOICE_KEY).set_value("digits").run()
    assert any("on digits, EC off and EC on" in text for text in captions(app))


def test_without_the_photos_the_lesson_is_digits_with_the_hint(featured_both, photos_absent):
    app = open_page("train")
    assert_clean(app)
    assert not app.get("radio")
    assert run_catalog.PHOTOS_HINT in captions(app)
    assert any("on digits, EC off and EC on" in text for text in captions(app))


def test_the_train_form_gives_fashion_mnist_its_lecture_length(checkpoints_copy, photos_here, monkeypatch,
                                                                app_environment):
    """The form starts from the featured digits run (2 epochs); switched to Fashion-MNIST it takes its own length."""
    (checkpoints_copy / "featured.json").write_text(json.dumps({"runs": ["digits-ec-off", "digits-ec-on"]}))
    manager = CapturingManager(app_environment)
    monkeypatch.setattr(training_job, "job_manager", lambda: manager)
    app = open_page("train")
    app.selectbox(key="train_dataset").set_value("fashion-mnist")  # submitted with the form below
    next(button for button in app.button if button.label == "Start training").click().run()
    assert_clean(app)
    (started,) = manager.started
    resolved = started.resolved()
    assert (resolved.dataset, resolved.epochs, resolved.unseen_classes) == ("fashion-mnist", 1, [5, 6, 7, 8, 9])


def test_from_the_fashion_pair_the_form_says_its_real_schedule_and_digits_gets_the_digits_lecture(
        featured_both, photos_here, monkeypatch, app_environment):
    """On the Fashion-MNIST pair the form's caption once read "1 epoch ... evaluated every 12 epochs", and switching
    to digits kept its 1 epoch (a 14-step run)."""
    manager = CapturingManager(app_environment)
    monkeypatch.setattr(training_job, "job_manager", lambda: manager)
    app = open_page("train")
    assert_clean(app)
    caption = next(text for text in captions(app) if text.startswith("Starts from the featured setting"))
    assert "fashion-mnist" in caption and "trained for 1 epoch" in caption and "evaluated when it ends" in caption
    assert "every 12 epochs" not in caption
    app.selectbox(key="train_dataset").set_value("digits")  # epochs and evaluation left as they are
    next(button for button in app.button if button.label == "Start training").click().run()
    assert_clean(app)
    (started,) = manager.started
    assert (started.dataset, started.epochs, started.eval_every) == ("digits", lesson.LECTURE_EPOCHS, 12)


def test_choosing_a_data_set_redraws_the_form_with_its_schedule_and_keeps_what_the_user_then_types(
        featured_both, photos_here, monkeypatch, app_environment):
    """The data set was a field of the form, so choosing digits left "fashion-mnist ... 1 epoch" in the caption and 1
    in the Epochs box (walk-through, session 29), and a run then guessed the user meant 192. Chosen outside the form,
    the caption and the boxes follow the data set, and an epoch count typed afterwards is the one trained."""
    manager = CapturingManager(app_environment)
    monkeypatch.setattr(training_job, "job_manager", lambda: manager)
    app = open_page("train")
    app.selectbox(key="train_dataset").set_value("digits").run()
    assert_clean(app)
    assert any(text.startswith("On digits: trained for 192 epochs") and "evaluated every 12 epochs" in text
               for text in captions(app))
    assert not any(text.startswith("Starts from the featured setting (fashion-mnist") for text in captions(app))
    assert app.number_input(key="train_epochs").value == lesson.LECTURE_EPOCHS
    app.number_input(key="train_epochs").set_value(1)
    next(button for button in app.button if button.label == "Start training").click().run()
    (started,) = manager.started
    assert (started.dataset, started.epochs, started.eval_every) == ("digits", 1, 12)
    app.selectbox(key="train_dataset").set_value("fashion-mnist").run()  # back: the featured setting's schedule
    assert app.number_input(key="train_epochs").value == 1 and app.number_input(key="train_eval_every").value == 1


def test_an_uploaded_phone_photo_is_shown_converted(featured_both, photos_here):
    app = open_page("retrieval", {"query_source": "upload"})
    for _ in range(240):  # the runs' unseen images are embedded in the background first
        if [element for element in app.get("file_uploader") if element.key == "query_upload"]:
            break
        time.sleep(0.5)
        app.run()
    buffer = io.BytesIO()
    phone_photo(boot_silhouette()).save(buffer, format="JPEG")
    app.file_uploader(key="query_upload").set_value(("boot.jpg", buffer.getvalue(), "image/jpeg")).run()
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 28×28, converted"]
    assert not [warning for warning in app.warning if "inverted" in warning.value]
