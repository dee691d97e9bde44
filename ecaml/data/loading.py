"""Feeding a model: worker counts, the training run's one batch sampler, loaders, seeded augmentation.

The training loader is built once per run (``training_loader``): its batch
sampler yields the batches of optimiser steps ``start_step .. end_step`` across
epoch boundaries, so worker processes start once and keep prefetching through
epoch ends. Each epoch's batch list comes from ``class_balanced_batches(labels,
m, n, seed, epoch)``, identical in every process; under ``torchrun`` a process
takes batches ``rank, rank + world_size, ...`` of it, so processes see different
classes. Every position travels with its own augmentation seed, derived from
(seed, epoch, batch, slot), so a run's crops and mirrors depend neither on the
number of workers nor on where a resumed run restarted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ecaml.data.sampling import ImageView, class_balanced_batches

# Built-in sets held as arrays in memory: reading an item is a slice, so worker processes would
# only add start-up and inter-process copies. Everything else is decoded from files.
IN_MEMORY_DATASETS = ("digits", "glyphs", "fashion-mnist")
MAX_DEFAULT_WORKERS = 16
# Batches each worker keeps ready; two (torch's default) can leave a GPU waiting after a slow decode.
PREFETCH_BATCHES = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """Worker processes for a loader that decodes image files: the CPUs this process may use, shared among the
    processes of this machine under torchrun (LOCAL_WORLD_SIZE), less one for the training process itself;
    at least 1, at most 16. Measured on an H200 with 16 CPUs (results/gpu/): 8 workers decoded 2,078 CUB-sized
    JPEGs/s, less than GoogLeNet's 2,440 images/s, so 8 limited training; 15 decoded 5,485/s."""
    per_process = available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, per_process - 1))


def resolve_num_workers(num_workers: int | None, dataset: str) -> int:
    """``num_workers`` as configured, or when None: 0 for the in-memory built-ins, ``default_num_workers()`` else."""
    if num_workers is not None:
        return num_workers
    return 0 if dataset in IN_MEMORY_DATASETS else default_num_workers()


def loader_options(num_workers: int, device: torch.device) -> dict:
    """DataLoader keywords for feeding ``device``: pinned memory on CUDA (so copies can be non_blocking),
    workers kept alive between passes, deeper prefetch. For evaluation loaders as much as training ones."""
    options = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=PREFETCH_BATCHES)
    return options


class RunBatchSampler:
    """The batches of optimiser steps ``start_step`` (inclusive) to ``end_step`` (exclusive), this process's share.

    Step s is in epoch ``s // steps_per_epoch``; its batch is number ``(s % steps_per_epoch) * world_size + rank``
    of that epoch's list. Each yielded batch is a list of ``(position, augmentation seed)``.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int,
                 steps_per_epoch: int, start_step: int, end_step: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        self.labels = np.asarray(labels)
        self.classes_per_batch, self.images_per_class, self.seed = classes_per_batch, images_per_class, seed
        self.steps_per_epoch, self.start_step, self.end_step = steps_per_epoch, start_step, end_step
        self.rank, self.world_size = rank, world_size
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Every process's batches of ``epoch`` (the same list in each process)."""
        if self._cached is None or self._cached[0] != epoch:
            batches = class_balanced_batches(self.labels, self.classes_per_batch, self.images_per_class, self.seed, epoch)
            if len(batches) < self.steps_per_epoch * self.world_size:
                raise ValueError(f"epoch {epoch} has {len(batches)} batches, fewer than {self.steps_per_epoch} steps "
                                 f"x {self.world_size} processes")
            self._cached = (epoch, batches)
        return self._cached[1]

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        number = offset * self.world_size + self.rank
        positions = self.epoch_batches(epoch)[number]
        seeds = np.random.default_rng([self.seed, epoch, number, 0x5EED]).integers(0, 2**62, size=len(positions))
        return list(zip(positions.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            yield self.batch_at(step)


class SeededView(Dataset):
    """An ImageView indexed by ``(position, seed)``: the transform's random draws come from ``seed`` alone.

    The draws use torch's CPU generator, which is forked around the call so the
    caller's random stream is left exactly as it was (with no workers, items are
    made in the training process itself).
    """

    def __init__(self, view: ImageView):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, item: tuple[int, int]):
        position, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            return self.view[int(position)]


def training_loader(view: ImageView, sampler: RunBatchSampler, num_workers: int, device: torch.device,
                    seed: int) -> DataLoader:
    """The one loader of a training run: seeded per-sample augmentation, pinned memory on CUDA, persistent workers."""
    # A private generator: a DataLoader with workers otherwise draws their base seed from the global RNG,
    # and a resumed run would then continue from a different random state than an uninterrupted one.
    return DataLoader(SeededView(view), batch_sampler=sampler, generator=torch.Generator().manual_seed(seed),
                      **loader_options(num_workers, device))
