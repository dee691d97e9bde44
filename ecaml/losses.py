"""Base metric losses and their lookup by name.

Every loss takes ``(embeddings, labels)`` with *raw* embeddings and normalises
what it needs itself, so the Energy Confusion term (which works on raw
embeddings) can sit on top of any of them. Defaults are the settings of the
ECAML authors' reference code. Any loss of pytorch-metric-learning is reachable
as ``pml:ClassName``.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from ecaml.registry import PML_PREFIX


def _cosine_similarities(embeddings: torch.Tensor) -> torch.Tensor:
    normalised = F.normalize(embeddings.float(), dim=1)
    return normalised @ normalised.t()


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) masks over ordered pairs, self-pairs excluded."""
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def _zero_with_graph(embeddings: torch.Tensor) -> torch.Tensor:
    # A batch with nothing to learn from still returns a tensor attached to the
    # graph, so backward() and mixed-precision scaling work unchanged.
    return embeddings.sum() * 0.0


class BinomialDevianceLoss(nn.Module):
    """log(1 + exp(-alpha (s - beta) m)) over all pairs i < j, m = 1 or -C.

    Positive and negative pairs are each averaged over their own count, as in
    the reference (each pair weighted 1/#positive or 1/#negative).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, negative_cost: float = 25.0):
        super().__init__()
        self.alpha, self.beta, self.negative_cost = alpha, beta, negative_cost

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        similarity = _cosine_similarities(embeddings)
        positive, negative = _pair_masks(labels)
        upper = torch.triu(torch.ones_like(positive), diagonal=1)
        positive, negative = positive & upper, negative & upper
        shifted = similarity - self.beta
        # Masked means rather than boolean indexing: no host synchronisation on a GPU.
        positive_loss = _masked_mean(F.softplus(-self.alpha * shifted), positive)
        negative_loss = _masked_mean(F.softplus(self.alpha * self.negative_cost * shifted), negative)
        has_both = positive.any() & negative.any()
        return torch.where(has_both, positive_loss + negative_loss, _zero_with_graph(embeddings))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` holds (0 where it never does), without leaving the device."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


class TripletLoss(nn.Module):
    """Margin triplet loss on L2-normalised embeddings, reference mining.

    For every anchor-positive pair, negatives that violate the margin are mined:
    half the hardest and half at random among the rest, at most
    ``negatives_per_positive`` of them.
    """

    def __init__(self, margin: float = 0.1, negatives_per_positive: int = 120):
        super().__init__()
        self.margin, self.negatives_per_positive = margin, negatives_per_positive

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normalised = F.normalize(embeddings.float(), dim=1)
        distance = torch.cdist(normalised, normalised).clamp_min(0)
        positive, negative = _pair_masks(labels)
        anchor_index, positive_index = positive.nonzero(as_tuple=True)
        if anchor_index.numel() == 0:
            return _zero_with_graph(embeddings)
        anchor_positive = distance[anchor_index, positive_index]
        anchor_negative = distance[anchor_index]
        violating = negative[anchor_index] & (anchor_negative < anchor_positive[:, None] + self.margin)
        selected = self._mine(anchor_negative, violating)
        if not selected.any():
            return _zero_with_graph(embeddings)
        hinge = F.relu(anchor_positive[:, None] - anchor_negative + self.margin)
        return hinge[selected].mean()

    def _mine(self, anchor_negative: torch.Tensor, violating: torch.Tensor) -> torch.Tensor:
        take = violating.sum(dim=1).clamp(max=self.negatives_per_positive)
        hardest_count = torch.div(take + 1, 2, rounding_mode="floor")
        hard_rank = _rank_ascending(torch.where(violating, anchor_negative, torch.inf))
        hard = violating & (hard_rank < hardest_count[:, None])
        rest = violating & ~hard
        random_keys = torch.rand(rest.shape, device=rest.device)
        random_rank = _rank_ascending(torch.where(rest, random_keys, torch.inf))
        random_pick = rest & (random_rank < (take - hardest_count)[:, None])
        return hard | random_pick


def _rank_ascending(values: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row (0 = smallest)."""
    order = values.detach().argsort(dim=1)
    ranks = torch.empty_like(order)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


