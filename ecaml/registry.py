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
    # torchvision's classifier module, replaced by the identity so the backbone ends in its pooled feature, and the
    # key prefix of the linear layer in it (where a fine-tune puts its embedding layer: ecaml.serve.import_model).
    classifier: str = "fc"
    classifier_linear: str = "fc."
    fixed_size: bool = False  # only ``default_size`` fits (ViT's position embeddings)


# Backbones (ecaml.models.build_model): smallcnn is ecaml's own, the others torchvision's. The last three have no
# ImageNet weights here: they come in through ``ecaml import model`` (a state dict of the user's).
BACKBONES: dict[str, BackboneSpec] = {
    "smallcnn": BackboneSpec(128, pretrained_capable=False, imagenet_input=False, default_size=32),
    "googlenet": BackboneSpec(1024, pretrained_capable=True, imagenet_input=True, default_size=224),
    "resnet18": BackboneSpec(512, pretrained_capable=True, imagenet_input=True, default_size=224),
    "resnet50": BackboneSpec(2048, pretrained_capable=True, imagenet_input=True, default_size=224),
    "efficientnet_b0": BackboneSpec(1280, pretrained_capable=False, imagenet_input=True, default_size=224,
                                    classifier="classifier", classifier_linear="classifier.1."),
    # ConvNeXt's classifier starts with the LayerNorm of the pooled feature: it stays, only the linear layer goes.
    "convnext_tiny": BackboneSpec(768, pretrained_capable=False, imagenet_input=True, default_size=224,
                                  classifier="classifier.2", classifier_linear="classifier.2."),
    "vit_b_16": BackboneSpec(768, pretrained_capable=False, imagenet_input=True, default_size=224,
                             classifier="heads", classifier_linear="heads.head.", fixed_size=True),
}
