"""The Embeddings page while a large aligned UMAP computes: its quick first layout shows at once, then the final one."""

from __future__ import annotations

import threading
import time

import numpy as np
from apptest_support import assert_clean, open_page
from map_support import finish_background_jobs, maps, open_ready

from app import projection_jobs
from ecaml.runs import load_run
from ecaml.serve import projection, umap_fit

FIRST_LANDMARKS = 100  # the shipped digits' 896 unseen images count as a large map


def test_the_page_shows_the_first_layout_while_the_final_umap_computes_then_switches_to_it(
    monkeypatch, fresh_cache, shipped_runs
):
    monkeypatch.setattr(projection, "FIRST_LAYOUT_LANDMARKS", FIRST_LANDMARKS)
    final_may_finish = threading.Event()
    real_layout = umap_fit.aligned_layout

    def held_final_layout(vectors, *args):
        if len(vectors[0]) > FIRST_LANDMARKS:  # the final layout waits until the test has looked at the page
            final_may_finish.wait(timeout=300)
        return real_layout(vectors, *args)

    monkeypatch.setattr(umap_fit, "aligned_layout", held_final_layout)
    runs = [load_run(shipped_runs / name) for name in ("digits-ec-off", "digits-ec-on")]
    settings = dict(method="umap", cache_dir=fresh_cache, **projection_jobs.PROJECTION)
    try:
        app = open_ready(open_page, "embeddings")  # embeddings cached, PCA shown, no UMAP started
        app.button(key="compute_umap").click().run()
        deadline = time.monotonic() + 180
        while projection.first_layout(runs, **settings) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first = projection.first_layout(runs, **settings)
        assert first is not None and first[0].first_layout
        app.run()
        assert_clean(app)
        assert any("first aligned UMAP layout" in info.value for info in app.info)
        (shown,) = maps(app)
        for panel, expected in enumerate(first):  # the first layout itself, not the PCA maps
            assert np.array_equal(shown.frames(panel)[0], expected.coords)
        assert np.array_equal(shown.ints("dataset_indices"), first[0].indices)
    finally:
        final_may_finish.set()
    finish_background_jobs()
    app.run()
    assert_clean(app)
    assert not any("first aligned UMAP layout" in info.value for info in app.info)
    final = projection.project_runs(runs, **settings)  # read from the cache now
    assert not final[0].first_layout
    (shown,) = maps(app)
    for panel, expected in enumerate(final):
        assert np.array_equal(shown.frames(panel)[0], expected.coords)
        assert not np.array_equal(expected.coords, first[panel].coords)
