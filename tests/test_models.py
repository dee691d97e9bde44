"""Backbones, the embedding head, and local-only pretrained weights."""

from __future__ import annotations

import pytest
import torch

from ecaml.models import WeightsError, build_model


@pytest.mark.parametrize("name, feature_dim", [("smallcnn", 128), ("resnet18", 512), ("googlenet", 1024)])
def test_backbones_feed_the_embedding_head(name, feature_dim):
    channels = 1 if name == "smallcnn" else 3
    model = build_model(name, embedding_dim=16, in_channels=channels).eval()
    size = 32 if name == "smallcnn" else 64
    with torch.no_grad():
        features = model.features(torch.randn(2, channels, size, size))
        embedding = model(torch.randn(2, channels, size, size))
    assert features.shape == (2, feature_dim) and embedding.shape == (2, 16)
    assert model.head.weight.shape == (16, feature_dim)
    assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())


def test_pretrained_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth.*nothing is downloaded"):
        build_model("resnet18", 8, in_channels=3, pretrained=True)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.nn.init.constant_(reference.conv1.weight, 0.25)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 8, in_channels=3, pretrained=True, weights_path=str(path))
    assert torch.all(model.backbone.conv1.weight == 0.25)


def test_a_weights_file_for_another_network_is_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="does not hold resnet18"):
        build_model("resnet18", 8, in_channels=3, pretrained=True, weights_path=str(path))
