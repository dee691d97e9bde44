"""Class-balanced batches (m classes x n images) and the torch view of an ImageSet."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch.utils.data import Dataset

from ecaml.data.base import ImageSet


def class_balanced_batches(
    labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """One epoch of batches of positions into ``labels``: m distinct classes x n images each.

    Guarantees, for every batch:

    * its ``m`` classes are distinct. With fewer than ``m`` classes in ``labels`` the
      batch holds every class once (``m`` is clamped to the number of classes; at
      least 2 classes are needed, since a batch of one class has no negatives);
    * a class with at least ``n`` images contributes ``n`` distinct images; a smaller
      class contributes each of its images once, topped up to ``n`` with repeats
      drawn at random (each image then appears at most ``ceil(n / size)`` times).

    Classes are visited in seeded shuffled rounds, so every class appears about
    equally often (visit counts differ by at most 1 over an epoch); each class walks
    through its own shuffled images, so successive visits see different images.
    The same (seed, epoch) always gives the same batches, which is what lets
    ``--resume`` continue mid-epoch exactly. ``len(labels) // (m * n)`` batches.
    """
    labels = np.asarray(labels)
    classes, members = _class_members(labels)
    if len(classes) < 2:
        raise ValueError(f"class-balanced batches need at least 2 classes, got {len(classes)}")
    if classes_per_batch < 1 or images_per_class < 1:
        raise ValueError("classes_per_batch and images_per_class must be at least 1")
    classes_per_batch = min(classes_per_batch, len(classes))
    steps = max(1, len(labels) // (classes_per_batch * images_per_class))
    rng = np.random.default_rng([seed, epoch])
    class_order = _ClassRounds(len(classes), rng)
    image_order = [_ImageCycle(pool, rng) for pool in members]
    return [
        np.concatenate([image_order[c].take(images_per_class) for c in class_order.take(classes_per_batch)])
        for _ in range(steps)
    ]


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted distinct labels and, for each, its positions in ``labels`` (one sort: fast for 10,000s of classes)."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    return classes, np.split(order, starts[1:])


class _ClassRounds:
    """Class ids in shuffled rounds; a batch takes the next ``m`` ids not already in it.

    A batch that straddles two rounds could meet a class twice; the repeat is put
    back at the front of the queue for the next batch instead.
    """

    def __init__(self, num_classes: int, rng: np.random.Generator):
        self.num_classes, self.rng = num_classes, rng
        self.queue: deque[int] = deque()

    def take(self, count: int) -> list[int]:
        chosen, deferred = [], []
        while len(chosen) < count:
            if not self.queue:
                self.queue.extend(int(c) for c in self.rng.permutation(self.num_classes))
            candidate = self.queue.popleft()
            (deferred if candidate in chosen else chosen).append(candidate)
        self.queue.extendleft(reversed(deferred))
        return chosen


class _ImageCycle:
    """One class's images in shuffled passes; each take is distinct images while the class has enough."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator):
        self.pool, self.rng = pool, rng
        self.order = rng.permutation(pool)
        self.position = 0

    def take(self, count: int) -> np.ndarray:
        if len(self.pool) <= count:
            repeats = self.rng.choice(self.pool, size=count - len(self.pool), replace=True)
            return np.concatenate([self.rng.permutation(self.pool), repeats])
        taken = self.order[self.position:self.position + count]
        self.position += len(taken)
        if len(taken) < count:  # end of a pass: a fresh shuffle, without the images already taken
            rest = self.rng.permutation(np.setdiff1d(self.pool, taken))
            self.order = np.concatenate([rest, taken])  # the ones just used go last in the new pass
            self.position = count - len(taken)
            taken = np.concatenate([taken, self.order[:self.position]])
        return taken


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
