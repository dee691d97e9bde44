"""Train the paper-cub preset for a few hundred steps on a generated CUB tree and report speed as JSON.

    python scripts/gpu_check.py [--steps 300] [--image-size 224] [--out runs/gpu-check]
    python scripts/gpu_check.py --cpu-ok --steps 2 --image-size 64 --classes 8 --images-per-class 6 \
        --classes-per-batch 4          # a smoke run on a machine without a GPU

What it checks, end to end: CUDA picked automatically, mixed precision (bfloat16
where supported), pinned-memory loading with workers, EC on (lambda 0.13, head
routing), GoogLeNet with 65 x 2 batches, a run directory that loads back. The
data is a generated tree in the CUB-200-2011 layout (``CUB_200_2011/images.txt,
image_class_labels.txt, classes.txt, train_test_split.txt, images/...``) of
random JPEGs; the "ImageNet" weights are random values saved in torchvision's
GoogLeNet format (speed does not depend on their values; nothing is downloaded).

It prints one JSON object: device, AMP dtype, steps/s and images/s of the whole
run (after warm-up), peak GPU memory, and the two halves of a step measured
apart: images/s of the input pipeline alone (the run's own loader) and of the
model alone (forward, losses, backward, optimiser step on a batch already on the
device). Whichever is lower limits training. Exits 3 with one line when no CUDA
device is present, unless --cpu-ok.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecaml.config import TrainConfig, settings
from ecaml.data import DATASETS
from ecaml.data.loading import RunBatchSampler, training_loader
from ecaml.runs import load_run
from ecaml.train.launch import train
from ecaml.train.trainer import Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of the timed run (default 300)")
    parser.add_argument("--image-size", type=int, default=224, help="crop size (default 224; the paper: 227)")
    parser.add_argument("--classes", type=int, default=200, help="classes of the generated tree (default 200)")
    parser.add_argument("--images-per-class", type=int, default=30, help="images a class (default 30)")
    parser.add_argument("--classes-per-batch", type=int, default=None, help="m (default: the preset's 65)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: ecaml's default)")
    parser.add_argument("--timed-batches", type=int, default=30, help="batches for the loader/model-alone timings")
    parser.add_argument("--out", default="runs/gpu-check", help="folder for the data and the run (run replaced)")
    parser.add_argument("--cpu-ok", action="store_true", help="run on the CPU when there is no GPU (a smoke test)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_ok:
        print("error: no CUDA device is available; this check needs a GPU (or --cpu-ok for a smoke run)", file=sys.stderr)
        return 3
    out = Path(args.out)
    tree = make_cub_tree(out / "data" / "CUB_200_2011", args.classes, args.images_per_class)
    weights = random_googlenet_weights(out / "googlenet-random-weights.pth")
    config, dataset_note = check_config(args, tree, weights, cuda)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(config, run_dir, progress=False)
    wall = time.perf_counter() - started
    run = load_run(run_dir)
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "amp_dtype": amp_name(cuda),
        "dataset": dataset_note,
        "batch": f"{config.classes_per_batch} x {config.images_per_class}",
        "image_size": config.image_size,
        "steps": result.steps,
        "wall_seconds_with_setup_and_final_evaluation": round(wall, 2),
        **run_throughput(run.step_records(), config),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        **halves(config, out / "scratch", args.timed_batches),
        "unseen_metrics": result.metrics,
        "reloaded_step": run.step,
    }
    print(json.dumps(report, indent=2))
    return 0


def check_config(args, tree: Path, weights: Path, cuda: bool) -> tuple[TrainConfig, str]:
    flags = {"preset": "paper-cub", "data_root": str(tree), "weights_path": str(weights), "image_size": args.image_size,
             "max_steps": args.steps, "eval_every": 0, "checkpoint_every": 10_000, "device": "cuda" if cuda else "cpu"}
    if args.classes_per_batch:
        flags["classes_per_batch"] = args.classes_per_batch
    if args.workers is not None:
        flags["num_workers"] = args.workers
    note = "cub (generated CUB_200_2011 tree)"
    if "cub" not in DATASETS:
        # Until the CUB loader is merged: the same images through the class-folder reader.
        flags.update(dataset="folder", data_root=str(tree / "images"))
        note = "folder over the generated tree's images/ (this ecaml has no cub loader)"
    return TrainConfig.from_dict(settings({}, flags)).resolved(), note


def make_cub_tree(root: Path, classes: int, per_class: int) -> Path:
    """A CUB-200-2011 layout of random JPEGs (kept between calls: generation is the slow part)."""
    from PIL import Image

    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == f"{classes} {per_class}":
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    lines = {"images.txt": [], "image_class_labels.txt": [], "classes.txt": [], "train_test_split.txt": []}
    image_id = 0
    for class_id in range(1, classes + 1):
        folder_name = f"{class_id:03d}.Generated_bird_{class_id}"
        (root / "images" / folder_name).mkdir(parents=True)
        lines["classes.txt"].append(f"{class_id} {folder_name}")
        base = rng.integers(0, 255, size=3)
        for number in range(per_class):
            image_id += 1
            height, width = rng.integers(240, 400, size=2)
            noise = rng.integers(-40, 40, size=(height // 8, width // 8, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
            relative = f"{folder_name}/Generated_{class_id}_{number:04d}.jpg"
            Image.fromarray(pixels).save(root / "images" / relative, quality=90)
            lines["images.txt"].append(f"{image_id} {relative}")
            lines["image_class_labels.txt"].append(f"{image_id} {class_id}")
            lines["train_test_split.txt"].append(f"{image_id} {number % 2}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    marker.write_text(f"{classes} {per_class}")
    return root


def random_googlenet_weights(path: Path) -> Path:
    """GoogLeNet weights in torchvision's ImageNet file format, random values: the real ones are not downloaded."""
    if not path.is_file():
        from torchvision.models import googlenet

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(googlenet(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    return path


def run_throughput(records: list[dict], config: TrainConfig) -> dict:
    """Steps/s and images/s between the first and last history lines past the first tenth of the run."""
    batch = config.classes_per_batch * config.images_per_class
    timed = [r for r in records if r["step"] > max(1, records[-1]["step"] // 10)] if records else []
    if len(timed) < 2:
        return {"steps_per_second": None, "images_per_second": None}
    rate = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["seconds"] - timed[0]["seconds"])
    return {"steps_per_second": round(rate, 3), "images_per_second": round(rate * batch, 1)}


def halves(config: TrainConfig, scratch: Path, batches: int) -> dict:
    """Images/s of the input pipeline alone and of the model alone, each over ``batches`` batches."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    trainer = Trainer(config, scratch)
    sampler = RunBatchSampler(trainer.train_labels, config.classes_per_batch, config.images_per_class, config.seed,
                              trainer.plan.steps_per_epoch, 0, batches + 2)
    loader = iter(training_loader(trainer.view, sampler, trainer.num_workers, trainer.device, config.seed))
    images, labels, _ = next(loader)  # the workers' start-up is not the pipeline's rate
    next(loader)
    started = time.perf_counter()
    count = 0
    for batch_images, _, _ in loader:
        count += len(batch_images)
    loader_rate = count / (time.perf_counter() - started)
    del loader
    images = images.to(trainer.device)
    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        trainer.train_step(images, labels)
    synchronise(trainer.device)
    started = time.perf_counter()
    for _ in range(batches):
        trainer.train_step(images, labels)
    synchronise(trainer.device)
    model_rate = batches * len(images) / (time.perf_counter() - started)
    return {
        "loader_workers": trainer.num_workers,
        "loader_alone_images_per_second": round(loader_rate, 1),
        "model_alone_images_per_second": round(model_rate, 1),
        "limited_by": "loader" if loader_rate < model_rate else "model",
    }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_name(cuda: bool) -> str | None:
    if not cuda:
        return None
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


if __name__ == "__main__":
    sys.exit(main())
