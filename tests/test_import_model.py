"""`ecaml import model`: a torchvision state dict (safetensors) with a linear head becomes an ordinary run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from ecaml.cli import main
from ecaml.eval.evaluate import eval_transform, split_for
from ecaml.runs import input_channels, load_run


def fine_tuned_resnet18(head_dim=16):
    """What a torchvision fine-tune saves: resnet18 whose fc is a linear embedding layer."""
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None)
    network.fc = torch.nn.Linear(512, head_dim)
    return network.eval()


def imported_through_the_cli(arch, network, head_dim, tmp_path, capsys):
    """``ecaml import model`` of ``network``'s state dict (saved to safetensors) on digits at 32 px: the run."""
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "w.safetensors")
    code = main(["import", "model", "--arch", arch, "--weights", str(tmp_path / "w.safetensors"),
                 "--head-dim", str(head_dim), "--dataset", "digits", "--image-size", "32", "--device", "cpu",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    return load_run(tmp_path / "run")


def test_a_resnet18_with_a_linear_head_imports_and_embeds_as_torchvision_does(tmp_path, capsys):
    network = fine_tuned_resnet18()
    run = imported_through_the_cli("resnet18", network, 16, tmp_path, capsys)
    assert run.model is not None and run.config.embedding_dim == 16 and set(run.metrics) >= {"recall@1", "map@r"}
    split = split_for(run.config)
    image = eval_transform(run.config, input_channels(run.config))(split.dataset.image(int(split.indices("unseen")[0])))
    with torch.no_grad():
        ours, theirs = run.model(image[None]), network(image[None])
    torch.testing.assert_close(ours, theirs)


def test_a_pickle_file_is_refused_with_the_line_that_converts_it(tmp_path, capsys):
    torch.save(fine_tuned_resnet18().state_dict(), tmp_path / "ft.pth")
    code = main(["import", "model", "--arch", "resnet18", "--weights", str(tmp_path / "ft.pth"),
                 "--dataset", "digits", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "never unpickles" in error
    assert "torch.load('ft.pth', weights_only=True" in error and "save_file(" in error
    assert not (tmp_path / "run").exists()


def test_mismatched_keys_and_shapes_are_named_in_one_line(tmp_path, capsys):
    state = fine_tuned_resnet18().state_dict()
    wrong_shape = {k: v.contiguous() for k, v in state.items()}
    wrong_shape["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(wrong_shape, tmp_path / "shape.safetensors")
    missing = {k: v.contiguous() for k, v in state.items() if not k.startswith("layer4.")}
    save_file(missing, tmp_path / "missing.safetensors")
    for name, expected in (("shape", "backbone.layer1.0.conv1.weight (64, 64, 1, 1) instead of (64, 64, 3, 3)"),
                           ("missing", "missing keys (e.g. backbone.layer4.")):
        code = main(["import", "model", "--arch", "resnet18", "--weights", str(tmp_path / f"{name}.safetensors"),
                     "--head-dim", "16", "--dataset", "digits", "--out", str(tmp_path / name)])
        error = capsys.readouterr().err
        assert code == 2 and error.count("\n") == 1 and expected in error, error
        assert not (tmp_path / name).exists()


# torchvision's own classifier slot of each architecture: where a fine-tune puts its linear embedding layer.
FINE_TUNE_SLOTS = {"efficientnet_b0": ("classifier", "1"), "convnext_tiny": ("classifier", "2"),
                   "vit_b_16": ("heads", "head")}


def randomly_initialised(arch, head_dim=None):
    """torchvision's ``arch`` as its own constructor initialises it, the classifier replaced by a linear
    embedding layer of ``head_dim`` outputs when given (as a fine-tune does), else kept (1,000 ImageNet logits)."""
    torch.manual_seed(0)
    network = getattr(torchvision.models, arch)(weights=None)
    if head_dim is not None:
        parent, slot = FINE_TUNE_SLOTS[arch]
        setattr(getattr(network, parent), slot, torch.nn.Linear(classifier_of(network, arch).in_features, head_dim))
    return network.eval()


def classifier_of(network, arch):
    parent, slot = FINE_TUNE_SLOTS[arch]
    return getattr(network, parent).get_submodule(slot)


def real_images(count, size):
    """Digit scans (scikit-learn's, not ours) as ImageNet-normalised 3-channel tensors of ``size`` pixels."""
    from sklearn.datasets import load_digits

    from ecaml.data.transforms import build_transform

    transform = build_transform(size, 3, True, train=False, flip=False)
    from PIL import Image

    scans = load_digits().images[:count]
    return torch.stack([transform(Image.fromarray((s * 255 / 16).astype(np.uint8))) for s in scans])


@pytest.mark.parametrize("arch", list(FINE_TUNE_SLOTS))
@pytest.mark.parametrize("head_dim", [16, None])
def test_more_architectures_load_from_safetensors_and_embed_as_torchvision_does(arch, head_dim, tmp_path):
    from ecaml.serve.import_model import model_from_file

    network = randomly_initialised(arch, head_dim)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "w.safetensors")
    size = 224 if arch == "vit_b_16" else 64  # ViT-B/16's position embeddings fix its input size
    model, config = model_from_file(arch, tmp_path / "w.safetensors", "digits", head_dim=head_dim, image_size=size)
    images = real_images(2, size)
    with torch.no_grad():
        ours, theirs = model.eval()(images), network(images)
        if head_dim is None:  # the embedding is the pooled feature: the file's own classifier on it gives its logits
            ours = classifier_of(network, arch)(ours)
    assert config.backbone == arch and config.embedding_dim == (head_dim or model.head.in_features)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_an_efficientnet_import_writes_a_run_that_reopens_and_scores(tmp_path, capsys):
    network = randomly_initialised("efficientnet_b0", 8)
    run = imported_through_the_cli("efficientnet_b0", network, 8, tmp_path, capsys)
    assert run.config.backbone == "efficientnet_b0" and 0 < run.metrics["recall@1"] <= 1
    images = real_images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(images), network(images), rtol=1e-4, atol=1e-4)


def test_weights_of_another_architecture_are_named_in_one_line(tmp_path, capsys):
    save_file({k: v.contiguous() for k, v in randomly_initialised("efficientnet_b0").state_dict().items()},
              tmp_path / "eff.safetensors")
    code = main(["import", "model", "--arch", "convnext_tiny", "--weights", str(tmp_path / "eff.safetensors"),
                 "--dataset", "digits", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert "does not fit convnext_tiny" in error and "missing keys (e.g. backbone.classifier.0.bias" in error
    assert "unexpected (e.g. backbone.classifier.1.bias" in error
    assert not (tmp_path / "run").exists()


def test_a_vit_at_another_input_size_is_refused_in_one_line(tmp_path, capsys):
    save_file({k: v.contiguous() for k, v in randomly_initialised("vit_b_16", 8).state_dict().items()},
              tmp_path / "vit.safetensors")
    code = main(["import", "model", "--arch", "vit_b_16", "--weights", str(tmp_path / "vit.safetensors"),
                 "--head-dim", "8", "--dataset", "digits", "--image-size", "32", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "vit_b_16" in error and "224" in error, error
    assert not (tmp_path / "run").exists()
