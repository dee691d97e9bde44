"""Recall@K for a K the split cannot support (K > N - 1 neighbours) is dropped with a warning, and the run says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecaml.eval.evaluate import Embeddings, score
from ecaml.store.run_files import read_metrics
from tests.conftest import train_tiny


def test_score_warns_and_names_the_dropped_ks():
    rng = np.random.default_rng(0)
    embeddings = Embeddings(vectors=rng.normal(size=(9, 4)).astype(np.float32), labels=np.repeat(np.arange(3), 3),
                            indices=np.arange(9))
    with pytest.warns(UserWarning, match=r"Recall@16, 32 dropped.*9 images.*K <= 8"):
        metrics = score(embeddings, [1, 8, 16, 32])
    assert {"recall@1", "recall@8"} <= set(metrics) and not {"recall@16", "recall@32"} & set(metrics)


def test_a_run_records_the_dropped_ks_in_metrics_json(tmp_path):
    """digits holds out 5 unseen classes of about 180 images: Recall@100000 cannot be measured on them."""
    with pytest.warns(UserWarning, match="Recall@100000 dropped"):
        train_tiny(tmp_path / "run", max_steps=2, recall_ks=[1, 2, 100_000])
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["dropped_recall_ks"] == [100_000]
    assert "recall@100000" not in stored and "recall@2" in stored
    assert "dropped_recall_ks" not in read_metrics(tmp_path / "run")  # the readers still get numbers only
