"""Class splits: fixed test classes, validation carved from training classes, seen-test hold-out, old runs.

The promise under test: no setting moves a test (unseen) class into training or
validation; the held-out seen-test images are never trained on; a run directory
written before these settings existed reads back as it was trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecaml.config import TrainConfig
from ecaml.data import hold_out_images, load_split
from ecaml.data.folder import seeded_half_split
from ecaml.eval.evaluate import split_for
from ecaml.runs import load_run, read_config
from ecaml.train.launch import train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAML_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("dataset", ["digits", "glyphs"])
def test_no_seed_or_validation_size_moves_a_test_class(dataset):
    reference = load_split(dataset)
    seen = set(reference.train_classes)
    for seed in range(25):
        for val_classes in (0, 1, 2, 0.4):
            split = load_split(dataset, None, val_classes, seed, seen_test_per_class=3)
            assert split.unseen_classes == reference.unseen_classes
            assert set(split.train_classes) | set(split.val_classes) == seen
            assert not set(split.train_classes) & set(split.val_classes)
            for part in ("train", "val", "seen_test"):
                assert not set(split.dataset.labels[split.indices(part)]) & set(split.unseen_classes)


def test_validation_classes_change_with_val_seed_only():
    draws = {tuple(load_split("glyphs", None, 5, seed).val_classes) for seed in range(8)}
    assert len(draws) > 4, "different val seeds should draw different validation classes"
    assert load_split("glyphs", None, 5, 3).val_classes == load_split("glyphs", None, 5, 3).val_classes


@pytest.mark.parametrize("seed", range(20))
def test_seen_test_holds_out_n_images_of_each_big_enough_training_class(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, 15)
    labels = np.repeat(np.arange(15), sizes)
    rng.shuffle(labels)
    classes = sorted(rng.choice(15, size=10, replace=False).tolist())
    per_class = int(rng.integers(1, 5))
    held = hold_out_images(labels, classes, per_class, seed)
    counts = dict(zip(*np.unique(labels[held], return_counts=True)))
    for label in range(15):
        expected = per_class if label in classes and sizes[label] >= per_class + 2 else 0
        assert counts.get(label, 0) == expected, f"class {label} of {sizes[label]} images"
    assert len(set(held.tolist())) == len(held)
    assert np.array_equal(held, hold_out_images(labels, classes, per_class, seed))
    assert not np.array_equal(held, hold_out_images(labels, classes, per_class, seed + 100)) or len(held) == 0


def test_seen_test_images_are_out_of_training_and_scored_against_it():
    split = load_split("digits", None, 1, 0, seen_test_per_class=10)
    held, train = split.indices("seen_test"), split.indices("train")
    assert len(held) == 10 * len(split.train_classes)
    assert not set(held.tolist()) & set(train.tolist())
    assert set(split.dataset.labels[held]) == set(split.train_classes), "only training classes hold images out"
    queries, gallery = split.queries_and_gallery("seen_test")
    assert np.array_equal(queries, held) and np.array_equal(gallery, train)
    everything = np.concatenate([train, held, split.indices("val")])
    assert sorted(everything.tolist()) == split.indices("seen").tolist()


def test_config_defaults_and_the_former_seed_name():
    config = TrainConfig(dataset="glyphs").resolved()
    assert (config.val_seed, config.split_seed, config.seen_test_per_class, config.eval_splits) == (0, 0, 4, [])
    assert TrainConfig(dataset="glyphs", split_seed=4).resolved().val_seed == 4
    assert TrainConfig(dataset="glyphs", val_seed=4).resolved().split_seed == 4
    assert TrainConfig(dataset="glyphs", val_classes=3).resolved().eval_splits == ["val"]
    with pytest.raises(ValueError, match="former name of val_seed"):
        TrainConfig(dataset="glyphs", val_seed=1, split_seed=2).resolved()
    with pytest.raises(ValueError, match="eval_splits names val, but val_classes is 0"):
        TrainConfig(dataset="glyphs", eval_splits=["val"]).resolved()
    with pytest.raises(ValueError, match="eval_splits must name parts"):
        TrainConfig(dataset="glyphs", eval_splits=["test"]).resolved()
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"legacy_unseen_seed": 3})


# config.json files of runs shipped before val_seed and the seen-test hold-out existed (copied from the checkpoints
# of commit 03aa7e7): how such runs are read must not change.
LEGACY_CONFIGS = sorted((ROOT / "tests" / "data").glob("legacy_*_config.json"))


@pytest.mark.parametrize("saved_config", LEGACY_CONFIGS, ids=[p.stem for p in LEGACY_CONFIGS])
def test_runs_made_before_the_hold_out_read_as_trained_without_it(saved_config, tmp_path):
    saved = json.loads(saved_config.read_text())
    assert "val_seed" not in saved and "seen_test_per_class" not in saved, "not a config of the earlier format"
    (tmp_path / "config.json").write_text(saved_config.read_text())
    config = read_config(tmp_path)
    assert config.seen_test_per_class == 0 and config.val_seed == saved["split_seed"]
    assert config.legacy_unseen_seed is None
    split = split_for(config)
    assert len(split.indices("seen_test")) == 0
    assert split.unseen_classes == load_split(config.dataset).unseen_classes


@pytest.mark.parametrize("run_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_runs_were_trained_with_held_out_seen_images(run_dir):
    config = read_config(run_dir)
    if config.dataset == "fashion-mnist":  # its photos are installed apart (CI installs them)
        from test_fashion import real_files_or_skip

        real_files_or_skip()
    assert config.seen_test_per_class > 0
    split = split_for(config)
    held_out = split.indices("seen_test")
    assert len(held_out) == config.seen_test_per_class * len(split.train_classes)
    assert not set(held_out) & set(split.indices("train")), "a held-out image is also a training image"
    assert split.unseen_classes == load_split(config.dataset).unseen_classes


def _old_folder_run(tmp_path: Path, split_seed: int) -> Path:
    """A finished folder run, its config rewritten as versions before val_seed wrote it."""
    from test_data import make_image_tree

    data = make_image_tree(tmp_path / "data", classes=8, per_class=3)
    run_dir = tmp_path / "run"
    train(TrainConfig(dataset="folder", data_root=str(data), max_steps=1, eval_every=0, image_size=8,
                      embedding_dim=4, seen_test_per_class=0), run_dir, progress=False)
    saved = json.loads((run_dir / "config.json").read_text())
    for key in ("val_seed", "seen_test_per_class", "eval_splits", "legacy_unseen_seed"):
        saved.pop(key)
    saved["split_seed"] = split_seed
    (run_dir / "config.json").write_text(json.dumps(saved))
    return run_dir


def test_an_old_folder_run_keeps_its_seeded_unseen_classes(tmp_path):
    run_dir = _old_folder_run(tmp_path, split_seed=5)
    run = load_run(run_dir)
    assert run.config.legacy_unseen_seed == 5 and run.config.eval_splits == ["unseen"]
    # the rule those versions applied: a permutation seeded by split_seed, its second half unseen
    order = np.random.default_rng(5).permutation(8)
    assert split_for(run.config).unseen_classes == sorted(order[4:].tolist())
    assert seeded_half_split(8, 5).unseen_classes == sorted(order[4:].tolist())
    assert split_for(run.config).unseen_classes != load_split("folder", str(tmp_path / "data")).unseen_classes


def test_training_scores_only_validation_classes_until_the_end(tmp_path):
    run_dir = tmp_path / "run"
    train(TrainConfig(dataset="digits", val_classes=1, epochs=2, eval_every=1, seen_test_per_class=5), run_dir,
          progress=False)
    run = load_run(run_dir)
    evals = [(r["epoch"], r["split"]) for r in run.history if r.get("kind") == "eval"]
    assert evals == [(0, "val"), (1, "seen_test"), (1, "val"), (1, "unseen")]
    assert json.loads((run_dir / "metrics.json").read_text()) == {
        k: v for k, v in run.eval_records("unseen")[-1].items() if k not in ("kind", "step", "epoch", "split")}


def test_eval_splits_can_ask_for_unseen_during_training(tmp_path):
    run_dir = tmp_path / "run"
    train(TrainConfig(dataset="digits", epochs=2, eval_every=1, eval_splits=["unseen", "seen_test"]), run_dir,
          progress=False)
    evals = [(r["epoch"], r["split"]) for r in load_run(run_dir).history if r.get("kind") == "eval"]
    assert evals == [(0, "unseen"), (0, "seen_test"), (1, "seen_test"), (1, "unseen")]
    shutil.rmtree(run_dir)


def test_train_help_says_validation_never_takes_a_test_class(capsys):
    from ecaml.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "drawn from the training classes only" in text and "no setting moves one into training" in text
    assert "--eval-splits" in text and "The unseen test classes are scored at the end of training" in text


def test_eval_splits_flag_parsing(capsys):
    from ecaml.cli import _flag_values, build_parser, main

    def parsed(value):
        return _flag_values(build_parser().parse_args(["train", "--eval-splits", value, "--out", "x"]))["eval_splits"]

    assert parsed("none") == [] and parsed("val,unseen") == ["val", "unseen"]
    assert main(["train", "--eval-splits", "val,test", "--out", "x"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--eval-splits takes a comma-separated list" in error and len(error.splitlines()) == 1
