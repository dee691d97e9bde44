"""The training configuration: defaults < dataset defaults < preset < TOML file < flags.

The fully resolved ``TrainConfig`` is saved as ``config.json`` in every run
directory, so any run can be re-made and any reader can rebuild its model.
``TrainConfig.from_saved`` reads such a file: a key that older versions did not
write gets the value those versions behaved with (``SAVED_CONFIG_LEGACY``), so an
old run re-evaluates on exactly the split it was trained with.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecaml.registry import (BACKBONES, CHOSEN_SPLIT_DATASETS, DATASETS, EC_PAIR_MODES, EC_ROUTES,
                             FASHION_MNIST_UNSEEN_CLASSES as FASHION_UNSEEN_CLASSES, SPLIT_PARTS)

# Sizes whose model or input transform alone would exhaust memory: refused both when
# training and when reading a run, so training never makes a run that loading refuses.
MAX_IMAGE_SIZE, MAX_EMBEDDING_DIM = 4096, 65536

# Sizes that suit each dataset; anything set in a file or a flag wins. The epochs of the
# built-ins are those chosen for the binomial loss on validation classes in results/study.md
# (digits overfits its 5 seen classes quickly: validation MAP@R peaks after 2 epochs).
# The benchmarks take the reference batch (65 classes x 2 images), 512-d embeddings, about
# 10,000 iterations, and the Recall@K lists of the protocol (../shared/reference/ecaml.md).
# seen_test_per_class: images of each training class held out of training to measure
# seen-class retrieval on new images (classes too small to spare them hold out none).
_BENCHMARK = {"image_size": 224, "classes_per_batch": 65, "images_per_class": 2, "embedding_dim": 512}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "classes_per_batch": 5, "images_per_class": 12, "epochs": 2, "embedding_dim": 32,
               "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 10},
    "glyphs": {"image_size": 24, "classes_per_batch": 16, "images_per_class": 4, "epochs": 20, "embedding_dim": 64,
               "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 4},
    # Fashion-MNIST: the lecture, EC off and on trained and evaluated in <= 3 minutes together on 2 CPU
    # cores (chosen on validation classes: benchmarks/README.md, "Fashion-MNIST lecture pair").
    "fashion-mnist": {"image_size": 28, "classes_per_batch": 5, "images_per_class": 10, "epochs": 1,
                      "embedding_dim": 64, "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 10,
                      "unseen_classes": list(FASHION_UNSEEN_CLASSES)},
    "folder": {"image_size": 64, "classes_per_batch": 16, "images_per_class": 4, "epochs": 30, "embedding_dim": 128,
               "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 3},
    "cub": {**_BENCHMARK, "epochs": 220, "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 3},
    "cars": {**_BENCHMARK, "epochs": 160, "recall_ks": [1, 2, 4, 8], "seen_test_per_class": 3},
    "sop": {**_BENCHMARK, "epochs": 22, "recall_ks": [1, 10, 100, 1000], "seen_test_per_class": 1},
    "inshop": {**_BENCHMARK, "epochs": 50, "recall_ks": [1, 10, 20, 30, 40, 50], "seen_test_per_class": 1},
}
# Parts that can be scored during training (--eval-splits); the end of training scores seen_test, val and unseen.
EVAL_SPLITS = tuple(part for part in SPLIT_PARTS if part != "seen")
# Keys that older versions did not write to config.json, and how those versions behaved.
SAVED_CONFIG_LEGACY: dict[str, Any] = {
    "seen_test_per_class": 0,  # nothing was held out
    # "val_seed": the saved split_seed; "eval_splits": val and unseen; "legacy_unseen_seed": see from_saved
}


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_root: str | None = None
    val_classes: float = 0  # seen classes held out for tuning: a count, or a fraction < 1
    val_seed: int | None = None  # draws the validation classes (from the seen ones) and the seen-test images
    split_seed: int | None = None  # the former name of val_seed, still read; resolved configs hold both, equal
    # Fashion-MNIST's unseen (test) class ids; None: the dataset's default (5-9). Other datasets fix theirs.
    unseen_classes: list[int] | None = None
    seen_test_per_class: int | None = None  # images held out of each training class; None: the dataset's default
    # Only in run directories of folder datasets made before the fixed split: the seed whose
    # permutation chose their unseen classes. Refused in new configs (see from_dict).
    legacy_unseen_seed: int | None = None
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
    # Every bias: its layer's weight rate x bias_lr_mult, weight decay x bias_decay_mult (the reference: 2 and 0;
    # the paper presets set them). 1 and 1 are how the built-in datasets' defaults and the study were trained.
    bias_lr_mult: float = 1.0
    bias_decay_mult: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # None: 0 for in-memory built-ins, else ecaml.data.loading.default_num_workers()
    cpu_threads: int = 0  # 0: 1 thread for smallcnn (small convolutions only lose to threading), torch's default otherwise
    # evaluation and checkpoints
    eval_every: int = 5  # epochs between evaluations during training (0: only at the end)
    eval_splits: list[str] | None = None  # parts scored during training; None: val when there are val classes
    recall_ks: list[int] | None = None  # None: the dataset's list (CUB/CARS 1,2,4,8; SOP 1,10,100,1000; ...)
    checkpoint_every: int = 1  # epochs between checkpoints
    keep_checkpoints: bool = False  # keep every checkpoint's weights (steps/model_<step>.safetensors): each opens as run@step
    # input pipeline, logging, several processes
    resize_size: int | None = None  # resize to this square before cropping image_size; None: image_size + 1/8
    log_every: int | None = None  # steps per history line (the mean of those steps); None: 1 on the CPU, 10 on CUDA
    ec_gather: bool = False  # under torchrun: EC over the embeddings of every process's batch, not just this one's
    preset: str | None = None  # the preset these settings started from (a record; the values are what counts)
    # the training film (ecaml.train.film_recorder): snapshots of unseen-class embeddings every this many steps (0: none)
    film_every: int = 0

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` default filled in from the dataset and backbone, then validated."""
        values = dataclasses.asdict(self)
        for key, value in DATASET_DEFAULTS.get(self.dataset, {}).items():
            if values.get(key) is None:
                values[key] = copy.deepcopy(value)
        if self.backbone in BACKBONES and BACKBONES[self.backbone].imagenet_input and self.image_size is None:
            values["image_size"] = BACKBONES[self.backbone].default_size
        values.update(_resolved_split_settings(self))
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}"),
            (self.unseen_classes is None or self.dataset in CHOSEN_SPLIT_DATASETS,
             f"unseen_classes can be chosen only for {', '.join(CHOSEN_SPLIT_DATASETS)}; {self.dataset}'s are fixed"),
            (self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}"),
            (self.ec_pairs in EC_PAIR_MODES, f"ec_pairs must be one of {', '.join(EC_PAIR_MODES)}"),
            (self.ec_route in EC_ROUTES, f"ec_route must be one of {', '.join(EC_ROUTES)}"),
            (math.isfinite(self.ec_weight) and self.ec_weight >= 0, "ec_weight must be a finite number >= 0"),
            (self.ec_partners >= 1, "ec_partners must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.head_lr_mult > 0, "head_lr_mult must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (math.isfinite(self.bias_lr_mult) and self.bias_lr_mult > 0, "bias_lr_mult must be positive"),
            (math.isfinite(self.bias_decay_mult) and self.bias_decay_mult >= 0, "bias_decay_mult must be >= 0"),
            (self.epochs is None or self.epochs >= 1, "epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.embedding_dim is None or 2 <= self.embedding_dim <= MAX_EMBEDDING_DIM,
             f"embedding_dim must be between 2 and {MAX_EMBEDDING_DIM}"),
            (self.image_size is None or 4 <= self.image_size <= MAX_IMAGE_SIZE, f"image_size must be between 4 and {MAX_IMAGE_SIZE}"),
            (self.classes_per_batch is None or self.classes_per_batch >= 2, "classes_per_batch must be at least 2"),
            (self.images_per_class is None or self.images_per_class >= 2, "images_per_class must be at least 2"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda"),
            (self.recall_ks is None or (bool(self.recall_ks) and all(k >= 1 for k in self.recall_ks)),
             "recall_ks must be positive integers"),
            (self.seen_test_per_class is None or self.seen_test_per_class >= 0, "seen_test_per_class must be >= 0"),
            (self.legacy_unseen_seed is None or type(self.legacy_unseen_seed) is int, "legacy_unseen_seed must be an integer"),
            (self.eval_splits is None or all(part in EVAL_SPLITS for part in self.eval_splits),
             f"eval_splits must name parts among {', '.join(EVAL_SPLITS)}"),
            (not (self.eval_splits and "val" in self.eval_splits and not self.val_classes),
             "eval_splits names val, but val_classes is 0 (no validation classes)"),
            (not (self.eval_splits and "seen_test" in self.eval_splits and self.seen_test_per_class == 0),
             "eval_splits names seen_test, but seen_test_per_class is 0 (nothing held out)"),
            (self.eval_every >= 0 and self.checkpoint_every >= 1, "eval_every must be >= 0, checkpoint_every >= 1"),
            (self.num_workers is None or self.num_workers >= 0, "num_workers must be >= 0"),
            (self.cpu_threads >= 0, "cpu_threads must be >= 0"),
            (self.film_every >= 0, "film_every must be >= 0 (0: no training film)"),
        ]
        for ok, message in checks + self._pipeline_checks():
            if not ok:
                raise ValueError(message)

    def _pipeline_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.resize_size is None or self.image_size is None or self.image_size <= self.resize_size <= MAX_IMAGE_SIZE,
             f"resize_size must be between image_size and {MAX_IMAGE_SIZE}"),
            (self.log_every is None or self.log_every >= 1, "log_every must be at least 1"),
            (self.preset is None or self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}"),
            *self._backbone_checks(),
        ]

    def _backbone_checks(self) -> list[tuple[bool, str]]:
        spec = BACKBONES.get(self.backbone)
        if spec is None:
            return []  # named by validate()
        return [
            (not self.pretrained or spec.pretrained_capable,
             f"{self.backbone} has no ImageNet weights here; drop --pretrained (import a state dict with ecaml import model)"),
            (not spec.fixed_size or self.image_size in (None, spec.default_size),
             f"{self.backbone} takes {spec.default_size}-pixel images only (its position embeddings fix the size), "
             f"not {self.image_size}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from settings (a TOML file, flags, the app's form); saved run configs go through from_saved."""
        known = {f.name for f in dataclasses.fields(cls)} - {"legacy_unseen_seed"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "TrainConfig":
        """A run directory's config.json: keys older versions did not write read as those versions behaved.

        A config without ``val_seed`` predates it: its ``split_seed`` drew the validation
        classes, nothing was held out, training scored val and unseen, and a folder
        dataset's unseen classes were a permutation seeded by ``split_seed``.
        """
        values = dict(values)
        unseen_seed = values.pop("legacy_unseen_seed", None)
        if "val_seed" not in values:
            for key, value in SAVED_CONFIG_LEGACY.items():
                values.setdefault(key, value)
            values.setdefault("eval_splits", ["val", "unseen"] if values.get("val_classes") else ["unseen"])
            if values.get("dataset") == "folder":
                unseen_seed = values.get("split_seed") or 0
        config = cls.from_dict(values)
        config.legacy_unseen_seed = unseen_seed
        return config


def _resolved_split_settings(config: TrainConfig) -> dict[str, Any]:
    """val_seed (= split_seed, its former name), seen_test_per_class, eval_splits and recall_ks filled in."""
    seeds = {seed for seed in (config.val_seed, config.split_seed) if seed is not None}
    if len(seeds) > 1:
        raise ValueError(f"split_seed is the former name of val_seed; got both, with different values {sorted(seeds)}")
    seed = seeds.pop() if seeds else 0
    defaults = DATASET_DEFAULTS.get(config.dataset, {})
    held_out = config.seen_test_per_class
    if held_out is None:
        held_out = defaults.get("seen_test_per_class", 0)
    splits = config.eval_splits
    if splits is None:
        splits = ["val"] if config.val_classes else []
    recall_ks = config.recall_ks if config.recall_ks is not None else defaults.get("recall_ks", [1, 2, 4, 8])
    return {"val_seed": seed, "split_seed": seed, "seen_test_per_class": held_out, "eval_splits": list(splits),
            "recall_ks": list(recall_ks)}


# The reference training setup of the paper (../shared/reference/ecaml.md), value by value from the authors'
# Caffe files (github.com/chenbinghui1/ECAML, examples/car/: solver.prototxt = S, train_confusion.prototxt = T).
# Evaluation and checkpoint intervals are in epochs; they are set so that each run evaluates about ten times
# and checkpoints every few hundred steps (a GoogLeNet checkpoint with its Adam moments is about 80 MB).
_PAPER_SETUP: dict[str, Any] = {
    "backbone": "googlenet", "pretrained": True,  # T: the GoogLeNet layers, fine-tuned (finetune.sh: bvlc_googlenet)
    "embedding_dim": 512,  # T 2162: fc_embedding num_output: 512
    "image_size": 227, "resize_size": 256,  # T 12: crop_size: 227; T 22-23: new_height/new_width: 256
    "classes_per_batch": 65, "images_per_class": 2,  # T 18-19: train_car_65_2_*.txt, batch_size: 130
    "lr": 1e-5,  # S 4: base_lr: 0.00001 (S 17: type "Adam"; S 11-12: momentum 0.9, momentum2 0.999 = Adam's betas)
    "head_lr_mult": 10.0,  # T 2153: fc_embedding weight lr_mult: 10
    "bias_lr_mult": 2.0,  # T 36 (every convolution's bias lr_mult: 2 against its weight's 1); T 2158: 20 against 10
    "weight_decay": 2e-4,  # S 13: weight_decay: 0.0002 (T 33, 2154: decay_mult: 1 on weights)
    "bias_decay_mult": 0.0,  # T 37, ..., 2096, 2159: decay_mult: 0 on every bias
    "max_steps": 10_000,  # S 10: max_iter: 10000
    "loss": "binomial",  # T 2243: the active loss is BIERLoss (binomial deviance, T 2248-2251: beta 0.5, alpha 2, cost_n 25)
    "ec_weight": 0.13,  # T 2298: energy_confusion loss_weight: 0.13 (T 2260-2301: the EC block, commented out as shipped)
    "ec_pairs": "sampled", "ec_partners": 10,  # T 2296: random_num: 10
    "ec_route": "head",  # T 2263: fc_embedding_a propagate_down: 0 (EC reaches the embedding layer only)
    # The paper trains on every training image; --seen-test-per-class N holds N per class out to measure the gap.
    "seen_test_per_class": 0,
}
# dataset -> (Recall@K list of its benchmark, epochs between evaluations, epochs between checkpoints);
# epochs of 130 images: CUB ~45 steps, CARS ~62, SOP ~458, In-Shop ~199.
_PAPER_DATASETS: dict[str, tuple[list[int], int, int]] = {
    "cub": ([1, 2, 4, 8], 25, 5),
    "cars": ([1, 2, 4, 8], 20, 5),
    "sop": ([1, 10, 100, 1000], 3, 1),
    "inshop": ([1, 10, 20, 30, 40, 50], 6, 1),
}
PRESETS: dict[str, dict[str, Any]] = {
    f"paper-{name}": {**_PAPER_SETUP, "dataset": name, "recall_ks": ks, "eval_every": evals, "checkpoint_every": saves}
    for name, (ks, evals, saves) in _PAPER_DATASETS.items()
}


def settings(file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config keys of one run: a preset's values < a config file's < flags' (built-in defaults fill the rest).

    The preset is named by a flag (``--preset``) or inside the file (``preset = "paper-cub"``); the flag wins.
    """
    file_values, flag_values = dict(file_values or {}), dict(flag_values or {})
    from_flag, from_file = flag_values.pop("preset", None), file_values.pop("preset", None)
    name = from_flag or from_file
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {**copy.deepcopy(PRESETS[name]), "preset": name} if name else {}
    values.update(file_values)
    values.update(flag_values)
    return values


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
