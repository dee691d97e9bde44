"""The Retrieval page: query sources, neighbour captions per run, uploads good and bad."""

from __future__ import annotations

import io

from apptest_support import assert_clean, image_captions, open_page, run_key
from PIL import Image


def neighbour_captions(app) -> list[list[str]]:
    """The captions of each run's neighbour grid (the first image element is the query)."""
    return image_captions(app)[1:]


def png_bytes(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, color=128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_browsing_shows_marked_neighbours_for_each_run():
    app = open_page("retrieval")
    assert_clean(app)
    grids = neighbour_captions(app)
    assert len(grids) == 2 and all(len(grid) == 8 for grid in grids)
    assert all(caption[0] in "✓✗" for grid in grids for caption in grid)
    assert [subheader.value for subheader in app.markdown if subheader.value.startswith("####")] == [
        "#### digits-ec-off",
        "#### digits-ec-on",
    ]
    assert any("answered in" in caption.value for caption in app.caption)


def test_picking_another_query_changes_the_neighbours():
    app = open_page("retrieval")
    before = neighbour_captions(app)
    query_before = image_captions(app)[0]
    app.selectbox(key="query_class").set_value(8).run()
    assert_clean(app)
    assert image_captions(app)[0] != query_before
    assert neighbour_captions(app) != before
    app.slider(key="neighbours_k").set_value(3).run()
    assert all(len(grid) == 3 for grid in neighbour_captions(app))


def test_random_and_disagreement_queries():
    app = open_page("retrieval")
    app.radio(key="query_source").set_value("random").run()
    assert_clean(app)
    assert app.button(key="random_again")
    app.radio(key="query_source").set_value("disagree").run()
    assert_clean(app)
    found = [box for box in app.selectbox if box.key == "query_disagreement"]
    if found:  # tiny runs may agree everywhere; then the page says so
        assert found[0].options
        assert len(neighbour_captions(app)) == 2
    else:
        assert any("agree on every query" in info.value for info in app.info)


def test_disagreement_needs_two_runs(shipped_runs):
    app = open_page("retrieval", {"query_source": "disagree"})
    app.multiselect(key="runs_retrieval").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert any("at least two runs" in info.value for info in app.info)


def test_an_uploaded_image_is_searched_without_marks():
    app = open_page("retrieval", {"query_source": "upload"})
    app.file_uploader(key="query_upload").set_value(("grey.png", png_bytes(), "image/png")).run()
    assert_clean(app)
    grids = neighbour_captions(app)
    assert len(grids) == 2 and all(len(grid) == 8 for grid in grids)
    assert not any(caption[0] in "✓✗" for grid in grids for caption in grid)


def test_a_non_image_upload_is_one_error_and_the_page_keeps_working():
    app = open_page("retrieval", {"query_source": "upload"})
    app.file_uploader(key="query_upload").set_value(("notes.png", b"this is not a picture", "image/png")).run()
    assert not app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith("Could not read this upload")
    assert "\n" not in app.error[0].value
    app.file_uploader(key="query_upload").set_value(("empty.png", b"", "image/png")).run()
    assert not app.exception and len(app.error) == 1
    app.radio(key="query_source").set_value("browse").run()
    assert_clean(app)
    assert len(neighbour_captions(app)) == 2
