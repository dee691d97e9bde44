"""What a study trains: its datasets, losses, grids and seeds, and each run's name and config."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("digits", "glyphs")
LOSSES = ("binomial", "triplet", "npair")
UNSEEN_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision")
SEEN_METRICS = ("recall@1", "map@r")
SHIPPED_FILES = ("config.json", "model.safetensors", "history.jsonl", "metrics.json", "status.json")
FILM_FOLDER = "film"  # ecaml.serve.film.FILM_FOLDER
SEEN_PART = "seen_test"  # held-out images of the training classes
FEATURED_DATASET = "digits"  # the featured pair is a digits pair: its runs carry films and re-train in seconds
SELECTION_METRIC = "map@r"
PINNED_KEYS = ("image_size", "embedding_dim", "classes_per_batch", "images_per_class")


@dataclass(frozen=True)
class Plan:
    """Every setting of a study; saved into study.json."""

    ec_grid: dict[str, tuple[float, ...]]
    epoch_grid: dict[str, tuple[int, ...]]
    val_classes: dict[str, int]
    tune_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    datasets: tuple[str, ...] = DATASETS
    losses: tuple[str, ...] = LOSSES
    extra: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields for every run
    film_frames: dict[str, int] = field(default_factory=dict)  # seed-0 final runs of these datasets get a film
    # A study dataset is a data set and its seen/unseen split: its TrainConfig keys (default {"dataset": name}).
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    row_losses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a dataset's losses, when not all

    def data_config(self, dataset: str) -> dict[str, Any]:
        return dict(self.data.get(dataset, {"dataset": dataset}))

    def rows(self) -> list[tuple[str, str]]:
        """(dataset, loss) of every row of the study."""
        return [(d, loss) for d in self.datasets for loss in self.losses if loss in self.row_losses.get(d, self.losses)]

    def subset(self, datasets: list[str] | None, losses: list[str] | None) -> "Plan":
        """This plan restricted to some datasets and losses (to re-make those rows, keeping the rest of a study)."""
        for asked, known, what in ((datasets, self.datasets, "dataset"), (losses, self.losses, "loss")):
            unknown = sorted(set(asked or ()) - set(known))
            if unknown:
                raise ValueError(f"unknown {what} {', '.join(unknown)}; the study has {', '.join(known)}")
        return dataclasses.replace(self, datasets=tuple(d for d in self.datasets if not datasets or d in datasets),
                                   losses=tuple(loss for loss in self.losses if not losses or loss in losses))

    def keys(self) -> list[str]:
        """The study's rows, "dataset/loss"."""
        return [f"{dataset}/{loss}" for dataset, loss in self.rows()]

    def eval_every(self, dataset: str) -> int:
        """Evaluate at every grid epoch: the gcd of the grid."""
        return math.gcd(*self.epoch_grid[dataset])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ec_grid": {k: list(v) for k, v in self.ec_grid.items() if k in self.datasets},
            "epoch_grid": {k: list(v) for k, v in self.epoch_grid.items() if k in self.datasets},
            "val_classes": {k: v for k, v in self.val_classes.items() if k in self.datasets},
            "tune_seeds": list(self.tune_seeds),
            "tune_split_seeds": "equal to the tuning seed (each tuning seed holds out its own validation classes)",
            "final_seeds": list(self.final_seeds),
            "datasets": list(self.datasets),
            "losses": list(self.losses),
            "eval_every_while_tuning": {d: self.eval_every(d) for d in self.datasets},
            "extra_config": dict(self.extra),
            "film_frames_for_seed0_finals": {k: v for k, v in self.film_frames.items() if k in self.datasets},
            "data": {d: self.data_config(d) for d in self.datasets},
            "rows": self.keys(),
            "selection": (
                f"epochs: argmax over the epoch grid of the baseline's (EC off) validation {SELECTION_METRIC}, "
                f"mean over tuning seeds, ties to fewer epochs; reused for EC. EC weight: argmax over the EC grid of "
                f"validation {SELECTION_METRIC} after the chosen epochs, mean over tuning seeds, ties to the smaller "
                "weight. Unseen-class metrics are never read by the selection."
            ),
        }


