"""Tests for ecaml.eval.evaluate.embed_indices: loader workers and batch size change the speed, never the vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ecaml.config import TrainConfig
from ecaml.data import load_split
from ecaml.eval.evaluate import embed_indices
from ecaml.models import build_model


@pytest.fixture(scope="module")
def folder_split(tmp_path_factory):
    """A generated image folder: 6 classes x 9 small RGB images of distinct colours and noise."""
    root = tmp_path_factory.mktemp("embed-folder")
    rng = np.random.default_rng(0)
    for label in range(6):
        (root / f"class{label}").mkdir()
        for item in range(9):
            pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            pixels[..., label % 3] = 40 * label
            Image.fromarray(pixels).save(root / f"class{label}" / f"{item}.png")
    return load_split("folder", str(root))


@pytest.mark.parametrize(("dataset", "seed"), [("digits", 0), ("folder", 1)])
def test_workers_and_batch_size_give_the_same_vectors_as_one_process(dataset, seed, folder_split):
    split = folder_split if dataset == "folder" else load_split("digits")
    channels = 3 if dataset == "folder" else 1
    config = TrainConfig(dataset=dataset, backbone="smallcnn", image_size=16)
    torch.manual_seed(seed)
    model = build_model("smallcnn", 16, in_channels=channels)
    indices = np.random.default_rng(seed).permutation(len(split.dataset))[:50]
    model.train()

    baseline = embed_indices(model, split, indices, config, channels, torch.device("cpu"), batch_size=50, num_workers=0)
    pooled = embed_indices(model, split, indices, config, channels, torch.device("cpu"), batch_size=7, num_workers=2)

    assert model.training, "the model's mode must be restored"
    np.testing.assert_array_equal(pooled.indices, indices)
    np.testing.assert_array_equal(pooled.labels, split.dataset.labels[indices])
    np.testing.assert_array_equal(baseline.indices, pooled.indices)
    # Per-sample inference is independent of its batch up to BLAS rounding.
    np.testing.assert_allclose(pooled.vectors, baseline.vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled.vectors, axis=1), 1.0, atol=1e-5)
    # Same batches with and without workers: bit for bit.
    same_batches = embed_indices(model, split, indices, config, channels, torch.device("cpu"), batch_size=7,
                                 num_workers=0)
    np.testing.assert_array_equal(same_batches.vectors, pooled.vectors)


def test_in_memory_data_sets_embed_without_loader_workers_and_image_folders_with_them():
    from ecaml.data.loading import default_num_workers
    from ecaml.eval.evaluate import _embedding_workers

    for dataset in ("digits", "glyphs", "fashion-mnist"):
        assert _embedding_workers(35_000, 1024, dataset) == 0
    assert _embedding_workers(35_000, 1024, "folder") == default_num_workers() >= 1
    assert _embedding_workers(100, 1024, "folder") == 0  # a few batches: starting a worker costs more than it saves
