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


def test_a_resnet18_with_a_linear_head_imports_and_embeds_as_torchvision_does(tmp_path, capsys):
    network = fine_tuned_resnet18()
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "ft.safetensors")
    code = main(["import", "model", "--arch", "resnet18", "--weights", str(tmp_path / "ft.safetensors"),
                 "--head-dim", "16", "--dataset", "digits", "--image-size", "32", "--device", "cpu",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    run = load_run(tmp_path / "run")
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
