"""Two checkpoints of one run side by side (run@step) with their neighbourhood change, and imported runs on the pages."""

from __future__ import annotations

import numpy as np
import pytest
from apptest_support import assert_clean, open_page
from map_support import maps, open_ready

from ecaml.config import TrainConfig
from ecaml.runs import load_run
from ecaml.serve.embeddings_cache import cached_embeddings
from ecaml.serve.imports import import_embeddings
from ecaml.serve.neighbourhood import neighbourhood_change
from ecaml.store.run_files import kept_steps
from ecaml.train.launch import train

PCA = {"projection_method": "pca"}


@pytest.fixture
def run_with_two_checkpoints(app_environment):
    """A digits run of two epochs that keeps both epochs' weights, in the test's runs folder."""
    run_dir = app_environment / "digits-kept"
    train(TrainConfig(dataset="digits", epochs=2, eval_every=0, seed=0, keep_checkpoints=True), run_dir, progress=False)
    return run_dir


def test_two_checkpoints_of_one_run_open_side_by_side_with_their_neighbourhood_change(run_with_two_checkpoints):
    run_dir = run_with_two_checkpoints
    *_, early, last = kept_steps(run_dir)  # step 0 (the initial weights) is kept too
    assert last == load_run(run_dir).step and early < last
    chosen = [f"{run_dir}@{early}", str(run_dir)]
    app = open_ready(open_page, "embeddings", {**PCA, "selected_run_paths": chosen})
    assert_clean(app)
    (shown,) = maps(app)
    assert shown.titles == [f"digits-kept@{early} (yours) · EC λ=0.13", "digits-kept (yours) · EC λ=0.13"]
    assert not np.allclose(shown.frames(0), shown.frames(1))  # two checkpoints, two maps
    # The page's numbers are the library's on the two checkpoints' own embeddings.
    change = neighbourhood_change(cached_embeddings(load_run(run_dir, early)), cached_embeddings(load_run(run_dir)))
    assert 0 < np.nanmean(change.jaccard) < 1
    assert any(h.value == f"Neighbourhood change: digits-kept@{early} (yours) → digits-kept (yours)" for h in app.subheader)
    sentence = [m.value for m in app.markdown if "does better than" in m.value]
    assert sentence and sentence[0].startswith(f"digits-kept (yours) does better than digits-kept@{early} (yours) on")
    assert any(f"mean {np.nanmean(change.jaccard):.2f}" in c.value for c in app.caption)

    app.segmented_control(key="map_colour_by").set_value("change").run()
    assert_clean(app)
    (recoloured,) = maps(app)
    rows = np.searchsorted(change.indices, recoloured.ints("dataset_indices"))
    assert np.array_equal(recoloured.ints("labels"), np.minimum((change.jaccard[rows] * 10).astype(int), 9))
    assert recoloured.args["palette"] and recoloured.args["class_names"][0] == "Jaccard 0.0–0.1"


