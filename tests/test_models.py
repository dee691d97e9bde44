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


def randomised_googlenet_file(path, seed: int):
    """A GoogLeNet state dict in torchvision's ImageNet format (aux classifiers and fc included), random values."""
    from torchvision.models import googlenet

    generator = torch.Generator().manual_seed(seed)
    network = googlenet(weights=None, aux_logits=True, init_weights=False)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("bn.weight"):
                tensor.copy_(1 + 0.1 * noise)
            elif tensor.dim() > 1:  # He-scaled, so the signal survives 22 layers and features vary with the input
                tensor.copy_(noise * (2 / tensor[0].numel()) ** 0.5)
            else:
                tensor.copy_(0.05 * noise)
    torch.save(network.state_dict(), path)
    return path


def torchvision_googlenet_features(path, transform_input: bool):
    """torchvision's own GoogLeNet with the saved weights, classifier removed: the features ecaml must match."""
    from torchvision.models import googlenet

    network = googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=transform_input)
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith(("aux1.", "aux2."))}
    network.load_state_dict(state)
    network.fc = torch.nn.Identity()
    return network.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pretrained_googlenet_computes_torchvisions_imagenet_features(tmp_path, seed):
    path = randomised_googlenet_file(tmp_path / "googlenet.pth", seed)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(100 + seed))
    ours = build_model("googlenet", 16, in_channels=3, pretrained=True, weights_path=str(path)).eval()
    with torch.no_grad():
        features = ours.features(images)
        expected = torchvision_googlenet_features(path, transform_input=True)(images)
        untransformed = torchvision_googlenet_features(path, transform_input=False)(images)
    assert torch.allclose(features, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(features, untransformed, atol=1e-3), "the input transform must change the features"


def test_googlenet_has_no_dropout_in_front_of_the_head(tmp_path):
    model = build_model("googlenet", 16, in_channels=3).train()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runs = [model.features(images) for _ in range(3)]
    assert all(torch.equal(runs[0], other) for other in runs[1:]), "training-mode features must not be dropped out"
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
