"""Train a few hundred steps on CUDA and report what happened.

    python scripts/gpu_check.py [--steps 300] [--backbone resnet18] [--out runs/gpu-check]

Checks the GPU path end to end: CUDA picked automatically, mixed precision,
pinned-memory loading, EC on, a run directory that loads back, and metrics. It
prints one JSON object (device, AMP dtype, steps/s, peak GPU memory, unseen
metrics) so the result can be pasted into an issue. Exits 3 with one line when
no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecaml.config import TrainConfig  # noqa: E402
from ecaml.runs import load_run  # noqa: E402
from ecaml.train import train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    parser.add_argument("--backbone", default="resnet18", help="backbone (default resnet18, random init)")
    parser.add_argument("--dataset", default="glyphs", help="built-in dataset (default glyphs)")
    parser.add_argument("--image-size", type=int, default=64, help="input size (default 64)")
    parser.add_argument("--out", default="runs/gpu-check", help="run directory (replaced if present)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device is available; this check needs a GPU", file=sys.stderr)
        return 3
    config = TrainConfig(
        dataset=args.dataset, backbone=args.backbone, image_size=args.image_size, max_steps=args.steps,
        ec_weight=0.13, eval_every=0, device="auto", num_workers=4, classes_per_batch=32, images_per_class=4,
    )
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(config, out, progress=False)
    seconds = time.perf_counter() - started
    run = load_run(out)
    steps = run.step_records()
    timed = [r["seconds"] for r in steps]
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "amp_dtype": _amp_name(),
        "steps": result.steps,
        "wall_seconds": round(seconds, 2),
        "steps_per_second_after_warmup": round((len(timed) - 20) / (timed[-1] - timed[19]), 2) if len(timed) > 40 else None,
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "first_total_loss": steps[0]["total_loss"],
        "last_total_loss": steps[-1]["total_loss"],
        "last_energy": steps[-1].get("energy"),
        "unseen_metrics": result.metrics,
        "reloaded_step": run.step,
    }
    print(json.dumps(report, indent=2))
    return 0


def _amp_name() -> str:
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


if __name__ == "__main__":
    sys.exit(main())
