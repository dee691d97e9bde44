"""Do the losses and the EC term give the same values and gradients on CUDA as on the CPU?

    python scripts/cuda_agreement.py            # prints one JSON object; exits 3 without a GPU

For every built-in loss, one pytorch-metric-learning loss and EC (both routes),
on the same random batch (16 classes x 4 images, 512-d features, 64-d head):
the relative difference of the loss value and of each gradient (features, head
weight, head bias) between CPU float32 and CUDA float32, and between CPU float32
and CUDA under bfloat16 autocast (what training uses). Random mining is switched
off (triplet keeps every violating negative, EC uses dense pairs) so that both
devices compute the same sum. float32 should agree to ~1e-5; bfloat16 to ~1e-2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecaml.confusion import EnergyConfusion
from ecaml.losses import build_loss

FEATURES, EMBEDDING, CLASSES, PER_CLASS = 512, 64, 16, 4
LOSSES = {
    "triplet": {"negatives_per_positive": 10**6},
    "npair": {},
    "binomial": {},
    "pml:MultiSimilarityLoss": {},
}


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(CLASSES * PER_CLASS, FEATURES, generator=generator)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    head = nn.Linear(FEATURES, EMBEDDING)
    with torch.no_grad():
        head.weight.copy_(torch.randn(EMBEDDING, FEATURES, generator=generator) * 0.05)
        head.bias.copy_(torch.randn(EMBEDDING, generator=generator) * 0.05)
    return features, labels, head


def value_and_grads(objective, device: str, autocast: bool) -> dict[str, torch.Tensor]:
    features, labels, head = batch()
    features = features.to(device).requires_grad_(True)
    head = head.to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
        value = objective(features, head, labels.to(device))
    value.float().backward()
    grads = {"features": features.grad, "head_weight": head.weight.grad, "head_bias": head.bias.grad}
    # EC's head route detaches the features: no gradient reaches them, on either device.
    return {"value": value.detach().float().cpu().reshape(1),
            **{part: None if grad is None else grad.float().cpu() for part, grad in grads.items()}}


def compare(a: torch.Tensor | None, b: torch.Tensor | None) -> float | str:
    if a is None or b is None:
        return "no gradient on either" if a is None and b is None else "gradient on one device only"
    if float(b.norm()) < 1e-6:  # EC's bias gradient is zero in exact arithmetic: pair differences cancel the bias
        return f"both ~0 (cpu |g| {float(b.norm()):.1e}, cuda |g| {float(a.norm()):.1e})"
    return round(relative(a, b), 7)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def objectives() -> dict:
    found = {}
    for name, params in LOSSES.items():
        loss = build_loss(name, EMBEDDING, CLASSES, params)
        found[name] = lambda f, head, y, loss=loss: loss.to(f.device)(head(f), y)
    for route in ("head", "full"):
        term = EnergyConfusion(weight=0.13, pairs="dense", route=route)
        found[f"ec:{route}"] = lambda f, head, y, term=term: term(f, head, y).loss
    return found


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA device is available; this check compares CPU and CUDA", file=sys.stderr)
        return 3
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": f"{CLASSES} x {PER_CLASS}"}
    for name, objective in objectives().items():
        cpu = value_and_grads(objective, "cpu", autocast=False)
        rows = {}
        for label, autocast in (("cuda_float32", False), ("cuda_bfloat16_autocast", True)):
            cuda = value_and_grads(objective, "cuda", autocast)
            rows[label] = {part: compare(cuda[part], cpu[part]) for part in cpu}
        report[name] = {"cpu_value": round(float(cpu["value"]), 6), **rows}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
