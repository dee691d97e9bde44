"""The Embeddings page: one aligned panel per run, PCA and UMAP (computed in the background), the selection helper,
and the app's start-up warm-up of the projection cache."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from apptest_support import assert_clean, open_page, plotly_array, plotly_specs, run_key

from app import projection_jobs
from app.views import embeddings  # the repository root is on sys.path (conftest.py)
from ecaml import projection
from ecaml.runs import load_run

JOB_TIMEOUT_S = 180

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


def test_the_caption_says_to_click_or_lasso_for_the_images():
    app = open_page("embeddings", PCA)
    assert any("Click a point or lasso a group to see the images" in caption.value for caption in app.caption)


def button_labels(app) -> list[str]:
    return [button.label for button in app.button]


def wait_for_jobs(cache=None) -> list[projection_jobs.ProjectionJob]:
    """The background projection jobs of this process (writing into ``cache`` when given), once finished."""
    cache = str(cache.resolve()) if cache is not None else None
    jobs = [job for key, job in projection_jobs._projection_jobs().items() if cache is None or key[1] == cache]
    for job in jobs:
        job.thread.join(timeout=JOB_TIMEOUT_S)
        assert not job.running, "the background projection did not finish in time"
    return jobs


def shipped(shipped_runs) -> list:
    return [load_run(shipped_runs / name) for name in ("digits-ec-off", "digits-ec-on")]


def test_without_a_cached_umap_the_page_opens_on_pca_with_a_button(fresh_cache):
    app = open_page("embeddings")
    assert_clean(app)
    assert app.radio(key="projection_method").value == "pca"
    assert embeddings.COMPUTE_UMAP in button_labels(app)
    assert embeddings.COMPUTE_UMAP == "Compute aligned UMAP (about half a minute the first time; cached afterwards)"
    assert panel_titles(app) == ["digits-ec-off · EC off", "digits-ec-on · EC λ=0.13"]
    started = [key for key in projection_jobs._projection_jobs() if key[:2] == ("umap", str(fresh_cache.resolve()))]
    assert not started, "opening the page must not start the UMAP"


@pytest.mark.skipif(
    os.environ.get("ECAML_SKIP_UMAP_TEST") == "1", reason="UMAP takes tens of seconds on a cold numba cache"
)
def test_the_button_computes_the_aligned_umap_in_the_background_then_the_page_opens_on_it(shipped_runs):
    app = open_page("embeddings")
    if app.radio(key="projection_method").value == "pca":  # not cached yet in this test session
        app.button(key="compute_umap").click().run()
        assert_clean(app)
        assert app.radio(key="projection_method").value == "umap"
        # Meanwhile: the PCA maps, and a note that the page switches by itself.
        assert any("Computing the aligned UMAP maps in the background" in info.value for info in app.info)
        assert len(plotly_specs(app)) == 2
        wait_for_jobs()
        app.run()  # what the page's polling fragment does when the job ends
    assert_clean(app)
    assert not app.info
    assert app.radio(key="projection_method").value == "umap"
    panels = [json.loads(spec)["data"] for spec in plotly_specs(app)]
    assert len(panels) == 2
    indices = [sorted(int(i) for trace in traces for i in plotly_array(trace["customdata"])) for traces in panels]
    assert indices[0] == indices[1]
    assert all(np.isfinite(plotly_array(trace["x"])).any() for traces in panels for trace in traces)
    # Cached now: a new visit opens on the UMAP, and says it is ready.
    again = open_page("embeddings")
    assert_clean(again)
    assert again.radio(key="projection_method").value == "umap"
    assert again.radio(key="projection_method").options == ["UMAP, aligned across runs", "PCA (instant)"]
    assert embeddings.COMPUTE_UMAP not in button_labels(again)
    assert projection.is_projection_cached(shipped(shipped_runs), method="umap", **projection_jobs.PROJECTION)


def test_a_failing_background_projection_shows_an_error_and_the_pca_maps(monkeypatch, fresh_cache, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("out of numba")

    monkeypatch.setattr(projection, "warm_projection_cache", fail)
    app = open_page("embeddings", {"projection_method": "umap"})
    with caplog.at_level(logging.ERROR, logger="ecaml.app"):
        (failed,) = wait_for_jobs(fresh_cache)
    assert "computing the umap projection" in caplog.text and "out of numba" in caplog.text
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and "Could not compute the aligned UMAP: out of numba." in app.error[0].value
    assert len(plotly_specs(app)) == 2  # the PCA maps still show
    app.button(key="retry_umap").click().run()  # forgets the failed job and starts a new one
    assert not app.exception
    (retried,) = wait_for_jobs(fresh_cache)
    assert retried is not failed and "out of numba" in str(retried.error)


def test_the_app_warms_the_projection_cache_once_in_the_background(monkeypatch, fresh_cache, shipped_runs):
    runs = shipped(shipped_runs)
    assert not projection.is_projection_cached(runs, method="pca", cache_dir=fresh_cache, **projection_jobs.PROJECTION)
    monkeypatch.setenv("ECAML_WARM_CACHE", "pca")  # the PCA maps: the same machinery as the UMAP, in a second
    app = open_page("compare")
    assert_clean(app)
    warmup = projection_jobs.start_projection_warmup()
    assert warmup is not None and warmup.method == "pca" and warmup.run_names == ["digits-ec-off", "digits-ec-on"]
    warmup.thread.join(timeout=JOB_TIMEOUT_S)
    assert warmup.error is None
    assert projection.is_projection_cached(runs, method="pca", cache_dir=fresh_cache, **projection_jobs.PROJECTION)
    open_page("retrieval")
    assert projection_jobs.start_projection_warmup() is warmup  # once per process (and cache folder)


def test_no_warm_up_when_turned_off(fresh_cache):
    assert projection_jobs.warm_projection_setting() is None  # ECAML_WARM_CACHE=0 (conftest.py)
    assert_clean(open_page("compare"))
    assert projection_jobs.start_projection_warmup() is None
    assert not (fresh_cache / "projections").exists()
