"""The training film: small snapshots of a run's unseen-class embeddings at chosen steps, and their aligned frames.

With ``film_every = N`` in the config, the trainer calls ``FilmRecorder.before_step``
and ``after_step`` around every step; at step 0 (before training), every N-th step and the last one,
it embeds a fixed, seeded subset of the unseen images (at most ``FILM_IMAGES``;
the same subset for every run on the same split, so an EC-off and an EC-on run
show the same images) and writes ``film/step_<step>.safetensors`` (float16
vectors) and then ``film/film.json`` (the subset, its labels and the steps), each
atomically. Embedding draws nothing from any random generator and leaves the
model's mode as it was, so a run with a film trains bit for bit as without one.

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
import torch

from ecaml.data import ClassSplit
from ecaml.serve.neighbour_layout import layout
from ecaml.store.run_files import RunError, atomic_write_bytes, atomic_write_json, open_safetensors

FILM_FOLDER = "film"
FILM_INDEX = "film.json"
FILM_FORMAT = 1
FILM_IMAGES = 2000
SUBSET_SEED = 0  # not the run's seed: runs that differ only in seed or λ film the same images


def film_subset(split: ClassSplit, limit: int = FILM_IMAGES) -> np.ndarray:
    """Sorted dataset indices of at most ``limit`` unseen images, drawn with a fixed seed."""
    unseen = split.indices("unseen")
    if len(unseen) <= limit:
        return unseen.astype(np.int64)
    chosen = np.random.default_rng(SUBSET_SEED).choice(unseen, size=limit, replace=False)
    return np.sort(chosen).astype(np.int64)


def snapshot_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


class FilmRecorder:
    """Writes a run's film as it trains; ``after_step`` is the trainer's one call per step."""

    def __init__(self, run_dir: Path, split: ClassSplit, config, channels: int, device: torch.device, total_steps: int):
        self.folder = Path(run_dir) / FILM_FOLDER
        self.split, self.config, self.channels, self.device = split, config, channels, device
        self.every, self.total_steps = int(config.film_every), int(total_steps)
        self.indices = film_subset(split)
        self.labels = split.dataset.labels[self.indices].astype(np.int64)
        self.steps = _recorded_steps(self.folder)

    @classmethod
    def for_trainer(cls, trainer) -> "FilmRecorder | None":
        """The recorder of a Trainer whose config asks for a film (``film_every`` > 0), else None."""
        if not getattr(trainer.config, "film_every", 0):
            return None
        return cls(trainer.run_dir, trainer.split, trainer.config, trainer.channels, trainer.device,
                   trainer.plan.total_steps)

    def before_step(self, step: int, model: torch.nn.Module) -> None:
        """Called before each optimiser step: films the untrained model (step 0) once."""
        if step == 0 and 0 not in self.steps:
            self.snapshot(0, model)

    def after_step(self, step: int, model: torch.nn.Module) -> None:
        """Called after each optimiser step: films every ``film_every``-th step and the last one."""
        if step % self.every == 0 or step == self.total_steps:
            self.snapshot(step, model)

    def snapshot(self, step: int, model: torch.nn.Module) -> None:
        from safetensors.torch import save as save_safetensors_bytes

        from ecaml.eval.evaluate import embed_indices

        vectors = embed_indices(model, self.split, self.indices, self.config, self.channels, self.device).vectors
        tensors = {"embeddings": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float16))}
        self.folder.mkdir(parents=True, exist_ok=True)
        metadata = {"step": str(step), "format": str(FILM_FORMAT)}
        atomic_write_bytes(self.folder / snapshot_name(step), save_safetensors_bytes(tensors, metadata=metadata))
        self.steps = sorted(set(self.steps) | {int(step)})
        atomic_write_json(self.folder / FILM_INDEX, {
            "format": FILM_FORMAT, "steps": self.steps,
            "indices": self.indices.tolist(), "labels": self.labels.tolist(),
        })


def _recorded_steps(folder: Path) -> list[int]:
    try:
        steps = json.loads((folder / FILM_INDEX).read_text()).get("steps", [])
        return sorted(int(s) for s in steps)
    except (OSError, ValueError, AttributeError, TypeError):
        return []


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
    if any(not np.array_equal(film.indices, films[0].indices) for film in films[1:]):
        raise ValueError("these runs' films show different images (another data set or split)")
    steps = common_steps(films)
    if not steps:
        raise ValueError("these runs' films have no step in common")
    frames = []
    for film in films:
        by_step = dict(zip(film.steps, film.embeddings))
        start = None  # every run's first frame from the same seeded layout: runs of one seed start alike
        coords = []
        for step in steps:
            frame = _unit_rms(layout(by_step[step], start=start))
            if coords:
                frame = _rotate_onto(frame, coords[-1])
            coords.append(frame)
            start = frame
        frames.append(coords)
    reference = frames[0][-1]
    for run_frames in frames[1:]:
        rotation = _rotation(run_frames[-1], reference)
        run_frames[:] = [(c @ rotation).astype(np.float32) for c in run_frames]
    return steps, frames


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
