"""The training film: snapshots that never change training, their files, and the aligned frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecaml.config import TrainConfig
from ecaml.data import load_split
from ecaml.serve.film import Film, film_frames, frame_scores, grow_film, read_film
from ecaml.store.run_files import RunError, open_safetensors
from ecaml.train.film_recorder import FILM_FOLDER, FILM_INDEX, film_subset, snapshot_name
from ecaml.train.launch import train

REPO_ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("seed", range(3))
def test_frames_are_aligned_onto_the_previous_frame_and_across_runs(seed):
    rng = np.random.default_rng(seed)
    first = random_film(rng, [0, 5, 10])
    # A second run that starts where the first did (one seed: one untrained network), then moves its own way.
    later = [rng.normal(size=e.shape).astype(np.float32) for e in first.embeddings[1:]]
    second = Film(first.steps, first.indices, first.labels, [first.embeddings[0], *later])
    steps, frames = film_frames([first, second])
    assert steps == [0, 5, 10]
    for run_frames in frames:
        for frame in run_frames:
            assert frame.shape == (60, 2) and np.isclose(np.sqrt((frame ** 2).sum(axis=1).mean()), 1, atol=1e-5)
    # Same start (the same weights at step 0), the same first frame: the two panels show one picture there.
    np.testing.assert_allclose(frames[1][0], frames[0][0], atol=1e-6)
    # Each frame is rotated onto the one before it (it also starts from its layout): no other rotation brings it
    # closer.
    for previous, frame in zip(frames[0][:-1], frames[0][1:]):
        u, _, vt = np.linalg.svd(frame.T.astype(np.float64) @ previous)
        np.testing.assert_allclose(u @ vt, np.eye(2), atol=1e-4)


def filmed_until(film: Film, last_step: int) -> Film:
    """``film`` as it stood on disk when its run had filmed up to ``last_step``."""
    kept = [i for i, step in enumerate(film.steps) if step <= last_step]
    return Film([film.steps[i] for i in kept], film.indices, film.labels, [film.embeddings[i] for i in kept])


@pytest.mark.parametrize("seed", range(3))
def test_a_film_grows_while_its_runs_train_frame_by_frame_as_the_finished_film_lays_them_out(seed):
    rng = np.random.default_rng(seed)
    first = random_film(rng, [0, 5, 10, 15])
    second = Film(first.steps, first.indices, first.labels,
                  [first.embeddings[0], *(rng.normal(size=e.shape).astype(np.float32) for e in first.embeddings[1:])])
    assert grow_film([filmed_until(first, 0), None]) is None  # the second run has filmed nothing yet
    so_far = grow_film([filmed_until(first, 0), filmed_until(second, 0)])
    assert so_far.steps == [0]
    assert grow_film([filmed_until(first, 5), filmed_until(second, 0)], so_far) is so_far  # no step both filmed
    drawn = so_far.frames[0]
    # Both runs filmed 5 and 10 before the page looked again: it lays out the newest, 10, from the frame it has.
    grown = grow_film([filmed_until(first, 10), filmed_until(second, 15)], so_far)
    assert grown.steps == [0, 10] and so_far.steps == [0] and so_far.frames[0] is drawn and len(drawn) == 1
    grown = grow_film([first, second], grown)
    assert grown.steps == [0, 10, 15]
    # The same frames as the finished film of those steps (runs of one seed: one frame of reference from step 0).
    _, frames = film_frames([Film([0, 10, 15], f.indices, f.labels, [f.embeddings[i] for i in (0, 2, 3)])
                             for f in (first, second)])
    for run_frames, finished in zip(grown.frames, frames):
        for frame, expected in zip(run_frames, finished):
            np.testing.assert_allclose(frame, expected, atol=1e-5)
    for film, run_scores in zip((first, second), grown.scores):
        assert run_scores == frame_scores(Film([0, 10, 15], film.indices, film.labels,
                                               [film.embeddings[i] for i in (0, 2, 3)]), [0, 10, 15])


@pytest.mark.parametrize("seed", range(3))
def test_runs_that_start_apart_are_turned_so_that_their_last_frames_agree(seed):
    rng = np.random.default_rng(seed)
    first = random_film(rng, [0, 5, 10])
    second = random_film(rng, [0, 5, 10])  # another start: another seed's untrained network
    _, frames = film_frames([first, second])
    u, _, vt = np.linalg.svd(frames[1][-1].T.astype(np.float64) @ frames[0][-1])
    np.testing.assert_allclose(u @ vt, np.eye(2), atol=1e-4)  # no other rotation brings the last frames closer


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


def neighbour_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """The share of points whose k nearest others (in the 2-D frame) mostly share their class."""
    distances = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float(((labels[nearest] == labels[:, None]).mean(axis=1) > 0.5).mean())


FEATURED_FILMS = ("digits-triplet-ec0-seed0", "digits-triplet-ec1-seed0")  # the shipped pair the app opens on


def shipped_films(every: int = 7) -> list[Film]:
    """The featured pair's films, every ``every``-th snapshot and the last (the whole film takes long on a CPU)."""
    films = [read_film(REPO_ROOT / "checkpoints" / name) for name in FEATURED_FILMS]
    for film in films:
        keep = sorted(set(range(0, len(film.steps), every)) | {len(film.steps) - 1})
        film.steps, film.embeddings = [film.steps[i] for i in keep], [film.embeddings[i] for i in keep]
    return films