# Fashion-MNIST, two seen/unseen splits of its ten classes: the default (unseen 5-9: footwear, bags and shirts,
# ecaml.data.fashion) and the even ids unseen (0 T-shirt, 2 pullover, 4 coat, 6 shirt, 8 bag), where the unseen
# tops have seen look-alikes. Triplet only: each of its runs reads 35,000 images an epoch (about 100x digits').
# One candidate each, the lecture setting (1 epoch, λ = 1: benchmarks/README.md, "Fashion-MNIST lecture pair"), checked
# against EC off on validation classes by the tuning runs: a run costs about 160 CPU seconds, so a grid of
# (1, 2, 4) epochs x (0.13, 0.3, 1) would take hours on 2 cores. Widen these grids on a larger machine.
FASHION = {"fashion-mnist": {"dataset": "fashion-mnist"},
           "fashion-mnist-even": {"dataset": "fashion-mnist", "unseen_classes": [0, 2, 4, 6, 8]}}
FULL = Plan(
    # glyphs: 3 weights, not 5, to keep the study near an hour on 2 shared cores (its runs are ~10x digits')
    ec_grid={"digits": (0.05, 0.13, 0.3, 0.6, 1.0), "glyphs": (0.13, 0.3, 1.0),
             **{name: (1.0,) for name in FASHION}},
    epoch_grid={"digits": (2, 4, 8, 16, 32), "glyphs": (5, 10, 15, 20), **{name: (1,) for name in FASHION}},
    val_classes={"digits": 2, "glyphs": 13, **{name: 2 for name in FASHION}},
    tune_seeds=(100, 101),
    final_seeds=(0, 1, 2, 3, 4),
    datasets=DATASETS + tuple(FASHION),
    film_frames={"digits": 30, "fashion-mnist": 10},  # a Fashion-MNIST frame is 256 KB: 10 keep a run under 5 MiB
    data=FASHION,
    row_losses={name: ("triplet",) for name in FASHION},
)
QUICK = Plan(
    ec_grid={"digits": (0.13, 1.0), "glyphs": (0.13, 1.0)},
    epoch_grid={"digits": (1, 2), "glyphs": (1,)},
    val_classes={"digits": 2, "glyphs": 13},
    tune_seeds=(100, 101),
    final_seeds=(0, 1),
    film_frames={"digits": 4},
)


# ----------------------------------------------------------------------------- runs


def weight_tag(weight: float) -> str:
    return f"ec{weight:g}"


def tune_name(dataset: str, loss: str, weight: float, seed: int) -> str:
    return f"tune-{dataset}-{loss}-{weight_tag(weight)}-seed{seed}"


def final_name(dataset: str, loss: str, weight: float, seed: int) -> str:
    return f"{dataset}-{loss}-{weight_tag(weight)}-seed{seed}"


def tune_config(plan: Plan, dataset: str, loss: str, weight: float, seed: int, epochs: int) -> dict[str, Any]:
    return {
        **plan.data_config(dataset), "loss": loss, "ec_weight": weight, "seed": seed, "split_seed": seed,
        "val_classes": plan.val_classes[dataset], "epochs": epochs, "eval_every": plan.eval_every(dataset),
        **plan.extra,
    }


def final_config(plan: Plan, dataset: str, loss: str, weight: float, seed: int, epochs: int) -> dict[str, Any]:
    values = {
        **plan.data_config(dataset), "loss": loss, "ec_weight": weight, "seed": seed, "split_seed": 0,
        "val_classes": 0, "epochs": epochs, "eval_every": 0, **plan.extra,
    }
    if seed == plan.final_seeds[0] and dataset in plan.film_frames:
        values["film_every"] = film_every(json.dumps(values, sort_keys=True), plan.film_frames[dataset])
    return values


@functools.lru_cache(maxsize=None)
def film_every(values_json: str, frames: int) -> int:
    """Steps between film snapshots so that the run (its config as JSON) records about ``frames`` of them."""
    from ecaml.config import TrainConfig
    from ecaml.eval.evaluate import split_for
    from ecaml.train.trainer import make_plan

    config = TrainConfig.from_dict(json.loads(values_json)).resolved()
    split = split_for(config)
    plan = make_plan(config, split.dataset.labels[split.indices("train")])
    return max(1, plan.total_steps // frames)


def train_command(values: dict[str, Any], out: str) -> str:
    """The `python -m ecaml train` line that makes the same run (same resolved config)."""
    parts = ["python", "-m", "ecaml", "train"]
    for key, value in values.items():
        parts += ["--" + key.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(p) for p in parts + ["--out", out, "--quiet"])


