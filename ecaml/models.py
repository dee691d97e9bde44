"""Backbones and the embedding head, looked up by name.

A model is ``backbone -> head``: the backbone gives the feature f(x), the head
is the linear embedding layer z = W f + b that Energy Confusion acts on. State
dict keys start with ``backbone.`` and ``head.`` so a checkpoint says which
parameters each gradient reached.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ecaml.registry import BACKBONES


class SmallCNN(nn.Module):
    """Three conv blocks and global pooling: a useful embedding of 8x8 to 64x64 images in about a minute on a CPU."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return layers + [nn.MaxPool2d(2)] if pool else layers

        self.layers = nn.Sequential(
            *block(in_channels, width, pool=True),
            *block(width, 2 * width, pool=True),
            *block(2 * width, 4 * width, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class EmbeddingNet(nn.Module):
    """backbone -> linear embedding head; ``forward`` returns the raw (un-normalised) embedding."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, embedding_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class WeightsError(ValueError):
    """Pretrained weights that are not available locally."""


def build_model(
    backbone: str,
    embedding_dim: int,
    in_channels: int = 1,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> EmbeddingNet:
    """The named backbone with a fresh head; ImageNet weights only from a local file or the torch cache."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if embedding_dim < 2:
        raise ValueError("embedding_dim must be at least 2")
    spec = BACKBONES[backbone]
    if pretrained and not spec.pretrained_capable:
        raise ValueError(f"{backbone} has no pretrained weights here; drop --pretrained")
    if backbone == "smallcnn":
        return EmbeddingNet(SmallCNN(in_channels), spec.feature_dim, embedding_dim)
    network = _torchvision_backbone(backbone)
    if pretrained:
        _load_pretrained(network, backbone, weights_path)
    return EmbeddingNet(network, spec.feature_dim, embedding_dim)


def _torchvision_backbone(name: str) -> nn.Module:
    from torchvision import models

    if name == "googlenet":
        # No auxiliary classifiers: the paper's embedding sits on the 1024-d pooled feature. torchvision's
        # ImageNet GoogLeNet was ported from weights that expect (x - 0.5) / 0.5 input: transform_input
        # re-maps the ImageNet-normalised tensor to that, as torchvision itself does when it loads those
        # weights. It is on with or without them, so a run rebuilt for evaluation (no weights loaded)
        # computes exactly what was trained.
        network = models.googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=True)
        # The classifier's dropout would act on the feature the head embeds (the reference has none there).
        network.dropout = nn.Identity()
    else:
        network = getattr(models, name)(weights=None)
    parent, _, slot = BACKBONES[name].classifier.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, slot, nn.Identity())
    return network


def _weights_enum(name: str):
    from torchvision import models

    return {
        "googlenet": models.GoogLeNet_Weights.IMAGENET1K_V1,
        "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    }[name]


def pretrained_weights_file(name: str, weights_path: str | None = None) -> Path:
    """Where the ImageNet weights for ``name`` are: ``weights_path`` or torchvision's file in the torch cache."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path
    file_name = Path(_weights_enum(name).url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        raise WeightsError(
            f"ImageNet weights for {name} not found: put {file_name} in {cached.parent} "
            f"or pass --weights-path FILE (nothing is downloaded)"
        )
    return cached


def _load_pretrained(network: nn.Module, name: str, weights_path: str | None) -> None:
    path = pretrained_weights_file(name, weights_path)
    state = _read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "aux1.", "aux2."))}
    missing, unexpected = network.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise WeightsError(f"{path} does not hold {name} ImageNet weights (missing {len(missing)}, unexpected {len(unexpected)} keys)")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        # weights_only: a weights file must never be able to run code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        raise WeightsError(f"cannot read weights file {path}: {error}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a state dict")
    return state
