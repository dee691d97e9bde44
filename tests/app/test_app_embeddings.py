"""The Embeddings page: every unseen image in a WebGL map (one panel per run), embeddings and the UMAP computed by
background jobs with progress, thumbnails for hovering, class search when there are many classes, the training film,
and the app's start-up warm-up of the projection cache."""

from __future__ import annotations

import json

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from apptest_support import assert_clean, open_page, run_key
from map_support import finish_background_jobs, maps, open_ready

from app import background_jobs, embedding_map, projection_jobs
from app.views import embeddings  # the repository root is on sys.path (conftest.py)
from ecaml.data import load_split
from ecaml.runs import load_run
from ecaml.serve import embeddings_cache as retrieval, projection
from ecaml.serve.thumbnails import PER_SHEET, is_complete

REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
PCA = {"projection_method": "pca"}
UNSEEN_DIGITS = 896  # digits 5-9


def shipped(shipped_runs) -> list:
    return [load_run(shipped_runs / name) for name in ("digits-ec-off", "digits-ec-on")]


def test_the_pca_map_draws_every_unseen_image_in_each_panel():
    app = open_ready(open_page, "embeddings", PCA)
    assert_clean(app)
    (shown,) = maps(app)
    assert shown.titles == ["digits-ec-off · EC off", "digits-ec-on · EC λ=0.13"]
    split = load_split("digits")
    indices, labels = shown.ints("dataset_indices"), shown.ints("labels")
    assert sorted(indices) == sorted(split.indices("unseen")) and len(indices) == UNSEEN_DIGITS  # no subsample
    assert np.array_equal(labels, split.dataset.labels[indices])
    for panel in (0, 1):
        frames = shown.frames(panel)
        assert frames.shape == (1, UNSEEN_DIGITS, 2) and np.isfinite(frames).all()
    assert not np.allclose(shown.frames(0), shown.frames(1))  # two runs, two maps
    assert shown.args["colour_by_class"] is True  # 5 classes: one colour each, no search box
    assert not app.text_input
    # Each point's thumbnail is its slot in the sprite sheets, which a background job has written by now.
    slots = shown.ints("thumbs")
    assert np.array_equal(split.indices("unseen")[slots], indices)
    folder = embedding_map.component_root() / shown.args["thumbnail_url"].rsplit("/", 1)[0]
    assert is_complete(folder, UNSEEN_DIGITS) and len(list(folder.glob("sheet_*.jpg"))) == -(-UNSEEN_DIGITS // PER_SHEET)
    assert (embedding_map.component_root() / "map.js").read_bytes() == (embedding_map.FRONTEND / "map.js").read_bytes()


def test_changing_the_runs_changes_the_panels(shipped_runs):
    app = open_ready(open_page, "embeddings", PCA)
    app.multiselect(key="runs_embeddings").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert maps(app)[0].titles == ["digits-ec-on · EC λ=0.13"]


def test_a_selection_in_the_map_lists_its_images():
    app = open_ready(open_page, "embeddings", PCA)
    (shown,) = maps(app)
    rows = [0, 1, 2, 500]
    app.session_state["map_pca"] = {"rows": rows, "nonce": 1}
    app.run()
    assert_clean(app)
    split = load_split("digits")
    expected = [split.dataset.class_name(int(shown.ints("dataset_indices")[row])) for row in rows]
    assert app.get("image")[0].captions == expected
    assert any(markdown.value.startswith("**4 selected**") for markdown in app.markdown)


def test_embedding_runs_in_the_background_with_progress_and_a_second_visit_reattaches(fresh_cache, monkeypatch):
    gate = threading.Event()
    real = retrieval.cached_embeddings

    def slow(*args, **kwargs):
        assert gate.wait(60), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "cached_embeddings", slow)
    first = open_page("embeddings", PCA)
    assert_clean(first)
    assert not maps(first)  # the request did not wait for the embeddings
    assert any("Embedding the unseen images in the background" in info.value for info in first.info)
    jobs = {key: job for key, job in background_jobs._jobs().items() if key[0] == "embed" and job.running}
    assert len(jobs) == 2  # one per run
    second = open_page("embeddings", PCA)  # leaving and coming back: the same jobs, none started again
    assert {key for key, job in background_jobs._jobs().items() if key[0] == "embed" and job.running} == set(jobs)
    assert not maps(second)
    gate.set()
    finish_background_jobs()
    second.run()
    finish_background_jobs()
    second.run()
    assert_clean(second)
    assert len(maps(second)[0].ints("labels")) == UNSEEN_DIGITS


