"""Energy Confusion: the numbers it computes and the parameters its gradient reaches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecaml.config import TrainConfig
from ecaml.confusion import EnergyConfusion, inter_class_pairs, pair_energy, row_norm_penalty
from ecaml.train.trainer import Trainer


def numpy_energy(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean of 1/2 ||z_i - z_j||^2 over all unordered inter-class pairs, computed directly."""
    values = [
        0.5 * np.sum((z[i] - z[j]) ** 2)
        for i in range(len(z))
        for j in range(i + 1, len(z))
        if labels[i] != labels[j]
    ]
    return float(np.mean(values))


def numpy_row_norm(weight: np.ndarray) -> float:
    return float(0.5 / weight.shape[0] * np.sum((np.sum(weight**2, axis=1) - 1.0) ** 2))


def test_dense_energy_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
    first, second = inter_class_pairs(torch.tensor(labels), mode="dense")
    energy = pair_energy(torch.tensor(z), first, second)
    assert energy.item() == pytest.approx(numpy_energy(z, labels), rel=1e-5)


def test_row_norm_penalty_matches_numpy_and_vanishes_on_unit_rows():
    weight = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    assert row_norm_penalty(torch.tensor(weight)).item() == pytest.approx(numpy_row_norm(weight), rel=1e-5)
    unit_rows = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    assert row_norm_penalty(torch.tensor(unit_rows)).item() == pytest.approx(0.0, abs=1e-6)


def test_sampled_pairs_are_inter_class_seeded_and_k_per_anchor():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    first, second = inter_class_pairs(labels, "sampled", 10, torch.Generator().manual_seed(3))
    assert len(first) == 7 * 10
    assert torch.all(labels[first] != labels[second])
    assert torch.equal(torch.bincount(first), torch.full((7,), 10))
    again = inter_class_pairs(labels, "sampled", 10, torch.Generator().manual_seed(3))
    assert torch.equal(second, again[1])
    other = inter_class_pairs(labels, "sampled", 10, torch.Generator().manual_seed(4))
    assert not torch.equal(second, other[1])


def test_sampled_energy_is_an_estimate_of_the_dense_energy():
    rng = np.random.default_rng(2)
    z = torch.tensor(rng.normal(size=(40, 8)).astype(np.float32))
    labels = torch.tensor(np.repeat(np.arange(8), 5))
    dense = pair_energy(z, *inter_class_pairs(labels, "dense"))
    sampled = pair_energy(z, *inter_class_pairs(labels, "sampled", 400, torch.Generator().manual_seed(0)))
    assert sampled.item() == pytest.approx(dense.item(), rel=0.05)


def test_confusion_loss_is_weighted_log_energy_plus_row_norm():
    head = torch.nn.Linear(4, 3)
    features = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    terms = EnergyConfusion(weight=0.5, pairs="dense")(features, head, labels)
    raw = head(features).detach().numpy()
    expected_energy = numpy_energy(raw, labels.numpy())
    assert terms.energy.item() == pytest.approx(expected_energy, rel=1e-5)
    expected = 0.5 * np.log(expected_energy) + numpy_row_norm(head.weight.detach().numpy())
    assert terms.loss.item() == pytest.approx(expected, rel=1e-5)


def test_one_class_batch_is_refused_with_a_message():
    with pytest.raises(ValueError, match="at least two classes"):
        EnergyConfusion(pairs="dense")(torch.randn(4, 3), torch.nn.Linear(3, 2), torch.zeros(4, dtype=torch.long))


def gradients_after_one_backward(tmp_path, ec_weight: float, route: str = "head"):
    """Backbone and head gradients of one real training batch under the given EC setting."""
    config = TrainConfig(dataset="digits", ec_weight=ec_weight, ec_route=route, ec_pairs="dense", max_steps=1, seed=0)
    trainer = Trainer(config, tmp_path)
    torch.manual_seed(0)
    items = [trainer.view[position] for position in range(0, len(trainer.view), len(trainer.view) // 40)][:40]
    images = torch.stack([image for image, _, _ in items])
    labels = torch.stack([label for _, label, _ in items])
    assert len(labels.unique()) > 1
    trainer.model.zero_grad()
    trainer.compute_losses(images, labels)["total_loss"].backward()
    backbone = {n: p.grad.clone() for n, p in trainer.model.backbone.named_parameters()}
    head = {n: p.grad.clone() for n, p in trainer.model.head.named_parameters()}
    return backbone, head


def _all_close(first: dict, second: dict) -> bool:
    return all(torch.allclose(first[name], second[name], atol=1e-7, rtol=1e-5) for name in first)


def test_head_routing_keeps_ec_out_of_the_backbone(tmp_path):
    metric_only_backbone, metric_only_head = gradients_after_one_backward(tmp_path / "a", ec_weight=0.0)
    ec_backbone, ec_head = gradients_after_one_backward(tmp_path / "b", ec_weight=1.0)
    assert _all_close(ec_backbone, metric_only_backbone), "EC gradients leaked into the backbone"
    assert not _all_close(ec_head, metric_only_head), "EC did not change the head's gradients"


def test_full_routing_reaches_the_backbone(tmp_path):
    metric_only_backbone, _ = gradients_after_one_backward(tmp_path / "a", ec_weight=0.0)
    full_backbone, _ = gradients_after_one_backward(tmp_path / "b", ec_weight=1.0, route="full")
    assert not _all_close(full_backbone, metric_only_backbone)


def test_ec_reuses_the_single_backbone_pass(tmp_path):
    trainer = Trainer(TrainConfig(dataset="digits", ec_weight=0.5, max_steps=1), tmp_path)
    calls = []
    trainer.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    images = torch.stack([trainer.view[i][0] for i in range(12)])
    labels = torch.tensor([trainer.view[i][1].item() for i in range(12)])
    trainer.compute_losses(images, labels)
    assert len(calls) == 1
