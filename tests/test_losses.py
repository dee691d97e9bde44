"""Base metric losses: their values, and that each trains with and without Energy Confusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecaml.losses import BinomialDevianceLoss, NPairLoss, TripletLoss, build_loss
from ecaml.runs import load_run
from ecaml.store.run_files import read_history
from tests.conftest import train_tiny
from tests.npair_reference import reference_loss_and_gradient


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


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def loop_triplet(z: np.ndarray, labels: np.ndarray, margin: float) -> float:
    """Mean hinge over every (anchor, positive, negative) that violates the margin, by plain loops."""
    unit = unit_rows(z.astype(np.float64))
    hinges = []
    for a in range(len(z)):
        for p in range(len(z)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(z)):
                if labels[n] == labels[a]:
                    continue
                hinge = np.linalg.norm(unit[a] - unit[p]) - np.linalg.norm(unit[a] - unit[n]) + margin
                if hinge > 0:
                    hinges.append(hinge)
    return float(np.mean(hinges)) if hinges else 0.0


# (classes, images of each class): pairs as in the paper's N-pair batches, larger classes, uneven classes
BATCH_SHAPES = [(4, [2] * 4), (3, [3] * 3), (5, [4] * 5), (3, [1, 2, 5]), (6, [2, 3, 2, 1, 4, 2])]


def batch(seed: int, sizes: list[int], dim: int = 6):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    return rng.normal(size=(len(labels), dim)).astype(np.float32), labels


@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=[str(s[1]) for s in BATCH_SHAPES])
def test_triplet_matches_a_loop_over_every_triplet(shape):
    for seed in range(10):
        z, labels = batch(seed, shape[1])
        for margin in (0.1, 0.5):
            # A cap above the number of negatives: every violating triplet is mined, nothing is random.
            value = TripletLoss(margin=margin, negatives_per_positive=len(z))(torch.tensor(z), torch.tensor(labels))
            assert value.item() == pytest.approx(loop_triplet(z, labels, margin), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=[str(s[1]) for s in BATCH_SHAPES])
def test_npair_loss_and_gradient_match_the_authors_npair_cpp(shape):
    """Value and d loss / d z against a port of npair.cpp behind its Normalization and Scale-10 layers."""
    for seed in range(10):
        z, labels = batch(seed, shape[1])
        expected_loss, expected_gradient = reference_loss_and_gradient(z, labels)
        embeddings = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = NPairLoss()(embeddings, torch.tensor(labels))
        value.backward()
        assert value.item() == pytest.approx(expected_loss, rel=1e-4)
        np.testing.assert_allclose(embeddings.grad.numpy(), expected_gradient, rtol=1e-3, atol=1e-6)


def test_npair_logits_are_a_hundred_times_the_cosine():
    """Two classes of two: loss = log(1 + e^{100 (cos(n, p) - cos(a, p))}) per sample, + 5e-4 * 100 / 2."""
    z = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    labels = np.array([0, 0, 1, 1])
    unit = unit_rows(z)
    terms = []
    for a, p in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [n for n in range(4) if labels[n] != labels[a]]
        terms.append(np.log1p(sum(np.exp(100 * (unit[n] @ unit[p] - unit[a] @ unit[p])) for n in others)) + 0.025)
    value = NPairLoss()(torch.tensor(z), torch.tensor(labels)).item()
    assert value == pytest.approx(float(np.mean(terms)), rel=1e-6)


def test_npair_regulariser_has_no_gradient_on_the_raw_embedding():
    """On the scaled unit vector the l2 term is a constant: the gradient is the one without it."""
    z, labels = batch(3, [3, 3, 2])
    gradients = []
    for l2_weight in (5e-4, 0.0):
        embeddings = torch.tensor(z, requires_grad=True)
        NPairLoss(l2_weight=l2_weight)(embeddings, torch.tensor(labels)).backward()
        gradients.append(embeddings.grad)
    torch.testing.assert_close(gradients[0], gradients[1])


def test_losses_have_finite_gradients_on_a_one_class_batch():
    for loss in (BinomialDevianceLoss(), TripletLoss(), NPairLoss()):
        embeddings = torch.randn(4, 3, requires_grad=True)
        loss(embeddings, torch.zeros(4, dtype=torch.long)).backward()
        assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


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