def test_a_failing_embedding_job_shows_one_error_and_can_be_retried(fresh_cache, monkeypatch):
    broken = {"digits-ec-off", "digits-ec-on"}
    real = retrieval.cached_embeddings

    def fail_while_broken(run, *args, **kwargs):
        if run.name in broken:
            raise ValueError("the disk is on fire")
        return real(run, *args, **kwargs)

    monkeypatch.setattr(retrieval, "cached_embeddings", fail_while_broken)
    app = open_page("embeddings", PCA)
    finish_background_jobs()
    app.run()
    assert not app.exception and not maps(app)
    assert len(app.error) == 2 and all("the disk is on fire" in error.value for error in app.error)
    broken.discard("digits-ec-off")  # repaired: its retry succeeds, the other run still fails
    retry = next(button.key for button in app.button if button.key.startswith("retry_embedding_") and "ec-off" in button.key)
    app.button(key=retry).click().run()
    finish_background_jobs()
    app.run()
    assert len(app.error) == 1 and "digits-ec-on" in app.error[0].value
    assert retrieval.is_embedded(load_run(Path(retry.removeprefix("retry_embedding_"))), "unseen", fresh_cache)


def test_with_many_classes_a_few_are_coloured_until_classes_are_found_by_name(glyph_runs):
    app = open_ready(open_page, "embeddings", PCA)
    assert_clean(app)
    (shown,) = maps(app)
    present = set(shown.ints("labels").tolist())
    # Not all grey (issue 22 item 7): the first classes are coloured before any search.
    assert shown.args["colour_by_class"] is False
    assert shown.args["highlight_classes"] == sorted(present)[: embeddings.OPENING_CLASSES]
    names = shown.args["class_names"]
    search = app.text_input(key=embeddings.CLASS_SEARCH_KEY)
    # The hint's examples are class names of this map (it offered "17 or chair" on glyphs).
    hinted = search.placeholder.split("e.g. ")[1].split(" or ")
    assert all(any(example.lower() in names[c].lower() for c in present) for example in hinted)
    for query in ("t", "A", "zzz-no-such-class"):
        search.set_value(query).run()
        assert_clean(app)
        highlighted = maps(app)[0].args["highlight_classes"]
        expected = [c for c in sorted(present) if query.lower() in names[c].lower()][: embeddings.MAX_HIGHLIGHTED_CLASSES]
        assert highlighted == expected
    assert any("No class name contains" in caption.value for caption in app.caption)


# ----------------------------------------------------------------------------- projections


def button_labels(app) -> list[str]:
    return [button.label for button in app.button]


def test_without_a_cached_umap_the_page_opens_on_pca_with_a_button(fresh_cache):
    app = open_ready(open_page, "embeddings")
    assert_clean(app)
    assert app.radio(key="projection_method").value == "pca"
    assert embeddings.COMPUTE_UMAP in button_labels(app)
    started = [key for key in background_jobs._jobs() if key[:3] == ("projection", "umap", str(fresh_cache))]
    assert not started, "opening the page must not start the UMAP"


def test_a_returning_session_finds_the_umap_being_computed_and_follows_it(fresh_cache, monkeypatch):
    """A reload (or a second tab) while the aligned UMAP is computed shows that job's progress, not the button again."""
    release = threading.Event()

    def held_umap(*args, progress=None, **kwargs):  # the job runs on in the server until the test lets it end
        progress(3, 10)
        release.wait(60)

    monkeypatch.setattr(projection, "warm_projection_cache", held_umap)
    first = open_ready(open_page, "embeddings")
    first.button(key="compute_umap").click().run()
    assert_clean(first)
    try:
        returning = open_page("embeddings")  # a new session: a reload, or another tab
        assert_clean(returning)
        assert returning.radio(key="projection_method").value == "umap"
        assert any("Computing the aligned UMAP" in info.value for info in returning.info)
        assert embeddings.COMPUTE_UMAP not in button_labels(returning)
        assert any("Aligned UMAP: 3 of 10" in bar.proto.text for bar in returning.get("progress"))
    finally:
        release.set()
        finish_background_jobs()


def test_the_button_computes_the_aligned_umap_in_the_background_then_the_page_opens_on_it(shipped_runs):
    app = open_ready(open_page, "embeddings")
    if app.radio(key="projection_method").value == "pca":  # not cached yet in this test session
        app.button(key="compute_umap").click().run()
        assert_clean(app)
        assert app.radio(key="projection_method").value == "umap"
        assert any("Computing the aligned UMAP" in info.value for info in app.info)
        assert len(maps(app)) == 1  # meanwhile, the PCA maps
        finish_background_jobs()
        app.run()
    assert_clean(app)
    assert app.radio(key="projection_method").value == "umap"
    shown = maps(app)[0]
    assert len(shown.ints("labels")) == UNSEEN_DIGITS
    assert np.isfinite(shown.frames(0)).any() and np.isfinite(shown.frames(1)).any()
    again = open_page("embeddings")
    assert_clean(again)
    assert again.radio(key="projection_method").value == "umap"
    assert embeddings.COMPUTE_UMAP not in button_labels(again)
    assert projection.is_projection_cached(shipped(shipped_runs), method="umap", **projection_jobs.PROJECTION)


