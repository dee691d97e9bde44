"""The input pipeline and logging: seeded augmentation with workers, exact resume, log_every, worker defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ecaml.config import TrainConfig
from ecaml.data import load_split
from ecaml.data.loading import RunBatchSampler, default_num_workers, resolve_num_workers, training_loader
from ecaml.data.sampling import ImageView
from ecaml.data.transforms import build_transform
from ecaml.runs import load_run
from ecaml.store.run_files import read_history, read_status
from ecaml.train.launch import resume, train
from ecaml.train.stopping import TrainingError
from ecaml.train.trainer import Trainer


def digits_view(flip: bool = True) -> tuple[ImageView, np.ndarray]:
    split = load_split("digits")
    indices = split.indices("train")
    view = ImageView(split.dataset, indices, build_transform(8, 1, False, train=True, flip=flip, resize=12))
    return view, split.dataset.labels[indices]


def batches_of(loader) -> list[torch.Tensor]:
    return [images for images, _, _ in loader]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augmentation_depends_on_the_seed_and_position_not_on_workers_or_resume(seed):
    view, labels = digits_view()
    whole = RunBatchSampler(labels, 5, 4, seed, steps_per_epoch=10, start_step=0, end_step=14)
    tail = RunBatchSampler(labels, 5, 4, seed, steps_per_epoch=10, start_step=9, end_step=14)
    cpu = torch.device("cpu")
    in_process = batches_of(training_loader(view, whole, 0, cpu, seed))
    with_workers = batches_of(training_loader(view, whole, 2, cpu, seed))
    resumed = batches_of(training_loader(view, tail, 2, cpu, seed))
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(in_process[9:], resumed, strict=True))
    other_seed = batches_of(training_loader(view, RunBatchSampler(labels, 5, 4, seed + 10, 10, 0, 14), 0, cpu, seed))
    assert not all(torch.equal(a, b) for a, b in zip(in_process, other_seed))


def test_the_loader_leaves_the_callers_random_stream_alone():
    view, labels = digits_view()
    before = torch.get_rng_state()
    batches_of(training_loader(view, RunBatchSampler(labels, 5, 4, 0, 10, 0, 3), 0, torch.device("cpu"), 0))
    assert torch.equal(torch.get_rng_state(), before)


def test_resize_then_crop_is_the_references_256_227(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    test = build_transform(227, 3, True, train=False, flip=False, resize=256)(image)
    assert test.shape == (3, 227, 227)
    squashed = image.resize((256, 256), Image.BILINEAR)
    expected = build_transform(227, 3, True, train=False, flip=False, resize=256)(squashed)
    assert torch.allclose(test, expected, atol=0.05)
    train_crops = torch.stack([build_transform(227, 3, True, train=True, flip=True, resize=256)(image) for _ in range(4)])
    assert train_crops.shape == (4, 3, 227, 227) and not torch.equal(train_crops[0], train_crops[1])
    with pytest.raises(ValueError, match="cannot crop 227"):
        build_transform(227, 3, True, train=False, flip=False, resize=200)


def test_worker_defaults(monkeypatch):
    assert resolve_num_workers(None, "digits") == 0 and resolve_num_workers(3, "digits") == 3
    monkeypatch.setattr("ecaml.data.loading.available_cpus", lambda: 16)
    assert default_num_workers() == 15 and resolve_num_workers(None, "folder") == 15
    monkeypatch.setattr("ecaml.data.loading.available_cpus", lambda: 64)
    assert default_num_workers() == 16, "a cap: past it, workers' memory grows faster than one GPU can use them"
    monkeypatch.setattr("ecaml.data.loading.available_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_num_workers() == 3, "16 CPUs shared by 4 processes: 4 each, one for the trainer"
    monkeypatch.setattr("ecaml.data.loading.available_cpus", lambda: 2)
    assert default_num_workers() == 1


def test_history_lines_are_means_of_log_every_steps(tmp_path):
    every_step = train(TrainConfig(dataset="digits", max_steps=10, eval_every=0), tmp_path / "one", progress=False)
    grouped = train(TrainConfig(dataset="digits", max_steps=10, eval_every=0, log_every=4), tmp_path / "four", progress=False)
    single = [r for r in read_history(every_step.run_dir) if r["kind"] == "step"]
    lines = [r for r in read_history(grouped.run_dir) if r["kind"] == "step"]
    assert [(r["step"], r["steps_averaged"]) for r in lines] == [(4, 4), (8, 4), (10, 2)]
    for line, window in zip(lines, (single[0:4], single[4:8], single[8:10])):
        for name in ("metric_loss", "energy", "log_energy", "row_norm", "total_loss"):
            assert line[name] == pytest.approx(np.mean([r[name] for r in window]), rel=1e-6)


def test_a_nan_between_log_points_names_its_own_step(tmp_path, monkeypatch):
    original = Trainer.compute_losses

    def poisoned(self, images, labels):
        terms = original(self, images, labels)
        if self.step + 1 == 18:
            terms["total_loss"] = terms["total_loss"] * float("nan")
        return terms

    monkeypatch.setattr(Trainer, "compute_losses", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at step 18; .* checkpoint of step 15 is kept"):
        # All 900 seen digits in training (nothing held out): 15 batches of 60, a checkpoint every 15 steps.
        train(TrainConfig(dataset="digits", max_steps=30, eval_every=0, log_every=10, seen_test_per_class=0),
              tmp_path / "run", progress=False)
    assert load_run(tmp_path / "run").step == 15 and read_status(tmp_path / "run")["state"] == "failed"


def test_resume_with_workers_and_log_every_matches_an_uninterrupted_run(tmp_path):
    # Nothing held out: 15 steps an epoch, so the epoch's checkpoint (which flushes the history) falls on a log point.
    settings = {"dataset": "digits", "eval_every": 0, "num_workers": 2, "log_every": 3, "seed": 5,
                "seen_test_per_class": 0}
    whole = train(TrainConfig(max_steps=20, **settings), tmp_path / "whole", progress=False)
    train(TrainConfig(max_steps=7, **settings), tmp_path / "split", progress=False)
    resumed = resume(tmp_path / "split", progress=False, max_steps=20)
    first, second = (load_run(r.run_dir).model.state_dict() for r in (whole, resumed))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert [r["step"] for r in read_history(tmp_path / "split") if r["kind"] == "step"] == [3, 6, 7, 9, 12, 15, 18, 20]
