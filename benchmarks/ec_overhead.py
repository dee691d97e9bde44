#!/usr/bin/env python
"""What Energy Confusion costs per training step: EC off vs EC on, side by side in one process.

    python benchmarks/ec_overhead.py                 # smallcnn on glyphs batches (16 classes x 4 images), CPU
    python benchmarks/ec_overhead.py --rounds 30 --json out.json

(``benchmarks/run.py`` calls ``measure``: smallcnn EC off vs on, and GoogLeNet at 227 px with
65 x 2 batches for a few CPU steps.)

Every variant is the library's own ``Trainer.train_step`` (forward, metric loss,
EC, backward, Adam update) on the same pre-loaded glyphs batches, so data
loading is left out and only the step's compute is timed:

* ``off``:        ec_weight 0, the baseline
* ``sampled``:    EC on, 10 random inter-class partners per anchor (the reference)
* ``dense``:      EC on, all inter-class pairs of the batch
* ``two-pass``:   for contrast only, EC on (sampled) with the feature recomputed by a
                  second, gradient-free backbone pass instead of reusing the one
                  pass, i.e. what EC would cost if it did not share the backbone pass.

The variants are timed in interleaved rounds (the order rotates each round), so
a neighbour process slowing the machine slows them alike; the reported ratio is
the median over rounds of (variant time / off time) within a round. Memory: on a
GPU the peak allocated memory of a step; on the CPU the bytes allocated during a
step (torch profiler), which bounds the extra memory EC needs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import common  # noqa: E402, F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.data.sampling import class_balanced_batches  # noqa: E402
from ecaml.eval.evaluate import split_for  # noqa: E402
from ecaml.train.trainer import Trainer  # noqa: E402

VARIANTS = {
    "off": {"ec_weight": 0.0},
    "sampled": {"ec_weight": 0.13, "ec_pairs": "sampled"},
    "dense": {"ec_weight": 0.13, "ec_pairs": "dense"},
    "two-pass": {"ec_weight": 0.13, "ec_pairs": "sampled"},
}


class TwoPassTrainer(Trainer):
    """EC computed on a second (no-grad) backbone pass: the cost the one-pass design avoids."""

    def compute_losses(self, images, labels):
        features = self.model.features(images)
        terms = {"metric_loss": self.metric_loss(self.model.head(features), labels)}
        with torch.no_grad():
            again = self.model.features(images)
        confusion = self.confusion(again, self.model.head, labels, self.pair_generator)
        terms.update(energy=confusion.energy, log_energy=confusion.log_energy, row_norm=confusion.row_norm)
        terms["total_loss"] = terms["metric_loss"] + confusion.loss
        return terms


def make_batches(trainer: Trainer, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` class-balanced training batches (with the training augmentation), collated once."""
    labels = trainer.view.dataset.labels[trainer.train_indices]
    positions: list[np.ndarray] = []
    epoch = 0
    while len(positions) < count:
        positions += class_balanced_batches(labels, trainer.config.classes_per_batch, trainer.config.images_per_class,
                                            seed, epoch)
        epoch += 1
    batches = []
    for batch in positions[:count]:
        items = [trainer.view[int(p)] for p in batch]
        images = torch.stack([i[0] for i in items]).to(trainer.device)
        targets = torch.stack([i[1] for i in items]).to(trainer.device)
        batches.append((images, targets))
    return batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, batches, steps: int, offset: int) -> float:
    """Seconds per step over ``steps`` steps."""
    sync(trainer.device)
    started = time.perf_counter()
    for i in range(steps):
        images, labels = batches[(offset + i) % len(batches)]
        trainer.train_step(images, labels)
    sync(trainer.device)
    return (time.perf_counter() - started) / steps


def step_memory(trainer: Trainer, batch) -> dict[str, float]:
    images, labels = batch
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
        before = torch.cuda.memory_allocated(trainer.device)
        trainer.train_step(images, labels)
        torch.cuda.synchronize(trainer.device)
        return {"peak_bytes_above_resident": float(torch.cuda.max_memory_allocated(trainer.device) - before)}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step(images, labels)
    allocated = sum(e.self_cpu_memory_usage for e in prof.key_averages() if e.self_cpu_memory_usage > 0)
    return {"bytes_allocated_per_step": float(allocated)}


def build_trainers(names, scratch: Path, split=None, **config_values) -> dict[str, Trainer]:
    """One Trainer per variant in ``names``, on one shared split, writing under ``scratch``."""
    trainers: dict[str, Trainer] = {}
    for name in names:
        config = TrainConfig(seed=0, **config_values, **VARIANTS[name])
        split = split or split_for(config.resolved())
        cls = TwoPassTrainer if name == "two-pass" else Trainer
        trainers[name] = cls(config, scratch / name, split=split)
    return trainers


