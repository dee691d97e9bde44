"""The training film: snapshots that never change training, their files, and the aligned frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecaml.config import TrainConfig
from ecaml.data import load_split
from ecaml.film import FILM_FOLDER, FILM_INDEX, Film, film_frames, film_subset, read_film, snapshot_name
from ecaml.runs import RunError, open_safetensors
from ecaml.train import train


def tiny(film_every: int, seed: int = 0, **changes) -> TrainConfig:
    return TrainConfig(dataset="digits", loss="triplet", ec_weight=0.6, max_steps=7, eval_every=0, seed=seed,
                       film_every=film_every, device="cpu", **changes)


def weights(path) -> dict[str, torch.Tensor]:
    with open_safetensors(path / "model.safetensors") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


@pytest.mark.parametrize("seed", [0, 3])
def test_filming_changes_nothing_in_training_and_writes_the_chosen_steps(tmp_path, seed):
    train(tiny(0, seed), tmp_path / "plain", progress=False)
    train(tiny(3, seed), tmp_path / "filmed", progress=False)
    plain, filmed = weights(tmp_path / "plain"), weights(tmp_path / "filmed")
    assert plain.keys() == filmed.keys() and all(torch.equal(plain[k], filmed[k]) for k in plain)  # bit for bit
    history = [(tmp_path / run / "history.jsonl").read_text() for run in ("plain", "filmed")]
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]  # noqa: E731
    assert strip(history[0]) == strip(history[1])
    assert not (tmp_path / "plain" / FILM_FOLDER).exists()
    film = read_film(tmp_path / "filmed")
    assert film.steps == [0, 3, 6, 7]  # before training, every 3rd step and the last
    split = load_split("digits")
    assert np.array_equal(film.indices, split.indices("unseen"))  # 896 <= the subset limit: all of them
    assert np.array_equal(film.labels, split.dataset.labels[film.indices])
    assert all(e.shape == (len(film.indices), 32) and np.isfinite(e).all() for e in film.embeddings)
    assert not np.allclose(film.embeddings[0], film.embeddings[-1])


def test_the_subset_is_seeded_sorted_and_capped():
    split = load_split("glyphs")
    for limit in (10, 100, 1000):
        subset = film_subset(split, limit)
        assert len(subset) == limit and np.all(np.diff(subset) > 0)
        assert np.isin(subset, split.indices("unseen")).all()
        assert np.array_equal(subset, film_subset(split, limit))  # the same for every run


def random_film(rng, steps, count=60, dim=8) -> Film:
    labels = rng.integers(0, 5, count)
    return Film(list(steps), np.arange(count), labels, [rng.normal(size=(count, dim)).astype(np.float32) for _ in steps])


@pytest.mark.parametrize("seed", range(5))
def test_frames_are_aligned_onto_the_final_map_and_across_runs(seed):
    rng = np.random.default_rng(seed)
    first = random_film(rng, [0, 5, 10])
    # A second run whose embeddings are the first's, rotated in the embedding space: the same maps up to rotation.
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    second = Film(first.steps, first.indices, first.labels, [(e @ rotation).astype(np.float32) for e in first.embeddings])
    steps, frames = film_frames([first, second])
    assert steps == [0, 5, 10]
    for a, b in zip(frames[0], frames[1]):
        np.testing.assert_allclose(a, b, atol=1e-4)  # aligned across runs
        assert a.shape == (60, 2) and np.isclose(np.sqrt((a ** 2).sum(axis=1).mean()), 1, atol=1e-5)  # unit RMS
    # Each frame is rotated onto the final one: no other rotation brings it closer.
    final = frames[0][-1]
    for frame in frames[0][:-1]:
        u, _, vt = np.linalg.svd(frame.T.astype(np.float64) @ final)
        np.testing.assert_allclose(u @ vt, np.eye(2), atol=1e-4)


def test_films_of_other_images_or_without_common_steps_are_refused():
    rng = np.random.default_rng(0)
    first = random_film(rng, [0, 5])
    other = random_film(rng, [0, 5])
    other.indices = other.indices + 1
    with pytest.raises(ValueError, match="different images"):
        film_frames([first, other])
    with pytest.raises(ValueError, match="no step in common"):
        film_frames([first, random_film(np.random.default_rng(1), [7])])


def test_a_damaged_film_is_a_one_line_error(tmp_path):
    train(tiny(4), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / FILM_FOLDER
    (folder / snapshot_name(4)).write_bytes(b"garbage")
    with pytest.raises(RunError):
        read_film(tmp_path / "run")
    (folder / FILM_INDEX).write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        read_film(tmp_path / "run")
    assert read_film(tmp_path / "nothing") is None
