"""The Embeddings page: one aligned panel per run, PCA and UMAP, the selection helper."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from apptest_support import assert_clean, open_page, plotly_array, plotly_specs, run_key

from app.views import embeddings  # the repository root is on sys.path (conftest.py)

PCA = {"projection_method": "pca"}


def panel_titles(app) -> list[str]:
    return [json.loads(spec)["layout"]["title"]["text"] for spec in plotly_specs(app)]


def test_pca_gives_one_panel_per_run_coloured_by_class():
    app = open_page("embeddings", PCA)
    assert_clean(app)
    assert app.radio(key="projection_method").value == "pca"
    assert panel_titles(app) == ["digits-ec-off · EC off", "digits-ec-on · EC λ=0.13"]
    traces = json.loads(plotly_specs(app)[0])["data"]
    assert sorted(trace["name"] for trace in traces) == ["5", "6", "7", "8", "9"]  # the unseen digits
    assert all(plotly_array(trace["customdata"]).ndim == 1 for trace in traces)  # each point's dataset index


def test_changing_the_runs_changes_the_panels(shipped_runs):
    app = open_page("embeddings", PCA)
    app.multiselect(key="runs_embeddings").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert panel_titles(app) == ["digits-ec-on · EC λ=0.13"]


def test_selected_points_are_read_from_their_customdata():
    class Selection(dict):
        __getattr__ = dict.__getitem__

    points = [{"customdata": {"0": 12}}, {"customdata": 7}, {"customdata": [12]}, {"customdata": None}, {}]
    assert embeddings.selected_indices(Selection(selection=Selection(points=points))) == [12, 7]
    assert embeddings.selected_indices(None) == []


@pytest.mark.skipif(
    os.environ.get("ECAML_SKIP_UMAP_TEST") == "1", reason="UMAP takes tens of seconds on a cold numba cache"
)
def test_aligned_umap_panels_share_their_points():
    app = open_page("embeddings")
    assert_clean(app)
    assert app.radio(key="projection_method").value == "umap"
    panels = [json.loads(spec)["data"] for spec in plotly_specs(app)]
    assert len(panels) == 2
    indices = [sorted(int(i) for trace in traces for i in plotly_array(trace["customdata"])) for traces in panels]
    assert indices[0] == indices[1]
    assert all(np.isfinite(plotly_array(trace["x"])).any() for traces in panels for trace in traces)