def interleaved_times(trainers: dict[str, Trainer], batches, steps: int, rounds: int,
                      warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round; the order rotates each round."""
    for trainer in trainers.values():
        time_steps(trainer, batches, warmup, 0)
    names = list(trainers)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            per_round[name].append(time_steps(trainers[name], batches, steps, r * steps))
    return per_round


def ratio_summary(per_round: dict[str, list[float]]) -> dict[str, dict]:
    """Median ms/step and median (variant / off) ratio within a round, per variant."""
    result = {}
    for name, times in per_round.items():
        ratios = [t / o for t, o in zip(times, per_round["off"])]
        q1, q3 = np.percentile(ratios, [25, 75])
        result[name] = {"ms_per_step_median": 1000 * statistics.median(times),
                        "ms_per_step_all": [1000 * t for t in times],
                        "ratio_to_off_median": float(statistics.median(ratios)),
                        "ratio_to_off_iqr": [float(q1), float(q3)]}
    return result


def measure(scale: str = "full") -> dict:
    """For the suite: EC on/off step time of smallcnn (glyphs batches) and of GoogLeNet at 227 px, 65 x 2 batches.

    GoogLeNet needs 65 seen classes, more than the glyphs have: its batches come from a
    generated folder of 140 classes (small images, resized to 227 px by the transform).
    """
    from common import image_folder, pick

    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        small = build_trainers(("off", "sampled"), Path(scratch) / "smallcnn", dataset="glyphs", loss="binomial",
                               backbone="smallcnn", device="cpu")
        batches = make_batches(small["off"], 16, seed=0)
        steps, rounds = pick(scale, (10, 9), (5, 5), (2, 2))
        result["smallcnn"] = {"batch_shape": list(batches[0][0].shape),
                              **ratio_summary(interleaved_times(small, batches, steps, rounds, warmup=3))}
        size, classes_per_batch = pick(scale, (227, 65), (227, 65), (64, 8))
        root = image_folder(classes=140, per_class=4, size=48)
        big = build_trainers(("off", "sampled"), Path(scratch) / "googlenet", dataset="folder", data_root=str(root),
                             loss="binomial", backbone="googlenet", image_size=size,
                             classes_per_batch=classes_per_batch, images_per_class=2, device="cpu")
        batches = make_batches(big["off"], 2, seed=0)
        rounds = pick(scale, 3, 1, 1)
        result["googlenet"] = {"batch_shape": list(batches[0][0].shape),
                               **ratio_summary(interleaved_times(big, batches, 1, rounds, warmup=1))}
    return result


def summary(result: dict) -> list[tuple[str, str, str]]:
    rows = []
    for backbone, entry in result.items():
        shape = "x".join(str(n) for n in entry["batch_shape"])
        rows.append((f"EC overhead: {backbone}", f"{entry['sampled']['ratio_to_off_median']:.3f}x",
                     f"step time EC on / off, batch {shape}, CPU: {entry['off']['ms_per_step_median']:.0f} ms vs "
                     f"{entry['sampled']['ms_per_step_median']:.0f} ms"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="glyphs", choices=("glyphs", "digits"), help="batches of this dataset (default glyphs)")
    parser.add_argument("--loss", default="binomial", help="base metric loss (default binomial)")
    parser.add_argument("--backbone", default="smallcnn", help="backbone (default smallcnn)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu, 1 thread as in training)")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round (default 10)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (default 5)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        trainers = build_trainers(VARIANTS, Path(scratch), dataset=args.dataset, loss=args.loss,
                                  backbone=args.backbone, device=args.device)
        first = trainers["off"]
        batches = make_batches(first, 32, seed=0)
        batch_shape = tuple(batches[0][0].shape)
        per_round = interleaved_times(trainers, batches, args.steps, args.rounds, args.warmup)
        memory = {name: step_memory(trainer, batches[0]) for name, trainer in trainers.items()}

    results = {
        "command": "python benchmarks/ec_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": args.dataset, "loss": args.loss, "backbone": args.backbone, "device": str(first.device),
        "torch_threads": torch.get_num_threads(), "batch_shape": list(batch_shape),
        "embedding_dim": first.config.embedding_dim, "steps_per_round": args.steps, "rounds": args.rounds,
        "torch": torch.__version__, "platform": platform.platform(), "variants": ratio_summary(per_round),
    }
    print(f"{args.backbone} on {args.dataset} batches {batch_shape}, loss {args.loss}, device {first.device}, "
          f"{torch.get_num_threads()} thread(s); {args.rounds} interleaved rounds x {args.steps} steps per variant")
    memory_key = next(iter(memory["off"]))
    print(f"{'variant':<10} {'ms/step (median)':>17} {'ratio to off':>13} {'ratio IQR':>16} {memory_key:>28} {'ratio':>7}")
    for name, entry in results["variants"].items():
        mem = memory[name][memory_key]
        mem_ratio = mem / memory["off"][memory_key] if memory["off"][memory_key] else float("nan")
        entry.update(memory[name], memory_ratio_to_off=mem_ratio)
        q1, q3 = entry["ratio_to_off_iqr"]
        print(f"{name:<10} {entry['ms_per_step_median']:>17.2f} {entry['ratio_to_off_median']:>13.3f} "
              f"{f'[{q1:.3f}, {q3:.3f}]':>16} {mem / 1e6:>25.2f} MB {mem_ratio:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
