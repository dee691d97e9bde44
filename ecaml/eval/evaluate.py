"""Embedding a split with a trained model, and scoring it on retrieval and clustering.

The metrics themselves live in ``ecaml.eval.metrics`` (pure functions of embeddings
and labels); this module turns a model plus a class split into those inputs.
``score_part`` is the one way a part of a split is scored, wherever metrics are
computed (training, the CLI, the app): a part searched against itself, or its
queries against its gallery where the split says so (In-Shop's unseen part,
every ``seen_test`` part).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ecaml.config import TrainConfig
from ecaml.data import ClassSplit, load_split
from ecaml.data.imported import IMPORTED_DATASET, imported_split, items_identity
from ecaml.data.loading import IN_MEMORY_DATASETS, default_num_workers
from ecaml.data.sampling import ImageView
from ecaml.data.transforms import build_transform
from ecaml.eval.metrics import query_gallery_metrics, retrieval_metrics
from ecaml.registry import BACKBONES


@dataclass
class Embeddings:
    """L2-normalised embeddings of one split, with each row's label and dataset index."""

    vectors: np.ndarray  # float32 [N, D], unit rows
    labels: np.ndarray
    indices: np.ndarray


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def eval_transform(config: TrainConfig, channels: int):
    return build_transform(config.image_size, channels, BACKBONES[config.backbone].imagenet_input, train=False, flip=False,
                           resize=config.resize_size)


def split_settings(config: TrainConfig) -> tuple:
    """What decides a run's split, as a hashable key (for caches of splits): equal keys, equal splits."""
    if config.dataset == IMPORTED_DATASET:  # imported items: the same items, wherever their run lives
        return (config.dataset, items_identity(config.data_root))
    config = config.resolved()
    unseen = tuple(config.unseen_classes) if config.unseen_classes is not None else None
    return (config.dataset, config.data_root, config.val_classes, config.val_seed, config.seen_test_per_class,
            config.legacy_unseen_seed, unseen)


def split_for(config: TrainConfig) -> ClassSplit:
    """The class split a run was trained with (same dataset, validation classes, held-out images)."""
    if config.dataset == IMPORTED_DATASET:
        return imported_split(config.data_root)
    dataset, data_root, val_classes, val_seed, seen_test_per_class, legacy_unseen_seed, unseen = split_settings(config)
    return load_split(dataset, data_root, val_classes, val_seed, seen_test_per_class,
                      legacy_unseen_seed=legacy_unseen_seed, unseen_classes=None if unseen is None else list(unseen))


def embed_indices(
    model: torch.nn.Module,
    split: ClassSplit,
    indices: np.ndarray,
    config: TrainConfig,
    channels: int,
    device: torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> Embeddings:
    """L2-normalised embeddings of ``split.dataset``'s images at ``indices``, in that order.

    Images are decoded and transformed by ``num_workers`` loader processes (default:
    ``_embedding_workers``) while the model runs, in batches of ``batch_size`` (default:
    1024 images up to 64 px, 256 above); on CUDA, batches are pinned and the model runs
    under autocast. Workers and batch size change the speed, never the vectors.
    """
    device = device or next(model.parameters()).device
    batch_size = batch_size or (1024 if (config.image_size or 224) <= 64 else 256)
    workers = _embedding_workers(len(indices), batch_size, config.dataset) if num_workers is None else num_workers
    view = ImageView(split.dataset, indices, eval_transform(config, channels))
    # A private generator keeps evaluation from drawing on the training run's global RNG.
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator(),
                        prefetch_factor=4 if workers else None)
    runner, layout = _inference_model(model, device)
    was_training = runner.training
    runner.eval()
    vectors, labels, rows = [], [], []
    try:
        with torch.inference_mode():
            for images, batch_labels, batch_indices in loader:
                with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
                    raw = runner(images.to(device, non_blocking=True).contiguous(memory_format=layout))
                vectors.append(torch.nn.functional.normalize(raw.float(), dim=1).cpu())
                labels.append(batch_labels)
                rows.append(batch_indices)
    finally:
        runner.train(was_training)
    return Embeddings(torch.cat(vectors).numpy(), torch.cat(labels).numpy(), torch.cat(rows).numpy())