def forming_film(seed: int, steps=(0, 1, 2, 3)) -> Film:
    """Sixteen classes that separate step by step in fourteen dimensions: more directions than a 2-D linear
    projection (PCA) can show at once, where a neighbourhood-keeping layout shows every class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(16), 20)
    centres = np.hstack([rng.normal(size=(16, 14)), np.zeros((16, 2))])
    embeddings = [(step / steps[-1] * 3.0 * centres[labels] + rng.normal(scale=0.4, size=(len(labels), 16)))
                  .astype(np.float32) for step in steps]
    return Film(list(steps), np.arange(len(labels)), labels, embeddings)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_film_shows_classes_forming_as_the_embedding_separates_them(seed):
    """Issue 22 item 2: the PCA film drew the two directions that varied most, not the neighbourhoods."""
    film = forming_film(seed)
    steps, (frames,) = film_frames([film])
    scores = frame_scores(film, steps)
    assert scores[-1]["map@r"] > scores[0]["map@r"] + 0.3  # the embedding separates the classes...
    first, last = (neighbour_agreement(frames[i], film.labels) for i in (0, -1))
    assert last > first + 0.5 and last > 0.95, (first, last)  # ...and so does the picture


def test_each_frame_is_labelled_with_what_its_embeddings_measure():
    films = shipped_films(every=14)
    history = [json.loads(line) for line in (REPO_ROOT / "checkpoints" / FEATURED_FILMS[1] / "history.jsonl")
               .read_text().splitlines()]
    final = [r for r in history if r.get("kind") == "eval" and r.get("split") == "unseen"][-1]
    scores = frame_scores(films[1], films[1].steps)
    assert len(scores) == len(films[1].steps)
    # The last frame films every unseen digit with the final model: what training's own evaluation measured.
    assert scores[-1]["recall@1"] == pytest.approx(final["recall@1"], abs=0.01)
    assert scores[-1]["map@r"] == pytest.approx(final["map@r"], abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_row_of_the_affinities_keeps_its_nearest_points_at_the_asked_perplexity(seed):
    """P keeps each point's 3 x perplexity nearest points (as Barnes-Hut t-SNE, openTSNE and scikit-learn do): the
    bisection over all N points was half of a 2,000-point frame's time. Each kept row still has the perplexity."""
    from ecaml.serve.neighbour_layout import NEIGHBOURS_PER_PERPLEXITY, PERPLEXITY, affinities

    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(8, 16))  # classes, as a film's embeddings have them
    vectors = (centres[generator.integers(0, 8, 500)] + 0.4 * generator.normal(size=(500, 16))).astype(np.float32)
    perplexity = PERPLEXITY
    joint = affinities(vectors).numpy()
    kept = int(NEIGHBOURS_PER_PERPLEXITY * perplexity)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = 2 - 2 * unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :kept]
    neighbours = np.zeros_like(joint, dtype=bool)
    np.put_along_axis(neighbours, nearest, True, axis=1)
    neighbours |= neighbours.T  # P is symmetrised: j keeps i when i keeps j
    assert np.allclose(joint, joint.T) and abs(joint.sum() - 1) < 1e-4
    assert (joint[~neighbours] <= 1e-12).all()
    # Against t-SNE's P over all points, written out plainly here: what the far points held is a sliver of the mass.
    assert np.abs(joint - exact_affinities(distances, perplexity)).sum() < 0.01


def exact_affinities(distances: np.ndarray, perplexity: float) -> np.ndarray:
    """t-SNE's joint P over every point (van der Maaten and Hinton 2008), each row's bandwidth by bisection."""
    count = len(distances)
    conditional = np.zeros_like(distances, dtype=np.float64)
    for row in range(count):
        others = np.delete(distances[row], row).astype(np.float64)
        others -= others.min()
        low, high, beta = 0.0, np.inf, 1.0
        for _ in range(100):
            weights = np.exp(-beta * others)
            entropy = np.log(weights.sum()) + beta * (others * weights).sum() / weights.sum()
            if entropy > np.log(perplexity):
                low, beta = beta, beta * 2 if np.isinf(high) else (beta + high) / 2
            else:
                high, beta = beta, (low + beta) / 2
        conditional[row, np.arange(count) != row] = weights / weights.sum()
    return (conditional + conditional.T) / (2 * count)
