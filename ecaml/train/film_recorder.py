"""Recording the training film: small snapshots of a run's unseen-class embeddings at chosen steps.

With ``film_every = N`` in the config, the trainer calls ``FilmRecorder.before_step``
and ``after_step`` around every step; at step 0 (before training), every N-th step and the last one,
it embeds a fixed, seeded subset of the unseen images (at most ``FILM_IMAGES``;
the same subset for every run on the same split, so an EC-off and an EC-on run
show the same images) and writes ``film/step_<step>.safetensors`` (float16
vectors) and then ``film/film.json`` (the subset, its labels and the steps), each
atomically. Embedding draws nothing from any random generator and leaves the
model's mode as it was, so a run with a film trains bit for bit as without one.
``ecaml.serve.film`` reads the film back and draws its frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ecaml.data import ClassSplit
from ecaml.store.atomic import atomic_write_bytes, atomic_write_json


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