class NPairLoss(nn.Module):
    """N-pair loss as the authors' ``npair.cpp`` computes it (k = 1), behind their fixed Scale layer.

    The reference (``train_confusion.prototxt``) L2-normalises the embedding and multiplies it by a
    constant 10 before ``NpairLoss``, so with x = ``scale`` * z / ||z||: for each sample i the positive is
    its nearest same-class sample p (``kcenter: 1``; ties to the lower index), and
    loss_i = -log(e^{x_i.x_p} / (e^{x_i.x_p} + sum_n e^{x_n.x_p})) over every other-class sample n
    (``kcenter_n: 128``, all of them in the reference's 65 x 2 batch). The logits are dot products of the
    scaled vectors: ``scale``^2 * cos = 100 cos. Like the reference, -log p is capped at -log 1e-20 in value
    (its gradient is not), the mean is over the whole batch (samples without a positive or a negative add 0),
    and ``l2_weight`` * ||x_i||^2 / 2 is added on the *scaled* x: a constant (scale^2 * l2_weight / 2), as
    the normalisation before it removes its gradient.
    """

    def __init__(self, scale: float = 10.0, l2_weight: float = 5e-4):
        super().__init__()
        self.scale, self.l2_weight = scale, l2_weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scaled = self.scale * F.normalize(embeddings.float(), dim=1)
        dots = scaled @ scaled.t()
        positive, negative = _pair_masks(labels)
        # Equal norms: the nearest same-class sample is the one with the largest dot product (first on ties).
        partner = torch.where(positive, dots.detach(), -torch.inf).argmax(dim=1)
        centre = scaled[partner]
        positive_logit = (scaled * centre).sum(dim=1)
        has_negative = negative.any(dim=1)
        # Rows without negatives get finite stand-ins: a logsumexp of only -inf has a NaN gradient.
        negative_logits = torch.where(negative, centre @ scaled.t(), torch.where(has_negative[:, None], -torch.inf, 0.0))
        # -log(e^p / (e^p + sum_n e^n)) = softplus(logsumexp_n - p)
        cross_entropy = F.softplus(torch.logsumexp(negative_logits, dim=1) - positive_logit)
        capped = cross_entropy - (cross_entropy - cross_entropy.clamp(max=_NPAIR_CAP)).detach()
        regulariser = 0.5 * self.l2_weight * scaled.detach().pow(2).sum(dim=1)
        active = positive.any(dim=1) & has_negative
        return torch.where(active, capped + regulariser, 0.0).sum() / len(labels)


_NPAIR_CAP = -math.log(1e-20)  # npair.cpp: -log(max(p, 1e-20))


BUILTIN_LOSSES: dict[str, type[nn.Module]] = {
    "binomial": BinomialDevianceLoss,
    "triplet": TripletLoss,
    "npair": NPairLoss,
}


class PmlLoss(nn.Module):
    """Adapter around a pytorch-metric-learning loss; pml normalises through its own distance."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings.float(), labels)


def available_losses() -> list[str]:
    return sorted(BUILTIN_LOSSES) + [PML_PREFIX + "<AnyLossClass>"]


def build_loss(name: str, embedding_dim: int, num_classes: int, params: dict | None = None) -> nn.Module:
    """The loss called ``name`` with ``params`` overriding its defaults.

    ``pml:ClassName`` builds that pytorch-metric-learning loss; ``num_classes``
    and ``embedding_size`` are filled in for losses that own parameters (proxies,
    classifier weights), which the trainer then optimises with the head.
    """
    params = dict(params or {})
    if name.startswith(PML_PREFIX):
        return PmlLoss(_build_pml_loss(name[len(PML_PREFIX):], embedding_dim, num_classes, params))
    if name not in BUILTIN_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(available_losses())}")
    loss_class = BUILTIN_LOSSES[name]
    _check_params(loss_class, params, name)
    return loss_class(**params)


def _build_pml_loss(class_name: str, embedding_dim: int, num_classes: int, params: dict) -> nn.Module:
    from pytorch_metric_learning import losses as pml_losses

    loss_class = getattr(pml_losses, class_name, None)
    if not (inspect.isclass(loss_class) and issubclass(loss_class, nn.Module)):
        raise ValueError(f"pytorch-metric-learning has no loss called {class_name!r}")
    accepted = inspect.signature(loss_class.__init__).parameters
    if "num_classes" in accepted:
        params.setdefault("num_classes", num_classes)
    if "embedding_size" in accepted:
        params.setdefault("embedding_size", embedding_dim)
    try:
        return loss_class(**params)
    except TypeError as error:
        raise ValueError(f"cannot build pml:{class_name} with {params}: {error}") from None


def _check_params(loss_class: type, params: dict, name: str) -> None:
    accepted = set(inspect.signature(loss_class.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"loss parameter {key} must be finite")
