"""Base metric losses: their values, and that each trains with and without Energy Confusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecaml.losses import BinomialDevianceLoss, NPairLoss, TripletLoss, build_loss
from ecaml.runs import load_run, read_history
from tests.conftest import train_tiny


def numpy_binomial(z: np.ndarray, labels: np.ndarray, alpha=2.0, beta=0.5, cost=25.0) -> float:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarity = unit @ unit.T
    positive, negative = [], []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            if labels[i] == labels[j]:
                positive.append(np.log1p(np.exp(-alpha * (similarity[i, j] - beta))))
            else:
                negative.append(np.log1p(np.exp(alpha * cost * (similarity[i, j] - beta))))
    return float(np.mean(positive) + np.mean(negative))


def test_binomial_deviance_matches_a_direct_computation():
    z = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    value = BinomialDevianceLoss()(torch.tensor(z), torch.tensor(labels)).item()
    assert value == pytest.approx(numpy_binomial(z, labels), rel=1e-4)


def separated_and_mixed_batches():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3)[labels]
    separated = centres + 0.01 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    mixed = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    return separated, mixed, labels


@pytest.mark.parametrize("loss", [BinomialDevianceLoss(), TripletLoss(), NPairLoss()])
def test_each_loss_prefers_separated_classes(loss):
    separated, mixed, labels = separated_and_mixed_batches()
    assert loss(separated, labels).item() < loss(mixed, labels).item()


def test_triplet_loss_is_zero_when_every_margin_holds():
    separated, _, labels = separated_and_mixed_batches()
    assert TripletLoss(margin=0.1)(separated, labels).item() == 0.0


def test_triplet_mining_takes_at_most_the_cap():
    loss = TripletLoss(negatives_per_positive=2)
    violating = torch.ones(3, 10, dtype=torch.bool)
    distances = torch.arange(30, dtype=torch.float32).reshape(3, 10)
    picked = loss._mine(distances, violating)
    assert picked.sum(dim=1).tolist() == [2, 2, 2]
    assert picked[:, 0].all(), "the hardest (closest) negative must always be among those mined"


def test_losses_keep_the_graph_for_a_batch_with_one_class():
    embeddings = torch.randn(4, 3, requires_grad=True)
    for loss in (BinomialDevianceLoss(), TripletLoss(), NPairLoss()):
        value = loss(embeddings, torch.zeros(4, dtype=torch.long))
        value.backward()
        assert value.item() == 0.0


def test_unknown_losses_and_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("nope", 8, 3)
    with pytest.raises(ValueError, match="no parameter"):
        build_loss("triplet", 8, 3, {"marginn": 0.2})
    with pytest.raises(ValueError, match="no loss called"):
        build_loss("pml:NotALoss", 8, 3)


def test_pml_losses_with_their_own_parameters_get_num_classes_and_size():
    loss = build_loss("pml:ProxyAnchorLoss", 16, 5)
    assert sum(p.numel() for p in loss.parameters()) == 5 * 16


@pytest.mark.parametrize("loss", ["binomial", "triplet", "npair", "pml:MultiSimilarityLoss"])
@pytest.mark.parametrize("ec_weight", [0.0, 0.5])
def test_each_loss_trains_with_and_without_ec(tmp_path, loss, ec_weight):
    result = train_tiny(tmp_path / "run", loss=loss, ec_weight=ec_weight, max_steps=4)
    steps = [r for r in read_history(result.run_dir) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(r["total_loss"]) for r in steps)
    assert all(np.isfinite(r["energy"]) and r["energy"] > 0 for r in steps), "energy is logged with or without EC"
    expected = steps[0]["metric_loss"] + (ec_weight * steps[0]["log_energy"] + steps[0]["row_norm"] if ec_weight else 0)
    assert steps[0]["total_loss"] == pytest.approx(expected, rel=1e-5)
    run = load_run(result.run_dir)
    initial = train_tiny(tmp_path / "zero", loss=loss, ec_weight=ec_weight, max_steps=1)
    assert not torch.equal(run.model.head.weight, load_run(initial.run_dir).model.head.weight)
    assert set(result.metrics) >= {"recall@1", "nmi", "map@r", "r_precision"}
