"""Class-balanced batches (m classes x n images) and the torch view of an ImageSet."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ecaml.data.base import ImageSet


def class_balanced_batches(
    labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """One epoch of batches of positions into ``labels``: m classes x n images each.

    Classes are visited in a seeded shuffled cycle so every class appears about
    equally often; images are drawn without replacement when the class has
    enough of them. The same (seed, epoch) always gives the same batches, which
    is what lets ``--resume`` continue mid-epoch exactly.
    """
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("class-balanced batches need at least 2 classes")
    classes_per_batch = min(classes_per_batch, len(classes))
    batch_size = classes_per_batch * images_per_class
    steps = max(1, len(labels) // batch_size)
    rng = np.random.default_rng([seed, epoch])
    members = {c: np.flatnonzero(labels == c) for c in classes}
    class_cycle = _class_cycle(classes, classes_per_batch * steps, rng)
    batches = []
    for step in range(steps):
        chosen = class_cycle[step * classes_per_batch:(step + 1) * classes_per_batch]
        picks = [_draw(members[c], images_per_class, rng) for c in chosen]
        batches.append(np.concatenate(picks))
    return batches


def _class_cycle(classes: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Concatenated permutations of the classes; a batch never repeats a class within one permutation block."""
    rounds = -(-length // len(classes)) + 1
    return np.concatenate([rng.permutation(classes) for _ in range(rounds)])[:length] if len(classes) else classes


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(pool, size=count, replace=len(pool) < count)


class ImageView(Dataset):
    """``(image tensor, label, dataset index)`` for the chosen indices of an ImageSet.

    ``label_map`` renumbers classes (e.g. to 0..C-1 for losses that own a
    per-class parameter); the dataset index travels with each item so an
    embedding row can always be traced to its image.
    """

    def __init__(self, dataset: ImageSet, indices: np.ndarray, transform, label_map: dict[int, int] | None = None):
        self.dataset, self.indices, self.transform = dataset, np.asarray(indices), transform
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = int(self.indices[position])
        label = int(self.dataset.labels[index])
        if self.label_map is not None:
            label = self.label_map[label]
        return self.transform(self.dataset.image(index)), torch.tensor(label), torch.tensor(index)
