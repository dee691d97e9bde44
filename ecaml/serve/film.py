"""The training film's frames: the snapshots a run recorded (``ecaml.train.film_recorder``), read and aligned.

``read_film`` reads the snapshots back and ``film_frames`` turns the films of
several runs into 2-D frames on one aligned projection that keeps neighbourhoods:
each frame's t-SNE layout (``ecaml.serve.neighbour_layout``), started from the run's
previous frame and rotated onto it (orthogonal Procrustes), every run's first frame
from one seeded start, and each run rotated so its final frame matches the
first run's, with every frame scaled to unit RMS radius, so what moves between
frames is the embedding, not the axes. ``frame_scores`` measures each frame's
unseen Recall@1 and MAP@R on the filmed images, for the frame's label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecaml.serve.neighbour_layout import layout
from ecaml.store.run_files import RunError, open_safetensors
from ecaml.train.film_recorder import FILM_FOLDER, FILM_INDEX, snapshot_name


@dataclass
class Film:
    steps: list[int]
    indices: np.ndarray  # dataset indices of the filmed images
    labels: np.ndarray
    embeddings: list[np.ndarray]  # float32 [n, D] per step


def has_film(run_dir: Path) -> bool:
    return (Path(run_dir) / FILM_FOLDER / FILM_INDEX).is_file()


def read_film(run_dir: Path) -> Film | None:
    """The run's film (None when it has none); a snapshot that is missing or malformed is a RunError."""
    folder = Path(run_dir) / FILM_FOLDER
    if not (folder / FILM_INDEX).is_file():
        return None
    try:
        record = json.loads((folder / FILM_INDEX).read_text())
        steps = [int(s) for s in record["steps"]]
        indices = np.asarray(record["indices"], dtype=np.int64)
        labels = np.asarray(record["labels"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{Path(run_dir).name}: unreadable {FILM_FOLDER}/{FILM_INDEX} ({error})") from None
    if indices.shape != labels.shape or len(indices) < 3 or not steps:
        raise RunError(f"{Path(run_dir).name}: {FILM_FOLDER}/{FILM_INDEX} does not describe a film")
    embeddings = []
    for step in steps:
        with open_safetensors(folder / snapshot_name(step)) as handle:
            vectors = handle.get_tensor("embeddings").float().numpy()
        if vectors.ndim != 2 or len(vectors) != len(indices) or not np.isfinite(vectors).all():
            raise RunError(f"{Path(run_dir).name}: the film snapshot of step {step} does not fit its film.json")
        embeddings.append(vectors)
    return Film(steps, indices, labels, embeddings)


def common_steps(films: list[Film]) -> list[int]:
    """The steps every film has (runs of one setting share them; others are compared where they overlap)."""
    shared = set(films[0].steps)
    for film in films[1:]:
        shared &= set(film.steps)
    return sorted(shared)


def film_frames(films: list[Film]) -> tuple[list[int], list[list[np.ndarray]]]:
    """(steps, frames[run][step] as float32 [n, 2]) on one aligned projection; the films must film the same images."""
    _check_same_images(films)
    steps = common_steps(films)
    if not steps:
        raise ValueError("these runs' films have no step in common")
    starts = [dict(zip(film.steps, film.embeddings))[steps[0]] for film in films]
    frames = []
    for film in films:
        by_step = dict(zip(film.steps, film.embeddings))
        coords: list[np.ndarray] = []  # every run's first frame from the same seeded layout: one seed starts alike
        for step in steps:
            coords.append(next_frame(by_step[step], coords[-1] if coords else None))
        frames.append(coords)
    # Runs that start from the same network (one seed: the same first snapshot) share their first frame, and each
    # later frame is rotated onto the one before it, so they are already in one frame of reference: the same picture
    # at step 0, as the same weights deserve. Runs that start apart are turned so that their last frames agree.
    reference = frames[0][-1]
    for start, run_frames in zip(starts[1:], frames[1:]):
        if np.array_equal(start, starts[0]):
            continue
        rotation = _rotation(run_frames[-1], reference)
        run_frames[:] = [(c @ rotation).astype(np.float32) for c in run_frames]
    return steps, frames


def _check_same_images(films: list[Film]) -> None:
    if any(not np.array_equal(film.indices, films[0].indices) for film in films[1:]):
        raise ValueError("these runs' films show different images (another data set or split)")


def next_frame(vectors: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """One frame: the layout of ``vectors`` started from the ``previous`` frame and rotated onto it (None: the first
    frame, from the seeded start), at unit RMS radius."""
    frame = _unit_rms(layout(vectors, start=previous))
    return frame if previous is None else _rotate_onto(frame, previous)


@dataclass
class FilmSoFar:
    """A film drawn while its runs still train: the steps drawn so far and, per run, their frames and scores."""

    steps: list[int]
    frames: list[list[np.ndarray]]
    scores: list[list[dict[str, float]]]
    labels: np.ndarray  # the filmed images' classes


def grow_film(films: list[Film | None], so_far: FilmSoFar | None = None) -> FilmSoFar | None:
    """``so_far`` with one more frame per run (``films`` as ``read_film`` reads them now; None where a run has filmed
    nothing yet): the newest step every run has filmed, laid out from each run's last frame (steps in between are skipped when the runs film faster than frames are laid out). None: no common step
    yet. Runs of one seed share their first frame, as in ``film_frames``; runs that start apart are not turned onto
    each other until the film is complete."""
    if any(film is None for film in films):
        return so_far
    shared = common_steps(films)
    if not shared or (so_far is not None and shared[-1] <= so_far.steps[-1]):
        return so_far
    step = shared[-1] if so_far is not None else shared[0]  # the first frame is the first step: the untrained start
    _check_same_images(films)
    # New lists, not appended in place: a page may be drawing ``so_far`` while the next frame is laid out.
    frames = [list(run) for run in so_far.frames] if so_far is not None else [[] for _ in films]
    scores = [list(run) for run in so_far.scores] if so_far is not None else [[] for _ in films]
    for film, run_frames, run_scores in zip(films, frames, scores):
        vectors = dict(zip(film.steps, film.embeddings))[step]
        run_frames.append(next_frame(vectors, run_frames[-1] if run_frames else None))
        run_scores.extend(frame_scores(film, [step]))
    return FilmSoFar((so_far.steps if so_far is not None else []) + [step], frames, scores, films[0].labels)


@dataclass
class LaidOutFilm:
    """Runs' films laid out for the page: the common steps, frames[run][step] (float32 [n, 2]), the filmed images'
    classes and dataset indices, and each run's per-step scores."""

    steps: list[int]
    frames: list[list[np.ndarray]]
    labels: np.ndarray
    indices: np.ndarray
    scores: list[list[dict[str, float]]]


def lay_out_films(run_dirs: list[Path]) -> LaidOutFilm:
    """The films of ``run_dirs`` read, laid out on one aligned projection (``film_frames``) and scored."""
    films = [read_film(Path(run_dir)) for run_dir in run_dirs]
    unfilmed = [Path(run_dir).name for run_dir, film in zip(run_dirs, films) if film is None]
    if unfilmed:
        raise RunError(f"{', '.join(unfilmed)}: no training film")
    steps, frames = film_frames(films)
    return LaidOutFilm(steps, frames, films[0].labels, films[0].indices, [frame_scores(f, steps) for f in films])


def frame_scores(film: Film, steps: list[int]) -> list[dict[str, float]]:
    """Unseen Recall@1 and MAP@R of each of ``steps``' snapshots (its filmed images searched against each other),
    so that a frame's label is measured on the very points it draws."""
    from ecaml.eval.metrics import retrieval_metrics

    by_step = dict(zip(film.steps, film.embeddings))
    scores = []
    for step in steps:
        metrics = retrieval_metrics(by_step[step], film.labels, recall_ks=(1,), nmi=False)
        scores.append({"recall@1": metrics["recall@1"], "map@r": metrics["map@r"]})
    return scores


def _unit_rms(coords: np.ndarray) -> np.ndarray:
    centred = coords - coords.mean(axis=0)
    radius = np.sqrt((centred ** 2).sum(axis=1).mean())
    return centred / radius if radius > 0 else centred


def _rotation(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The orthogonal 2x2 matrix R minimising |coords R - reference| (both centred)."""
    u, _, vt = np.linalg.svd(coords.T @ reference)
    return u @ vt


def _rotate_onto(coords: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (coords @ _rotation(coords, reference)).astype(np.float32)
