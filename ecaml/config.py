"""The training configuration: defaults < dataset defaults < TOML file < flags.

The fully resolved ``TrainConfig`` is saved as ``config.json`` in every run
directory, so any run can be re-made and any reader can rebuild its model.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecaml.confusion import PAIR_MODES, ROUTES
from ecaml.data import DATASETS
from ecaml.models import BACKBONES

# Sizes whose model or input transform alone would exhaust memory: refused both when
# training and when reading a run, so training never makes a run that loading refuses.
MAX_IMAGE_SIZE, MAX_EMBEDDING_DIM = 4096, 65536

# Sizes that suit each built-in dataset; anything set in a file or a flag wins. The epochs
# are those chosen for the binomial loss on validation classes in results/study.md (digits
# overfits its 5 seen classes quickly: validation MAP@R peaks after 2 epochs).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "classes_per_batch": 5, "images_per_class": 12, "epochs": 2, "embedding_dim": 32},
    "glyphs": {"image_size": 24, "classes_per_batch": 16, "images_per_class": 4, "epochs": 20, "embedding_dim": 64},
    "folder": {"image_size": 64, "classes_per_batch": 16, "images_per_class": 4, "epochs": 30, "embedding_dim": 128},
}


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_root: str | None = None
    val_classes: float = 0  # seen classes held out for tuning: a count, or a fraction < 1
    split_seed: int = 0
    image_size: int | None = None  # None: the dataset's default (torchvision backbones: 224)
    # model
    backbone: str = "smallcnn"
    pretrained: bool = False
    weights_path: str | None = None
    embedding_dim: int | None = None
    # losses
    loss: str = "binomial"
    loss_params: dict[str, Any] = field(default_factory=dict)
    ec_weight: float = 0.13  # lambda of the reference; 0 trains the plain baseline
    ec_pairs: str = "sampled"
    ec_partners: int = 10
    ec_route: str = "head"
    # optimisation
    classes_per_batch: int | None = None
    images_per_class: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    lr: float = 1e-3
    head_lr_mult: float = 1.0  # the reference uses 10 with a pretrained backbone
    weight_decay: float = 2e-4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    cpu_threads: int = 0  # 0: 1 thread for smallcnn (small convolutions only lose to threading), torch's default otherwise
    # evaluation and checkpoints
    eval_every: int = 5  # epochs between evaluations during training (0: only at the end)
    recall_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    checkpoint_every: int = 1  # epochs between checkpoints
    # the training film (ecaml.film): snapshots of unseen-class embeddings every this many steps (0: none)
    film_every: int = 0

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` default filled in from the dataset and backbone, then validated."""
        values = dataclasses.asdict(self)
        for key, value in DATASET_DEFAULTS.get(self.dataset, {}).items():
            if values.get(key) is None:
                values[key] = value
        if self.backbone in BACKBONES and BACKBONES[self.backbone].imagenet_input and self.image_size is None:
            values["image_size"] = BACKBONES[self.backbone].default_size
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}"),
            (self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}"),
            (self.ec_pairs in PAIR_MODES, f"ec_pairs must be one of {', '.join(PAIR_MODES)}"),
            (self.ec_route in ROUTES, f"ec_route must be one of {', '.join(ROUTES)}"),
            (math.isfinite(self.ec_weight) and self.ec_weight >= 0, "ec_weight must be a finite number >= 0"),
            (self.ec_partners >= 1, "ec_partners must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.head_lr_mult > 0, "head_lr_mult must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.epochs is None or self.epochs >= 1, "epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.embedding_dim is None or 2 <= self.embedding_dim <= MAX_EMBEDDING_DIM,
             f"embedding_dim must be between 2 and {MAX_EMBEDDING_DIM}"),
            (self.image_size is None or 4 <= self.image_size <= MAX_IMAGE_SIZE, f"image_size must be between 4 and {MAX_IMAGE_SIZE}"),
            (self.classes_per_batch is None or self.classes_per_batch >= 2, "classes_per_batch must be at least 2"),
            (self.images_per_class is None or self.images_per_class >= 2, "images_per_class must be at least 2"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda"),
            (bool(self.recall_ks) and all(k >= 1 for k in self.recall_ks), "recall_ks must be positive integers"),
            (self.eval_every >= 0 and self.checkpoint_every >= 1, "eval_every must be >= 0, checkpoint_every >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.cpu_threads >= 0, "cpu_threads must be >= 0"),
            (self.film_every >= 0, "film_every must be >= 0 (0: no training film)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**values)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML config file (flat, or under a ``[train]`` table)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {path} is not valid TOML: {error}") from None
    values = values.get("train", values)
    TrainConfig.from_dict(values)  # reject unknown keys now, with the file's name in view
    return values
