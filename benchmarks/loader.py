#!/usr/bin/env python
"""Which limits a training step at 224 px: the input pipeline or the model?

    python benchmarks/loader.py           # a generated folder of 20,000 JPEGs (100 classes, 256 px)
    python benchmarks/loader.py --quick   # 2,000 images

Measured on one generated folder, in one process, with the library's own pieces:

* the input pipeline alone: the training ``DataLoader`` of a GoogLeNet run at 224 px
  (class-balanced 16 x 4 batches, decode, random resized crop / flip, normalise),
  iterated without a model, with no workers and with one worker per CPU;
* the model alone: ``Trainer.train_step`` (forward, loss, backward, Adam) on one
  pre-collated batch of the same shape.

Whichever gives fewer images per second limits a step; with workers the two overlap,
so a step runs at about the slower of the two.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import image_folder, pick, seconds, run_alone  # noqa: E402

import torch  # noqa: E402

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.data.loading import RunBatchSampler, available_cpus, training_loader  # noqa: E402
from ecaml.data.sampling import class_balanced_batches  # noqa: E402
from ecaml.train.trainer import Trainer  # noqa: E402


def pipeline_images_per_s(trainer: Trainer, workers: int, batches: int) -> float:
    """Images per second of the run's own training loader alone (``ecaml.data.loading.training_loader``: seeded
    per-image augmentation, the class-balanced sampler), over ``batches`` batches, worker start-up included."""
    labels = trainer.view.dataset.labels[trainer.train_indices]
    sampler = RunBatchSampler(labels, trainer.config.classes_per_batch, trainer.config.images_per_class, 0,
                              steps_per_epoch=trainer.plan.steps_per_epoch, start_step=0, end_step=batches)
    loader = training_loader(trainer.view, sampler, workers, torch.device("cpu"), seed=0)
    started = time.perf_counter()
    images = sum(len(batch[0]) for batch in loader)
    return images / (time.perf_counter() - started)


def model_images_per_s(trainer: Trainer, steps: int) -> float:
    labels = trainer.view.dataset.labels[trainer.train_indices]
    batch = class_balanced_batches(labels, trainer.config.classes_per_batch, trainer.config.images_per_class, 0, 0)[0]
    items = [trainer.view[int(p)] for p in batch]
    images, targets = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
    trainer.train_step(images, targets)  # warm-up
    elapsed, _ = seconds(lambda: [trainer.train_step(images, targets) for _ in range(steps)])
    return steps * len(images) / elapsed


def measure(scale: str = "full") -> dict:
    classes, per_class, size = pick(scale, (100, 200, 256), (20, 100, 256), (4, 10, 64))
    image_size = pick(scale, 224, 224, 64)
    generate_s, root = seconds(lambda: image_folder(classes, per_class, size, suffix="jpg"))
    batches, steps = pick(scale, (40, 3), (12, 1), (2, 1))
    workers = available_cpus()
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(dataset="folder", data_root=str(root), backbone="googlenet", image_size=image_size,
                             classes_per_batch=16 if classes >= 32 else classes // 2, images_per_class=4, device="cpu",
                             seed=0, ec_weight=0.0)
        trainer = Trainer(config, Path(scratch) / "run", split=None)
        single = pipeline_images_per_s(trainer, 0, batches)
        pooled = pipeline_images_per_s(trainer, workers, batches)
        model = model_images_per_s(trainer, steps)
    return {
        "images": classes * per_class, "source_px": size, "image_size": image_size, "backbone": "googlenet",
        "batch": [config.classes_per_batch, config.images_per_class], "generate_folder_s": generate_s,
        "pipeline_images_per_s_0_workers": single, "pipeline_images_per_s_workers": pooled, "workers": workers,
        "model_images_per_s": model,
        "limited_by": "input pipeline" if max(single, pooled) < model else "model",
    }


def summary(result: dict) -> list[tuple[str, str, str]]:
    return [
        ("loader: input pipeline", f"{result['pipeline_images_per_s_workers']:.0f} img/s",
         f"{result['workers']} workers ({result['pipeline_images_per_s_0_workers']:.0f} img/s with none), "
         f"{result['images']:,} JPEGs -> {result['image_size']} px"),
        ("loader: model alone", f"{result['model_images_per_s']:.0f} img/s",
         f"{result['backbone']} train step, CPU; a step is limited by the {result['limited_by']}"),
    ]


def main(argv=None) -> int:
    return run_alone(measure, summary, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
