"""The names of what ecaml builds: datasets, losses, backbones, Energy Confusion's options.

One place to add a name, importing nothing heavy, so that reading the settings
(``ecaml.config``), the CLI's ``--help`` and the app's forms never import torch.
The modules that build each thing take their lists from here, and
tests/test_registry.py checks that they build exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass

# Datasets (ecaml.data.load_dataset): arrays that need no download, a folder of class folders, and the
# benchmarks read from their official layouts (ecaml.data.benchmarks.LAYOUTS).
BUILTIN_DATASETS = ("digits", "glyphs")
BENCHMARKS = ("cub", "cars", "sop", "inshop")
FASHION_MNIST = "fashion-mnist"  # real photos, read from the four idx files (ecaml.data.fashion)
DATASETS = (*BUILTIN_DATASETS, FASHION_MNIST, "folder", *BENCHMARKS)
# Datasets whose unseen classes a run may choose (``unseen_classes``); the others' are fixed by their rule.
CHOSEN_SPLIT_DATASETS = (FASHION_MNIST,)
FASHION_MNIST_UNSEEN_CLASSES = (5, 6, 7, 8, 9)  # Sandal, Shirt, Sneaker, Bag, Ankle boot (docs/datasets.md)
# Datasets read from image files on disk, in colour; the built-ins are greyscale arrays.
COLOUR_DATASETS = ("folder", *BENCHMARKS)
# The parts of a class split (ecaml.data.base).
SPLIT_PARTS = ("train", "val", "seen", "seen_test", "unseen")

# Base metric losses (ecaml.losses.BUILTIN_LOSSES); any pytorch-metric-learning loss is PML_PREFIX + its class.
LOSSES = ("binomial", "triplet", "npair")
PML_PREFIX = "pml:"

# Energy Confusion (ecaml.confusion): which inter-class pairs, and which parameters its gradient reaches.
EC_PAIR_MODES = ("sampled", "dense")
EC_ROUTES = ("head", "full")


@dataclass(frozen=True)
class BackboneSpec:
    feature_dim: int
    pretrained_capable: bool
    imagenet_input: bool  # 3-channel ImageNet-normalised input at ``default_size``
    default_size: int


# Backbones (ecaml.models.build_model): smallcnn is ecaml's own, the others torchvision's.
BACKBONES: dict[str, BackboneSpec] = {
    "smallcnn": BackboneSpec(128, pretrained_capable=False, imagenet_input=False, default_size=32),
    "googlenet": BackboneSpec(1024, pretrained_capable=True, imagenet_input=True, default_size=224),
    "resnet18": BackboneSpec(512, pretrained_capable=True, imagenet_input=True, default_size=224),
    "resnet50": BackboneSpec(2048, pretrained_capable=True, imagenet_input=True, default_size=224),
}
