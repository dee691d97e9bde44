"""Presets: the paper's reference setup, and the order preset < config file < flags."""

from __future__ import annotations

import json

import pytest
import torch

from ecaml.cli import main
from ecaml.config import PRESETS, TrainConfig, settings

PAPER_RECALL_KS = {"cub": [1, 2, 4, 8], "cars": [1, 2, 4, 8], "sop": [1, 10, 100, 1000], "inshop": [1, 10, 20, 30, 40, 50]}


@pytest.mark.parametrize("dataset", sorted(PAPER_RECALL_KS))
def test_each_paper_preset_is_the_reference_setup(dataset):
    values = settings({}, {"preset": f"paper-{dataset}"})
    config = TrainConfig.from_dict(values)  # not resolved: that would look for the dataset on disk
    assert config.dataset == dataset and config.preset == f"paper-{dataset}"
    assert (config.backbone, config.pretrained, config.embedding_dim) == ("googlenet", True, 512)
    assert (config.resize_size, config.image_size) == (256, 227)
    assert (config.classes_per_batch, config.images_per_class) == (65, 2)
    assert (config.lr, config.head_lr_mult, config.weight_decay) == (1e-5, 10.0, 2e-4)
    assert (config.max_steps, config.ec_weight, config.ec_route, config.loss) == (10_000, 0.13, "head", "binomial")
    assert config.recall_ks == PAPER_RECALL_KS[dataset]


def test_file_beats_preset_and_flag_beats_file():
    values = settings({"preset": "paper-sop", "lr": 3e-5, "max_steps": 500}, {"max_steps": 20})
    assert (values["dataset"], values["lr"], values["max_steps"]) == ("sop", 3e-5, 20)
    assert values["head_lr_mult"] == 10.0  # untouched preset values stay
    flagged = settings({"preset": "paper-sop"}, {"preset": "paper-cars"})
    assert flagged["dataset"] == "cars" and flagged["preset"] == "paper-cars"
    assert settings({}, {}) == {} and "preset" not in settings({"lr": 1.0}, {})


def test_preset_values_are_not_shared_between_runs():
    first = settings({}, {"preset": "paper-cub"})
    first["recall_ks"].append(99)
    assert PRESETS["paper-cub"]["recall_ks"] == [1, 2, 4, 8]


def test_an_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset 'paper-imagenet'"):
        settings({"preset": "paper-imagenet"}, {})
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig(preset="nope").validate()


def test_cli_saves_the_resolved_preset_with_file_and_flags_winning(tmp_path, monkeypatch):
    """A real (tiny) run from the CUB preset with the data, backbone and sizes overridden to the built-in digits."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.toml").write_text('backbone = "smallcnn"\npretrained = false\nlr = 3e-5\n')
    out = tmp_path / "run"
    code = main(["train", "--preset", "paper-cub", "--config", "small.toml", "--dataset", "digits", "--image-size", "8",
                 "--resize-size", "9", "--embedding-dim", "16", "--classes-per-batch", "5", "--max-steps", "3",
                 "--lr", "5e-5", "--eval-every", "0", "--quiet", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "paper-cub"
    assert (saved["dataset"], saved["backbone"], saved["pretrained"], saved["lr"]) == ("digits", "smallcnn", False, 5e-5)
    assert (saved["images_per_class"], saved["head_lr_mult"], saved["max_steps"]) == (2, 10.0, 3)
    assert (saved["resize_size"], saved["image_size"], saved["recall_ks"]) == (9, 8, [1, 2, 4, 8])


def test_no_pretrained_flag_overrides_a_preset(tmp_path):
    from ecaml.cli import _flag_values, build_parser

    args = build_parser().parse_args(["train", "--preset", "paper-cars", "--no-pretrained", "--out", str(tmp_path)])
    values = settings({}, _flag_values(args))
    assert values["pretrained"] is False and values["backbone"] == "googlenet"


def test_a_preset_run_started_from_the_app_rebuilds_the_same_config():
    """The app's jobs pass a config as flags; with a preset named (and overridden), the same config comes back."""
    from ecaml.cli import _flag_values, build_parser
    from ecaml.serve.job_command import config_flags

    overrides = {"dataset": "folder", "data_root": "/data/cars", "pretrained": False, "max_steps": 50, "ec_gather": True}
    values = settings({}, {"preset": "paper-cars", **overrides})
    config = TrainConfig.from_dict(values)
    args = build_parser().parse_args(["train", *config_flags(config), "--out=x"])
    assert TrainConfig.from_dict(settings({}, _flag_values(args))) == config


def _settings_by_parameter(config: TrainConfig) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of every named parameter, as the optimiser's groups give them."""
    from ecaml.models import build_model
    from ecaml.train.trainer import build_optimizer

    model = build_model("smallcnn", 8, in_channels=1)
    groups = build_optimizer(model, torch.nn.Identity(), config).param_groups
    by_id = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters()), "every parameter is in exactly one group"
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_the_preset_takes_the_reference_rates_and_decay_for_every_parameter():
    """train_confusion.prototxt: convolutions lr_mult 1 / 2 (weight / bias), fc_embedding 10 / 20, decay_mult 0
    on every bias; solver.prototxt: base_lr 1e-5, weight_decay 2e-4."""
    per_parameter = _settings_by_parameter(TrainConfig.from_dict(settings({}, {"preset": "paper-cub"})))
    biases = [name for name in per_parameter if name.endswith("bias")]
    assert any(name.startswith("backbone.") for name in biases)
    for name, (lr, decay) in per_parameter.items():
        layer_rate = 1e-4 if name.startswith("head.") else 1e-5
        if name.endswith("bias"):
            assert (lr, decay) == pytest.approx((2 * layer_rate, 0.0)), name
        else:
            assert (lr, decay) == pytest.approx((layer_rate, 2e-4)), name


def test_default_groups_keep_decay_and_one_rate_on_biases():
    """Without the preset (digits, glyphs, folders): every parameter at lr with weight decay, as the study ran."""
    per_parameter = _settings_by_parameter(TrainConfig(lr=1e-3, weight_decay=2e-4))
    assert set(per_parameter.values()) == {(1e-3, 2e-4)}
