"""The Energy Confusion term, its row-norm penalty, and the routing of its gradient.

Reference: Chen and Deng, AAAI 2019, and the authors' Caffe code. With z = W f + b
the raw embedding of the head (W, b):

    E     = mean over inter-class pairs (i, j) of 1/2 ||z_i - z_j||^2
    L_ec  = log E                                 (minimised: it confuses the metric)
    R(W)  = (0.5 / d) * sum_r (||w_r||^2 - 1)^2    (d = embedding size)

The EC branch recomputes z from the *detached* backbone feature, so its gradient
reaches only W and b ("head" routing, the reference's ``propagate_down: 0``);
``route="full"`` lets it reach the backbone too, as an ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecaml.registry import EC_PAIR_MODES as PAIR_MODES
from ecaml.registry import EC_ROUTES as ROUTES


def inter_class_pairs(
    labels: torch.Tensor,
    mode: str = "sampled",
    partners_per_anchor: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) with labels[i] != labels[j].

    ``dense``: every unordered inter-class pair once. ``sampled`` (the reference):
    for each anchor, ``partners_per_anchor`` partners drawn uniformly with
    replacement from the anchor's other-class samples, using ``generator`` so that
    a seeded run draws the same pairs.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown EC pair mode {mode!r}; choose one of {', '.join(PAIR_MODES)}")
    labels = labels.view(-1).cpu()
    different = labels[:, None] != labels[None, :]
    if mode == "dense":
        first, second = torch.triu(different, diagonal=1).nonzero(as_tuple=True)
        return first, second
    if partners_per_anchor < 1:
        raise ValueError("partners_per_anchor must be at least 1")
    anchors = torch.nonzero(different.any(dim=1), as_tuple=True)[0]
    if anchors.numel() == 0:
        return anchors, anchors
    # Zero weight on same-class entries: partners come only from other classes.
    weights = different[anchors].float()
    partners = torch.multinomial(weights, partners_per_anchor, replacement=True, generator=generator)
    return anchors.repeat_interleave(partners_per_anchor), partners.reshape(-1)


def pair_energy(raw_embeddings: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """E = mean of 1/2 ||z_i - z_j||^2 over the given pairs of raw (un-normalised) embeddings."""
    if first.numel() == 0:
        raise ValueError("Energy Confusion needs at least two classes in the batch")
    device = raw_embeddings.device
    difference = raw_embeddings[first.to(device)] - raw_embeddings[second.to(device)]
    return 0.5 * difference.pow(2).sum(dim=1).mean()


def row_norm_penalty(weight: torch.Tensor) -> torch.Tensor:
    """R(W) = (0.5 / d) * sum over the d rows of W of (||w_r||^2 - 1)^2.

    Without it, log E could be lowered simply by shrinking W towards zero.
    """
    squared_norms = weight.pow(2).sum(dim=1)
    return 0.5 * (squared_norms - 1.0).pow(2).sum() / weight.shape[0]


@dataclass
class ConfusionTerms:
    """What one EC evaluation produced; ``loss`` is what enters the objective."""

    energy: torch.Tensor
    log_energy: torch.Tensor
    row_norm: torch.Tensor
    loss: torch.Tensor


class EnergyConfusion(nn.Module):
    """lambda * log E(stopgrad f, W) + R(W), on top of any base metric loss."""

    def __init__(
        self,
        weight: float = 0.13,
        pairs: str = "sampled",
        partners_per_anchor: int = 10,
        route: str = "head",
    ):
        super().__init__()
        if pairs not in PAIR_MODES:
            raise ValueError(f"unknown EC pair mode {pairs!r}; choose one of {', '.join(PAIR_MODES)}")
        if route not in ROUTES:
            raise ValueError(f"unknown EC route {route!r}; choose one of {', '.join(ROUTES)}")
        if weight < 0:
            raise ValueError("the EC weight must be >= 0")
        self.weight = weight
        self.pairs = pairs
        self.partners_per_anchor = partners_per_anchor
        self.route = route

    def forward(
        self,
        features: torch.Tensor,
        head: nn.Linear,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> ConfusionTerms:
        # Re-running only the head on the detached feature reuses the one backbone
        # pass while cutting the backbone out of EC's gradient.
        if self.route == "head":
            features = features.detach()
        raw = head(features)
        first, second = inter_class_pairs(labels, self.pairs, self.partners_per_anchor, generator)
        energy = pair_energy(raw.float(), first, second)
        log_energy = torch.log(energy)
        row_norm = row_norm_penalty(head.weight.float())
        return ConfusionTerms(energy, log_energy, row_norm, self.weight * log_energy + row_norm)
