"""Every page: renders cleanly with runs, explains itself without runs; the About page's formulas and diagram."""

from __future__ import annotations

import pytest
from apptest_support import assert_clean, open_page

PAGES = ["compare", "embeddings", "retrieval", "train", "imports", "about"]
RUN_PAGES = ["compare", "embeddings", "retrieval"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_errors(page):
    app = open_page(page, {"projection_method": "pca"})
    assert_clean(app)
    assert len(app.title) == 1


@pytest.mark.parametrize("missing", [True, False], ids=["no-checkpoints-folder", "empty-checkpoints-folder"])
def test_without_runs_the_pages_say_how_to_get_some(monkeypatch, tmp_path, missing):
    checkpoints = tmp_path / "checkpoints"
    if not missing:
        checkpoints.mkdir()
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(checkpoints))
    for page in RUN_PAGES:
        app = open_page(page)
        assert_clean(app)
        assert any("No usable runs yet" in info.value and "Train" in info.value for info in app.info), page
        assert app.get("page_link"), page


def test_without_shipped_runs_your_runs_are_used_and_the_page_says_why(
    monkeypatch, tmp_path, shipped_runs, app_environment
):
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("ECAML_RUNS_DIR", str(shipped_runs))
    app = open_page("compare")
    assert_clean(app)
    assert any("No shipped runs" in info.value for info in app.info)
    assert list(app.dataframe[0].value.columns) == [
        "digits-ec-off (yours)",
        "digits-ec-on (yours)",
        "Δ digits-ec-on (yours)",
    ]


def test_about_shows_the_formulas_and_the_gradient_diagram():
    app = open_page("about")
    assert_clean(app)
    formulas = " ".join(latex.value for latex in app.latex)
    assert "\\log E" in formulas and "R(W)" in formulas and "\\mathrm{sg}(f)" in formulas
    diagrams = app.get("graphviz_chart")
    assert len(diagrams) == 1 and "stop-gradient" in diagrams[0].proto.spec
