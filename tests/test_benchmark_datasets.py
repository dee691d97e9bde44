"""The four benchmark readers on generated trees in each official layout: splits, labels, errors, training.

Nothing is downloaded: ``tests/benchmark_trees.py`` writes tiny copies of each
archive's extracted layout (index files as the archives hold them, tiny images).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_trees import MAKERS, make_cars, make_cub, make_inshop, make_sop

from ecaml.cli import main
from ecaml.config import TrainConfig
from ecaml.data import DatasetError, load_split
from ecaml.eval.evaluate import embed_indices, split_for
from ecaml.eval.metrics import query_gallery_metrics
from ecaml.runs import input_channels, load_run
from ecaml.store.run_files import DROPPED_KS_KEY


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path / "cache"))


def test_cub_reads_ids_labels_and_the_first_half_of_the_classes_as_seen(tmp_path):
    root = make_cub(tmp_path, classes=6, per_class=5)
    split = load_split("cub", str(root))
    dataset = split.dataset
    assert dataset.class_names == ["001.Bird_A", "002.Bird_B", "003.Bird_C", "004.Bird_D", "005.Bird_E", "006.Bird_F"]
    assert len(dataset) == 30 and dataset.channels == 3
    # image_class_labels.txt is matched by image id: every file sits in its class's folder
    assert all(Path(path).parent.name == dataset.class_name(i) for i, path in enumerate(dataset.paths))
    assert split.train_classes == [0, 1, 2] and split.unseen_classes == [3, 4, 5]
    assert dataset.image(0).mode == "RGB"


def test_a_parent_folder_of_the_archive_folder_is_accepted(tmp_path):
    make_cub(tmp_path / "data")
    make_sop(tmp_path / "data")
    assert load_split("cub", str(tmp_path / "data")).dataset.name == "CUB-200-2011"
    assert load_split("sop", str(tmp_path / "data")).dataset.name == "Stanford Online Products"


def test_cars_reads_the_mat_file_fields_and_splits_classes_1_to_half(tmp_path):
    root = make_cars(tmp_path, classes=6, per_class=4)
    split = load_split("cars", str(root))
    dataset = split.dataset
    assert dataset.class_names == [f"Maker Model {c} 2012" for c in range(1, 7)]
    # the generator interleaves classes: image number n has class n % 6 + 1
    numbers = np.array([int(Path(p).stem) - 1 for p in dataset.paths])
    assert np.array_equal(dataset.labels, numbers % 6)
    assert split.train_classes == [0, 1, 2] and split.unseen_classes == [3, 4, 5]


def test_sop_takes_its_seen_and_unseen_classes_from_the_two_files(tmp_path):
    root = make_sop(tmp_path, sizes=[2, 3, 4, 2, 5, 2, 3, 2])
    split = load_split("sop", str(root))
    dataset = split.dataset
    train_lines = (root / "Ebay_train.txt").read_text().splitlines()[1:]
    train_paths = {str(root / line.split()[3]) for line in train_lines}
    assert {str(dataset.paths[i]) for i in split.indices("seen")} == train_paths
    assert len(split.indices("unseen")) == 5 + 2 + 3 + 2
    assert dataset.class_names[0] == "bicycle_final/111085122871"
    # every image of a class shares its product id
    for index, path in enumerate(dataset.paths):
        assert Path(path).stem.rsplit("_", 1)[0] == dataset.class_name(index).split("/")[1]
        assert Path(path).parent.name == dataset.class_name(index).split("/")[0]


def test_inshop_scores_its_unseen_queries_against_its_gallery(tmp_path):
    root = make_inshop(tmp_path, items=8, per_item=5, queries_per_item=2)
    split = load_split("inshop", str(root))
    statuses = [line.split()[2] for line in (root / "Eval" / "list_eval_partition.txt").read_text().splitlines()[2:]]
    queries, gallery = split.queries_and_gallery("unseen")
    assert [statuses[i] for i in queries] == ["query"] * 8 and [statuses[i] for i in gallery] == ["gallery"] * 12
    assert sorted(np.concatenate([queries, gallery]).tolist()) == split.indices("unseen").tolist()
    assert split.train_classes == [0, 1, 2, 3] and split.dataset.class_names[0] == "id_00000002"
    assert split.queries_and_gallery("train")[1] is None, "other parts are searched against themselves"


def test_inshop_partition_file_at_the_root_is_accepted(tmp_path):
    root = make_inshop(tmp_path)
    shutil.move(root / "Eval" / "list_eval_partition.txt", root / "list_eval_partition.txt")
    assert len(load_split("inshop", str(root)).dataset) == 40


MISSING = [
    ("cub", "images.txt"), ("cub", "image_class_labels.txt"), ("cub", "classes.txt"), ("cub", "images/"),
    ("cars", "cars_annos.mat"), ("cars", "car_ims/"),
    ("sop", "Ebay_train.txt"), ("sop", "Ebay_test.txt"),
    ("inshop", "Eval/list_eval_partition.txt"), ("inshop", "img/"),
]


@pytest.mark.parametrize("name, missing", MISSING, ids=[f"{n}-{m}" for n, m in MISSING])
def test_a_missing_file_is_one_error_naming_it_and_the_layout(name, missing, tmp_path, capsys):
    root = MAKERS[name](tmp_path)
    target = root / missing.rstrip("/")
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError) as raised:
        load_split(name, str(root))
    message = str(raised.value)
    assert f"missing {missing}" in message and "expected ROOT/" in message and "\n" not in message
    code = main(["train", "--dataset", name, "--data-root", str(root), "--out", str(tmp_path / "run"), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and f"missing {missing}" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("name", list(MAKERS))
def test_an_image_listed_but_absent_is_named(name, tmp_path):
    root = MAKERS[name](tmp_path)
    victim = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".jpg")[3]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"has 1 unusable image\(s\): {victim}: cannot be read"):
        load_split(name, str(root))


@pytest.mark.parametrize("name", list(MAKERS))
def test_no_data_root_or_a_missing_one_is_refused(name, tmp_path):
    with pytest.raises(DatasetError, match=f"--dataset {name} needs --data-root PATH"):
        load_split(name, None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(name, str(tmp_path / "nowhere"))


def test_malformed_index_lines_and_foreign_mat_files_are_named(tmp_path):
    cub = make_cub(tmp_path / "a")
    with open(cub / "image_class_labels.txt", "a") as handle:
        handle.write("999\n")
    with pytest.raises(DatasetError, match=r"image_class_labels.txt line 37 has 1 field\(s\), expected 2"):
        load_split("cub", str(cub))
    cars = make_cars(tmp_path / "b")
    import scipy.io

    scipy.io.savemat(cars / "cars_annos.mat", {"something": np.zeros(3)})
    with pytest.raises(DatasetError, match="cars_annos.mat is not the CARS196 annotation file"):
        load_split("cars", str(cars))
    sop = make_sop(tmp_path / "c")
    with open(sop / "Ebay_test.txt", "a") as handle:
        handle.write("99 1 1 bicycle_final/111085122871_0.JPG\n")
    with pytest.raises(DatasetError, match="class 1 is in both Ebay_train.txt and Ebay_test.txt"):
        load_split("sop", str(sop))


@pytest.mark.parametrize("name", list(MAKERS))
def test_training_runs_end_to_end_and_evaluate_reproduces_metrics(name, tmp_path, capsys):
    root = MAKERS[name](tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--dataset", name, "--data-root", str(root), "--out", str(out), "--max-steps", "2", "--quiet",
                 "--image-size", "16", "--embedding-dim", "8", "--classes-per-batch", "2", "--images-per-class", "2",
                 "--seen-test-per-class", "1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    run = load_run(out)
    assert run.config.dataset == name and input_channels(run.config) == 3
    finals = [record["split"] for record in run.eval_records("seen_test") + run.eval_records("unseen")]
    assert finals == ["seen_test", "unseen"], "the end of training scores seen_test and unseen"
    assert not run.eval_records("train"), "with a hold-out, seen classes are measured on held-out images"
    metrics = json.loads((out / "metrics.json").read_text())
    dropped = metrics.pop(DROPPED_KS_KEY, [])  # Recall@K the tiny split cannot measure, recorded beside the metrics
    assert ("nmi" in metrics) == (name != "inshop"), "In-Shop is scored query vs gallery (no clustering)"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(metrics)
    assert set(dropped) <= set(run.config.recall_ks) and not any(f"recall@{k}" in printed for k in dropped)
    assert all(math.isclose(printed[k], metrics[k], abs_tol=1e-6) for k in metrics)


def test_inshop_scoring_is_the_query_gallery_metric_of_its_two_sets(tmp_path, capsys):
    root = make_inshop(tmp_path / "data", items=8, per_item=6, queries_per_item=2)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "inshop", "--data-root", str(root), "--out", str(out), "--max-steps", "1",
                 "--quiet", "--image-size", "16", "--embedding-dim", "8", "--classes-per-batch", "2",
                 "--images-per-class", "2", "--device", "cpu"]) == 0
    run = load_run(out)
    split = split_for(run.config)
    queries, gallery = split.queries_and_gallery("unseen")
    device = torch.device("cpu")
    query = embed_indices(run.model, split, queries, run.config, 3, device)
    pool = embed_indices(run.model, split, gallery, run.config, 3, device)
    expected = query_gallery_metrics(query.vectors, query.labels, pool.vectors, pool.labels, recall_ks=(1, 10))
    stored = json.loads((out / "metrics.json").read_text())
    dropped = stored.pop(DROPPED_KS_KEY, [])  # In-Shop's deeper Recall@K: this gallery is too small to measure them
    assert dropped == [k for k in run.config.recall_ks if f"recall@{k}" not in expected]
    assert stored.keys() == expected.keys()
    assert all(math.isclose(stored[k], expected[k], abs_tol=1e-6) for k in expected)


def test_benchmark_defaults_follow_the_protocol():
    expected = {"cub": [1, 2, 4, 8], "cars": [1, 2, 4, 8], "sop": [1, 10, 100, 1000], "inshop": [1, 10, 20, 30, 40, 50]}
    for name, ks in expected.items():
        config = TrainConfig(dataset=name, data_root="x").resolved()
        assert config.recall_ks == ks
        assert (config.classes_per_batch, config.images_per_class, config.embedding_dim) == (65, 2, 512)
