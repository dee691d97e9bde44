"""Importing vectors of a trained run's own images, so that pages line the two up item by item.

``ecaml import embeddings FILE --out RUN --same-items-as TRAINED`` says the file's
rows are the unseen images of ``TRAINED``'s split (its data set, data folder and
class split): matched by path when the file has ``paths`` (each a file of that
data set, under ``--image-root`` or its data folder), else by order and labels
(row i is the i-th unseen image, as ``python -m ecaml embed TRAINED --split unseen``
writes them, with its class: a name or a class id). The import then records each
row's dataset index and the trained run's data settings, so it reads as a run over
that data set: the same images, thumbnails and split, aligned maps and the
neighbourhood change between the two. A file that is not those items is refused
with one line naming the first row that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecaml.data.imported import DATASET_INDICES, SAME_ITEMS_KEY, ImportInputError, read_manifest


@dataclass
class Alignment:
    run_name: str
    config: dict  # the trained run's config.json: which data set, folder and split the rows belong to
    dataset_indices: np.ndarray  # int64 [N]: row i is image dataset_indices[i] of that data set

    def manifest_entry(self) -> dict:
        return {SAME_ITEMS_KEY: {"run": self.run_name, "config": self.config}}

    def items_entry(self) -> dict:
        return {DATASET_INDICES: self.dataset_indices}


def align_with_run(imported, run_dir: str | Path, source_name: str, image_root) -> Alignment:
    """The dataset index of every row of ``imported`` (an ``ImportedSet``) in ``run_dir``'s unseen part, or a refusal."""
    from ecaml.eval.evaluate import split_for
    from ecaml.runs import RunError, load_run

    try:
        run = load_run(Path(run_dir))
    except RunError as error:
        raise ImportInputError(f"--same-items-as: {error}") from None
    if run.kind == "imported" and SAME_ITEMS_KEY not in read_manifest(run.path):
        raise ImportInputError(f"--same-items-as {run.name}: an import of its own items, not a run over a data set; "
                               "give the trained run")
    if imported.split is not None:
        raise ImportInputError(f"{source_name}: drop 'split' with --same-items-as: the rows are {run.name}'s unseen part")
    split = split_for(run.config)
    unseen = split.indices("unseen")
    if imported.paths is not None:
        indices = _matched_by_path(imported.paths, split.dataset, unseen, image_root, run.name, source_name)
    else:
        indices = _matched_by_order(len(imported.labels), unseen, run.name, source_name)
    _check_labels(imported, split.dataset, indices, run.name, source_name)
    return Alignment(run.name, run.config.to_dict(), indices)


def _matched_by_order(count: int, unseen: np.ndarray, run_name: str, source_name: str) -> np.ndarray:
    if count != len(unseen):
        raise ImportInputError(f"{source_name}: {count:,} rows, but {run_name}'s unseen part holds {len(unseen):,} images "
                               f"(export them in order with: python -m ecaml embed {run_name} --split unseen)")
    return unseen.astype(np.int64)


def _matched_by_path(paths: np.ndarray, dataset, unseen: np.ndarray, image_root, run_name: str,
                     source_name: str) -> np.ndarray:
    if dataset.paths is None:
        raise ImportInputError(f"{source_name}: {run_name}'s images ({dataset.name}) are not files, so rows cannot be "
                                "matched by path; drop 'paths' and give the rows in the order of its unseen part")
    position = {str(Path(p).resolve()): i for i, p in enumerate(dataset.paths)}
    root = Path(image_root)  # given: an import with paths is refused without --image-root before it gets here
    indices = np.asarray([position.get(str((root / p).resolve()), -1) for p in paths], dtype=np.int64)
    outside = np.flatnonzero(~np.isin(indices, unseen))
    if len(outside):
        row = int(outside[0])
        raise ImportInputError(f"{source_name}: row {row} ({str(paths[row])[:80]!r}) is not an image of {run_name}'s unseen "
                               f"part ({len(outside):,} rows are not)")
    if len(np.unique(indices)) != len(indices) or len(indices) != len(unseen):
        raise ImportInputError(f"{source_name}: its paths name {len(np.unique(indices)):,} distinct images of "
                               f"{run_name}'s unseen part in {len(indices):,} rows; it holds {len(unseen):,}, each once")
    return indices


def _check_labels(imported, dataset, indices: np.ndarray, run_name: str, source_name: str) -> None:
    """Each row's label is its image's class, by name or by class id."""
    theirs = np.asarray(dataset.labels)[indices]
    names = np.asarray(dataset.class_names, dtype=str)[theirs]
    ours = np.asarray(imported.class_names, dtype=str)[imported.labels]
    differs = np.flatnonzero((ours != names) & (ours != theirs.astype(str)))
    if len(differs):
        row = int(differs[0])
        raise ImportInputError(f"{source_name}: row {row} is labelled {str(ours[row])!r}, but image {int(indices[row])} of "
                               f"{run_name} is a {str(names[row])!r} (class {int(theirs[row])}): not the same items "
                               f"({len(differs):,} rows differ)")