def _inference_model(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model to embed with and the memory layout its input batches take.

    On the CPU, a copy in channels-last layout: oneDNN's convolutions run about twice as
    fast on it (smallcnn at 28 px: 0.49 against 0.95 ms an image on 2 cores). A copy, so
    that the training model's parameter layout (hence later training steps, bit for bit)
    is untouched. CUDA runs the model itself, as it is (not measured there yet).
    """
    if device.type != "cpu":
        return model, torch.contiguous_format
    return copy.deepcopy(model).to(memory_format=torch.channels_last), torch.channels_last


def _embedding_workers(image_count: int, batch_size: int, dataset: str) -> int:
    """Loader processes for embedding: none for a few batches (starting workers costs more than it saves) or for a
    data set held in memory (nothing to decode: a worker only takes a core from the model; Fashion-MNIST's 35,000
    unseen images embed in 3.9 s without one against 4.7 s with one, 2 cores), else the library's default for a
    loader that decodes images (``ecaml.data.loading.default_num_workers``)."""
    if image_count < 4 * batch_size or dataset in IN_MEMORY_DATASETS:
        return 0
    return default_num_workers()


def embed_part(model, split: ClassSplit, part: str, config: TrainConfig, channels: int, device=None) -> Embeddings:
    indices = split.indices(part)
    if len(indices) == 0:
        raise ValueError(f"the {part!r} split of {config.dataset} is empty")
    return embed_indices(model, split, indices, config, channels, device)


def score(embeddings: Embeddings, recall_ks, seed: int = 0) -> dict[str, float]:
    """Recall@K (K clipped to what the split allows), NMI, MAP@R and R-Precision of a set searched against itself."""
    ks = usable_recall_ks(recall_ks, len(embeddings.labels), len(embeddings.labels) - 1)
    return retrieval_metrics(embeddings.vectors, embeddings.labels, recall_ks=tuple(ks), seed=seed)


def score_against_gallery(queries: Embeddings, gallery: Embeddings, recall_ks) -> dict[str, float]:
    """Recall@K (K clipped to the gallery size), MAP@R and R-Precision of queries searched in a separate gallery."""
    ks = usable_recall_ks(recall_ks, len(gallery.labels), len(gallery.labels))
    return query_gallery_metrics(queries.vectors, queries.labels, gallery.vectors, gallery.labels, recall_ks=tuple(ks))


def usable_recall_ks(recall_ks, images: int, largest_k: int) -> list[int]:
    """The Ks a search among ``images`` (at most ``largest_k`` neighbours) can measure; the rest dropped, with a warning."""
    dropped = [k for k in recall_ks if k > largest_k]
    if dropped:
        warnings.warn(f"Recall@{', '.join(map(str, dropped))} dropped: a search among {images} images has "
                      f"K <= {largest_k}", stacklevel=3)
    return [k for k in recall_ks if k <= largest_k] or [1]


def dropped_recall_ks(split: ClassSplit, part: str, recall_ks) -> list[int]:
    """The Ks of ``recall_ks`` that ``score_part`` cannot measure on ``part`` (more than its neighbours)."""
    queries, gallery = split.queries_and_gallery(part)
    largest_k = len(queries) - 1 if gallery is None else len(gallery)
    return [k for k in recall_ks if k > largest_k]


def score_part(model, split: ClassSplit, part: str, config: TrainConfig, channels: int, device=None) -> dict[str, float]:
    """The metrics of ``part``: searched against itself, or its queries against its gallery where the split says so.

    Self-searched parts report Recall@K, NMI, MAP@R and R-Precision; query/gallery
    parts (In-Shop's unseen, ``seen_test``) the same without NMI, R being the
    number of gallery images of the query's class.
    """
    queries, gallery = split.queries_and_gallery(part)
    if len(queries) == 0 or (gallery is not None and len(gallery) == 0):
        raise ValueError(f"the {part!r} split of {config.dataset} is empty")
    if gallery is None:
        return score(embed_indices(model, split, queries, config, channels, device), config.recall_ks)
    return score_against_gallery(
        embed_indices(model, split, queries, config, channels, device),
        embed_indices(model, split, gallery, config, channels, device),
        config.recall_ks,
    )
