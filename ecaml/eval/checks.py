"""Checking what the metrics are given: embeddings, labels and Ks, each refused with a one-line reason."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np


def _validated_embeddings(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, D]; got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"embeddings are empty (shape {array.shape})")
    is_real = np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)
    if not is_real:
        raise ValueError(f"embeddings must be real numbers; got dtype {array.dtype}")
    vectors = array.astype(np.float32, copy=False)
    bad_rows = ~np.isfinite(vectors).all(axis=1)
    if bad_rows.any():
        raise ValueError(
            f"embeddings contain NaN or inf in {int(bad_rows.sum())} row(s), "
            f"first at row {int(np.argmax(bad_rows))}"
        )
    return vectors


def _validated_labels(
    labels: np.ndarray, expected_length: int, prefix: str = ""
) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{prefix}labels must be a 1-D array [N]; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{prefix}labels must be integers; got dtype {array.dtype}")
    if len(array) != expected_length:
        raise ValueError(
            f"got {expected_length} {prefix}embeddings but {len(array)} {prefix}labels"
        )
    return array


def _validated_recall_ks(recall_ks: Sequence[int], largest: int) -> list[int]:
    ks = list(recall_ks)
    if not ks:
        raise ValueError("recall_ks is empty; give at least one K")
    for k in ks:
        _check_k_allowed(k, largest, what="recall K")
    return sorted(set(int(k) for k in ks))


def _check_k_allowed(k: int, largest: int, what: str) -> None:
    if not _is_positive_integer(k):
        raise ValueError(f"{what} must be a positive integer; got {k!r}")
    if k > largest:
        raise ValueError(f"{what}={k} is too large: the largest K allowed here is {largest}")


def _check_same_dimension(query_vectors: np.ndarray, gallery_vectors: np.ndarray) -> None:
    query_dim, gallery_dim = query_vectors.shape[1], gallery_vectors.shape[1]
    if query_dim != gallery_dim:
        raise ValueError(f"query and gallery dimensions differ: {query_dim} vs {gallery_dim}")


def _is_positive_integer(value: object) -> bool:
    # bool is an Integral, but True as a K or a pair count is surely a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