def test_an_imported_run_opens_on_the_pages_and_retrieval_says_why_uploads_are_off(app_environment, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 6
    source = tmp_path / "vectors.npz"
    np.savez(source, embeddings=(rng.normal(size=(6, 16))[labels] * 3 + rng.normal(size=(300, 16))).astype("f4"),
             labels=np.asarray([f"kind {c}" for c in labels]))
    app_environment.mkdir(exist_ok=True)
    import_embeddings(source, app_environment / "mine")
    key = str(app_environment / "mine")
    for page in ("compare", "embeddings", "retrieval"):
        app = open_ready(open_page, page, {**PCA, "selected_run_paths": [key]})
        assert_clean(app)
        if page == "embeddings":
            (shown,) = maps(app)
            assert len(shown.ints("labels")) == 300  # every point
        if page == "retrieval":
            assert any("imported vectors" in info.value for info in app.info)
            # Its neighbours are captioned as imported vectors, not as an "EC off" run.
            assert not any(c.value.startswith("EC off") for c in app.caption)
            assert any(c.value.startswith("imported vectors · ") for c in app.caption)


def test_the_import_form_imports_a_server_file_inside_the_data_folder_only(app_environment, tmp_path, monkeypatch):
    from map_support import finish_background_jobs

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("ECAML_DATA_DIR", str(data))
    labels = np.arange(60) % 3
    np.savez(data / "mine.npz", embeddings=np.random.default_rng(0).normal(size=(60, 4)).astype("f4"), labels=labels)
    np.savez(tmp_path / "outside.npz", embeddings=np.ones((60, 4), "f4"), labels=labels)
    app = open_page("imports")
    app.text_input(key="import_name").input("from-outside").run()
    app.text_input(key="import_path").input("../outside.npz").run()
    app.button(key="import_start").click().run()
    assert [e.value for e in app.error] == ["Could not import: '../outside.npz' is outside the allowed folders (data)"]
    assert not (app_environment / "from-outside").exists()

    app.text_input(key="import_name").input("from-data").run()
    app.text_input(key="import_path").input("mine.npz").run()
    app.button(key="import_start").click().run()
    finish_background_jobs()
    app.run()
    assert_clean(app)
    assert load_run(app_environment / "from-data").kind == "imported"
    assert any(s.value.startswith("imported 60 vectors of size 4 (3 classes)") for s in app.success)
    # One click opens the import on a page (it used to say "open it on Compare" and leave the user to find it).
    app.button(key="import_open_compare").click().run()
    assert_clean(app)
    assert app.multiselect(key="runs_compare").value == [str(app_environment / "from-data")]


def test_the_import_form_takes_an_image_folder_inside_the_data_folder_for_a_files_paths(app_environment, tmp_path,
                                                                                      monkeypatch):
    from map_support import finish_background_jobs
    from PIL import Image

    from ecaml.data.imported import read_manifest

    data = tmp_path / "data"
    (data / "pictures").mkdir(parents=True)
    monkeypatch.setenv("ECAML_DATA_DIR", str(data))
    paths = [f"img{i}.png" for i in range(30)]
    for i, name in enumerate(paths):
        Image.new("L", (8, 8), color=i * 8).save(data / "pictures" / name)
    np.savez(data / "with-paths.npz", embeddings=np.random.default_rng(1).normal(size=(30, 4)).astype("f4"),
             labels=np.arange(30) % 3, paths=np.array(paths))
    app = open_page("imports")
    app.text_input(key="import_name").input("with-images").run()
    app.text_input(key="import_path").input("with-paths.npz").run()
    app.text_input(key="import_images").input("../").run()
    app.button(key="import_start").click().run()
    assert [e.value for e in app.error] == ["Could not import: image folder '../' is outside the allowed folders (data)"]

    app.text_input(key="import_images").input("pictures").run()
    app.button(key="import_start").click().run()
    finish_background_jobs()
    app.run()
    assert_clean(app)
    assert read_manifest(app_environment / "with-images")["image_root"] == str((data / "pictures").resolve())


def test_the_import_form_is_off_in_read_only_mode(monkeypatch):
    monkeypatch.setenv("ECAML_READ_ONLY", "1")
    app = open_page("imports")
    assert_clean(app)
    assert not app.button and any("Importing is off" in info.value for info in app.info)


def other_pipelines_vectors(trained, folder):
    """(vectors, labels) of ``trained``'s unseen images from another pipeline: ours exported with ``ecaml embed``,
    rotated, with noise; in the order of its unseen part."""
    from ecaml.cli import main

    assert main(["embed", str(trained), "--split", "unseen", "--out", str(folder / "ours.npz")]) == 0
    with np.load(folder / "ours.npz") as archive:
        ours, labels = archive["embeddings"], archive["labels"]
    generator = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(generator.normal(size=(ours.shape[1],) * 2))
    return (ours @ rotation + 0.3 * generator.normal(size=ours.shape)).astype("f4"), labels


def test_an_import_of_a_trained_runs_own_images_opens_aligned_with_it(app_environment, shipped_runs, tmp_path, capsys):
    from ecaml.cli import main

    trained = shipped_runs / "digits-ec-on"
    vectors, labels = other_pipelines_vectors(trained, tmp_path)
    np.savez(tmp_path / "theirs.npz", embeddings=vectors, labels=labels)
    app_environment.mkdir(exist_ok=True)
    assert main(["import", "embeddings", str(tmp_path / "theirs.npz"), "--out", str(app_environment / "theirs"),
                 "--same-items-as", str(trained)]) == 0, capsys.readouterr().err

    chosen = [str(trained), str(app_environment / "theirs")]
    app = open_ready(open_page, "embeddings", {**PCA, "selected_run_paths": chosen})
    assert_clean(app)
    assert not [w.value for w in app.warning if "Left out" in w.value]  # aligned, not left out
    (shown,) = maps(app)
    assert len(shown.titles) == 2 and shown.titles[1].startswith("theirs (yours)")
    assert len(shown.ints("labels")) == len(labels)  # every unseen image, once, in both panels
    change = neighbourhood_change(cached_embeddings(load_run(trained)), cached_embeddings(load_run(app_environment / "theirs")))
    assert 0 < np.nanmean(change.jaccard) < 1
    assert any(h.value == "Neighbourhood change: digits-ec-on → theirs (yours)" for h in app.subheader)
    assert any(f"mean {np.nanmean(change.jaccard):.2f}" in c.value for c in app.caption)
    from app.run_catalog import scan_all_runs

    (entry,) = [e for e in scan_all_runs() if e.path.name == "theirs"]
    assert entry.label == f"theirs (yours) · imported vectors of digits unseen images · {vectors.shape[1]}-d"


def test_the_import_form_lines_vectors_up_with_a_trained_run_or_says_why_not(app_environment, shipped_runs, tmp_path,
                                                                             monkeypatch):
    from map_support import finish_background_jobs

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("ECAML_DATA_DIR", str(data))
    trained = shipped_runs / "digits-ec-on"
    vectors, labels = other_pipelines_vectors(trained, tmp_path)
    np.savez(data / "same.npz", embeddings=vectors, labels=labels)
    np.savez(data / "reversed.npz", embeddings=vectors[::-1], labels=labels[::-1])
    app = open_page("imports")
    app.selectbox(key="import_same_items").set_value(str(trained)).run()

    def import_file(name, file):
        app.text_input(key="import_name").input(name).run()
        app.text_input(key="import_path").input(file).run()
        app.button(key="import_start").click().run()
        finish_background_jobs()
        app.run()

    import_file("reversed", "reversed.npz")
    (error,) = [e.value for e in app.error]
    assert error.startswith("Could not import: reversed.npz: row 0 is labelled") and "not the same items" in error
    assert "\n" not in error and not (app_environment / "reversed").exists()
    import_file("same", "same.npz")
    assert_clean(app)
    assert load_run(app_environment / "same").config.dataset == "digits"
    assert any(s.value.startswith(f"imported {len(labels)} vectors") for s in app.success)