def test_a_failing_background_projection_shows_an_error_and_the_pca_maps(monkeypatch, fresh_cache, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("out of numba")

    app = open_ready(open_page, "embeddings")  # embeddings cached first
    monkeypatch.setattr(projection, "warm_projection_cache", fail)
    with caplog.at_level(logging.ERROR, logger="ecaml.app"):
        app.button(key="compute_umap").click().run()
        finish_background_jobs()
    assert "umap projection" in caplog.text and "out of numba" in caplog.text
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and "Could not compute the aligned UMAP: out of numba." in app.error[0].value
    assert len(maps(app)) == 1  # the PCA maps still show
    app.button(key="retry_umap").click().run()
    assert not app.exception
    finish_background_jobs()
    app.run()
    assert "out of numba" in app.error[0].value


def test_the_app_warms_the_projection_cache_once_in_the_background(monkeypatch, fresh_cache, shipped_runs):
    runs = shipped(shipped_runs)
    assert not projection.is_projection_cached(runs, method="pca", cache_dir=fresh_cache, **projection_jobs.PROJECTION)
    monkeypatch.setenv("ECAML_WARM_CACHE", "pca")
    app = open_page("compare")
    assert_clean(app)
    warmup = projection_jobs.start_projection_warmup()
    assert warmup is not None and warmup.label == "pca projection of digits-ec-off, digits-ec-on"
    warmup.thread.join(timeout=180)
    assert warmup.error is None
    assert projection.is_projection_cached(runs, method="pca", cache_dir=fresh_cache, **projection_jobs.PROJECTION)
    open_page("about")
    assert projection_jobs.start_projection_warmup() is warmup  # once per process (and cache folder)


def test_no_warm_up_when_turned_off(fresh_cache):
    assert projection_jobs.warm_projection_setting() is None  # ECAML_WARM_CACHE=0 (conftest.py)
    assert_clean(open_page("compare"))
    assert projection_jobs.start_projection_warmup() is None
    assert not (fresh_cache / "projections").exists()


# ----------------------------------------------------------------------------- the training film


@pytest.fixture(scope="module")
def filmed_pair(tmp_path_factory) -> Path:
    """Two 10-step digits runs (EC off, EC on) filmed every 4 steps: snapshots at 0, 4, 8 and 10."""
    root = tmp_path_factory.mktemp("filmed")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ecaml", "train", "--dataset", "digits", "--loss", "triplet", "--ec-weight", weight,
             "--max-steps", "10", "--film-every", "4", "--eval-every", "0", "--seed", "0", "--quiet",
             "--out", str(root / name)],
            cwd=REPO_CHECKPOINTS.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name, weight in (("film-ec-off", "0"), ("film-ec-on", "0.6"))
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    return root


@pytest.fixture
def film_runs(monkeypatch, filmed_pair) -> Path:
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(filmed_pair))
    return filmed_pair



def test_the_film_plays_the_runs_snapshots_side_by_side(film_runs):
    app = open_ready(open_page, "embeddings", {"embeddings_view": "film"})
    assert_clean(app)
    (shown,) = maps(app)
    assert shown.titles == ["film-ec-off · EC off", "film-ec-on · EC λ=0.6"]
    assert shown.args["frame_steps"] == [0, 4, 8, 10]
    frames = [shown.frames(0), shown.frames(1)]
    assert all(f.shape == (4, UNSEEN_DIGITS, 2) and np.isfinite(f).all() for f in frames)
    assert not np.allclose(frames[0][0], frames[0][-1])  # the embedding moved while training
    # Same seed, so the same untrained network: the two step-0 frames differ only by the rotation that aligns the
    # runs' final frames.
    u, _, vt = np.linalg.svd(frames[1][0].T.astype(np.float64) @ frames[0][0])
    assert np.allclose(frames[1][0] @ (u @ vt), frames[0][0], atol=1e-3)
    # Each frame names its step's unseen Recall@1 and MAP@R, measured on the filmed points (issue 22 item 2).
    for panel, run in zip(shown.args["panels"], ("film-ec-off", "film-ec-on")):
        labels = panel["frame_labels"]
        assert len(labels) == 4 and all(label.startswith("R@1 ") and "MAP@R" in label for label in labels)
        final = [json.loads(line) for line in (film_runs / run / "history.jsonl").read_text().splitlines()][-1]
        if final.get("split") == "unseen":  # the run's own final evaluation: the same images, the same number
            assert labels[-1].startswith(f"R@1 {100 * final['recall@1']:.1f}%")


def test_runs_without_a_film_say_how_to_get_one():
    app = open_ready(open_page, "embeddings", {"embeddings_view": "film"})
    assert_clean(app)
    assert not maps(app)
    assert any("No training film in digits-ec-off, digits-ec-on" in info.value for info in app.info)
