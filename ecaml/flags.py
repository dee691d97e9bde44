"""The training flags: which ``TrainConfig`` fields the command line sets, with their types and help.

Read by the CLI's parser and by ``ecaml.serve.job_command`` (which rebuilds a config as these flags), so the
job does not depend on the CLI; the choices come from ``ecaml.registry``, so reading them imports no torch.
"""

from __future__ import annotations

import argparse

from ecaml.config import EVAL_SPLITS
from ecaml.registry import BACKBONES, DATASETS, LOSSES, PML_PREFIX


def class_ids(text: str) -> list[int]:
    """``--unseen-classes 5,6,7,8,9``: comma-separated class ids."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class ids such as 5,6,7,8,9, got {text!r}") from None


# Flags whose value lands in TrainConfig under the same name (dashes -> underscores).
TRAIN_FLAGS = {
    "dataset": (str, "dataset: " + ", ".join(DATASETS) + " (default digits; cub/cars/sop/inshop: the benchmarks, "
                "read from their official layout under --data-root, see docs/datasets.md)"),
    "data_root": (str, "folder of a folder dataset (one sub-folder of images per class) or of a benchmark; "
                  "fashion-mnist: where its idx files are (default: found on its own, see docs/datasets.md)"),
    "unseen_classes": (class_ids, "fashion-mnist only: comma-separated ids of the unseen (test) classes, the others "
                       "seen (default 5,6,7,8,9: Sandal, Shirt, Sneaker, Bag, Ankle boot)"),
    "val_classes": (float, "seen classes held out for validation/tuning: a count, or a fraction < 1 (default 0). "
                    "They are drawn from the training classes only: the unseen (test) classes are fixed by the "
                    "dataset (folder: the second half of the class folders in sorted name order) and no setting "
                    "moves one into training"),
    "val_seed": (int, "seed of the validation classes and of the seen-test images (default 0)"),
    "split_seed": (int, "former name of --val-seed, still accepted"),
    "seen_test_per_class": (int, "images of each training class held out of training and scored as 'seen_test' "
                            "(queries against the training images): seen-class retrieval on new images; classes "
                            "with fewer than N + 2 images hold out none; 0 = off (default: per dataset)"),
    "image_size": (int, "input size in pixels (default: per dataset; 224 for torchvision backbones)"),
    "backbone": (str, "backbone: " + ", ".join(BACKBONES) + " (default smallcnn)"),
    "weights_path": (str, "local file with ImageNet weights for --pretrained (else the torch cache is used)"),
    "embedding_dim": (int, "embedding size d (default: per dataset)"),
    "loss": (str, f"base metric loss: {', '.join(LOSSES)}, or {PML_PREFIX}ClassName (default binomial)"),
    "ec_weight": (float, "Energy Confusion weight lambda; 0 trains the plain baseline (default 0.13, the reference)"),
    "ec_pairs": (str, "EC pairs: sampled (k random inter-class partners per anchor, the reference) or dense (all)"),
    "ec_partners": (int, "k, partners per anchor for --ec-pairs sampled (default 10)"),
    "ec_route": (str, "where EC gradients go: head (W, b only, the reference) or full (backbone too, an ablation)"),
    "classes_per_batch": (int, "m, classes in each batch (default: per dataset)"),
    "images_per_class": (int, "n, images of each class in a batch (default: per dataset)"),
    "epochs": (int, "epochs over the training classes (default: per dataset)"),
    "max_steps": (int, "stop after exactly this many optimiser steps (for smoke tests)"),
    "lr": (float, "Adam learning rate of the backbone (default 1e-3)"),
    "head_lr_mult": (float, "the embedding head's learning rate as a multiple of --lr (reference: 10)"),
    "weight_decay": (float, "Adam weight decay (default 2e-4)"),
    "bias_lr_mult": (float, "every bias's learning rate as a multiple of its layer's weight rate (reference: 2)"),
    "bias_decay_mult": (float, "weight decay on biases as a multiple of --weight-decay (reference: 0)"),
    "seed": (int, "random seed; the same seed gives the same run on the CPU (default 0)"),
    "device": (str, "auto (CUDA when present), cpu, cuda or cuda:N (default auto)"),
    "num_workers": (int, "data-loading worker processes (default: 0 for digits/glyphs, else CPUs - 1 up to 8)"),
    "cpu_threads": (int, "torch CPU threads; 0 = 1 for smallcnn, torch's default otherwise (default 0)"),
    "eval_every": (int, "epochs between evaluations logged to the history; 0 = only at the end (default 5)"),
    "eval_splits": (str, "comma-separated parts scored during training, among " + ", ".join(EVAL_SPLITS) + ", or none "
                    "(default: val when --val-classes > 0, else none). The unseen test classes are scored at the end "
                    "of training (with seen_test and val), and during training only when named here"),
    "checkpoint_every": (int, "epochs between checkpoints (default 1)"),
    "resize_size": (int, ("squash images to this square before the random (train) or centre (test) crop of "
                          "--image-size (default: image size + 1/8; the paper: 256 for 227)")),
    "log_every": (int, ("steps per history line, each the mean of those steps' losses; the device is waited for "
                        "only then (default 1 on the CPU, 10 on CUDA)")),
    "film_every": (int, "steps between training-film snapshots of unseen embeddings (ecaml.serve.film); 0 = none (default)"),
}
