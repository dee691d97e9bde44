"""Importing vectors of a trained run's own unseen images (--same-items-as): matched by order and labels, or by path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecaml.cli import main
from ecaml.eval.evaluate import split_for
from ecaml.serve.embeddings_cache import cached_embeddings
from ecaml.runs import load_run
from ecaml.serve.neighbourhood import neighbourhood_change
from tests.conftest import train_tiny


def exported(run_dir, tmp_path, capsys) -> dict:
    """``python -m ecaml embed RUN --split unseen``: the run's unseen images in order, as a user exports them."""
    assert main(["embed", str(run_dir), "--split", "unseen", "--out", str(tmp_path / "ours.npz")]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "ours.npz") as archive:
        return {name: archive[name] for name in archive.files}


def their_vectors(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Another pipeline's embedding of the same images: a random rotation of ours plus noise."""
    generator = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(generator.normal(size=(vectors.shape[1],) * 2))
    return (vectors @ rotation + 0.05 * generator.normal(size=vectors.shape)).astype(np.float32)


def import_cli(source, out, same_items_as, *extra) -> int:
    return main(["import", "embeddings", str(source), "--out", str(out), "--same-items-as", str(same_items_as), *extra])


def test_vectors_in_the_order_of_a_runs_unseen_part_line_up_with_it(tiny_run, tmp_path, capsys):
    ours = exported(tiny_run, tmp_path, capsys)
    theirs = their_vectors(ours["embeddings"])
    names = np.asarray(split_for(load_run(tiny_run).config).dataset.class_names)[ours["labels"]]
    np.savez(tmp_path / "theirs.npz", embeddings=theirs, labels=names)  # labelled by class name, no indices
    assert import_cli(tmp_path / "theirs.npz", tmp_path / "imported", tiny_run) == 0, capsys.readouterr().err

    trained, imported = load_run(tiny_run), load_run(tmp_path / "imported")
    assert imported.kind == "imported" and imported.config.dataset == "digits"
    first, second = cached_embeddings(trained), cached_embeddings(imported)
    assert np.array_equal(first.indices, second.indices) and np.array_equal(first.labels, second.labels)
    norms = np.linalg.norm(theirs, axis=1, keepdims=True)
    assert np.allclose(second.vectors, theirs / norms, atol=1e-6)
    change = neighbourhood_change(first, second)
    assert np.isfinite(change.jaccard).all() and 0 < change.jaccard.mean() < 1


def test_rows_out_of_order_or_of_other_images_are_refused_in_one_line(tiny_run, tmp_path, capsys):
    ours = exported(tiny_run, tmp_path, capsys)
    labels = ours["labels"]
    swapped = np.flatnonzero(labels != labels[0])[0]  # the first row of another class than row 0
    order = np.arange(len(labels))
    order[[0, swapped]] = order[[swapped, 0]]
    cases = {
        "shuffled": ({"embeddings": ours["embeddings"][order], "labels": labels[order]}, "row 0 is labelled"),
        "short": ({"embeddings": ours["embeddings"][:-1], "labels": labels[:-1]}, f"{len(labels) - 1:,} rows, but"),
        "split": ({"embeddings": ours["embeddings"], "labels": labels, "split": np.full(len(labels), "unseen")},
                  "drop 'split'"),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        assert import_cli(tmp_path / f"{name}.npz", tmp_path / name, tiny_run) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and expected in error and "np." not in error, error
        assert not (tmp_path / name).exists() and not list(tmp_path.glob(f".{name}.*"))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run on a folder of real digit scans (scikit-learn's), 8 classes of 12 images as PNG files."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("scans")
    digits = load_digits()
    for label in range(8):
        (root / f"digit-{label}").mkdir()
        for number, row in enumerate(np.flatnonzero(digits.target == label)[:12]):
            Image.fromarray((digits.images[row] * 255 / 16).astype(np.uint8)).save(root / f"digit-{label}" / f"{number}.png")
    run_dir = tmp_path_factory.mktemp("runs") / "scans"
    train_tiny(run_dir, dataset="folder", data_root=str(root), max_steps=2, image_size=16)
    return run_dir, root


def test_rows_with_paths_are_matched_to_the_images_whatever_their_order(folder_run, tmp_path, capsys):
    run_dir, root = folder_run
    split = split_for(load_run(run_dir).config)
    unseen = split.indices("unseen")
    shuffled = np.random.default_rng(0).permutation(unseen)
    relative = np.asarray([str(Path(p).resolve().relative_to(root.resolve())) for p in split.dataset.paths])
    paths = relative[shuffled]
    vectors = np.random.default_rng(1).normal(size=(len(shuffled), 6)).astype(np.float32)
    names = np.asarray(split.dataset.class_names)[split.dataset.labels[shuffled]]
    np.savez(tmp_path / "paths.npz", embeddings=vectors, labels=names, paths=paths)
    assert import_cli(tmp_path / "paths.npz", tmp_path / "by-path", run_dir, "--image-root", str(root)) == 0, \
        capsys.readouterr().err
    imported = cached_embeddings(load_run(tmp_path / "by-path"))
    assert np.array_equal(imported.indices, unseen)  # the trained run's images, in its order
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(imported.vectors, expected[np.argsort(shuffled)], atol=1e-6)
    manifest = json.loads((tmp_path / "by-path" / "imported.json").read_text())
    assert manifest["same_items_as"]["run"] == run_dir.name

    seen_image = split.indices("train")[0]
    paths[3] = relative[seen_image]
    np.savez(tmp_path / "seen.npz", embeddings=vectors, labels=names, paths=paths)
    assert import_cli(tmp_path / "seen.npz", tmp_path / "seen", run_dir, "--image-root", str(root)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "row 3" in error and "is not an image of scans's unseen part" in error, error
    assert not (tmp_path / "seen").exists()
