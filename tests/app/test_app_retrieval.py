"""The Retrieval page: it opens where the runs disagree; classes found by typing, images by number; neighbour
captions per run; uploads good and bad; embeddings from background jobs."""

from __future__ import annotations

import io

from apptest_support import assert_clean, image_captions, open_page, run_key
from map_support import open_ready
from PIL import Image

from app.views import retrieval as page
from ecaml.data import load_split
from ecaml.runs import load_run
from ecaml.serve.retrieval import build_index, disagreement_queries



def neighbour_captions(app) -> list[list[str]]:
    """The captions of each run's neighbour grid (the first image element is the query)."""
    return image_captions(app)[1:]


def png_bytes(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, color=128).save(buffer, format="PNG")
    return buffer.getvalue()


def open_retrieval(state: dict | None = None):
    return open_ready(open_page, "retrieval", state)


def test_the_page_opens_on_the_query_where_the_runs_disagree_most(shipped_runs, session_cache):
    app = open_retrieval()
    assert_clean(app)
    assert app.radio(key="query_source").value == "disagree"
    indexes = [build_index(load_run(shipped_runs / name), "unseen", session_cache) for name in ("digits-ec-off", "digits-ec-on")]
    expected = disagreement_queries(indexes, k=4, limit=50)
    box = app.selectbox(key="query_disagreement")
    assert expected and box.value == expected[0] and len(box.options) == len(expected)
    grids = neighbour_captions(app)
    assert len(grids) == 2 and all(len(grid) == 8 for grid in grids)
    assert [markdown.value for markdown in app.markdown if markdown.value.startswith("####")] == [
        "#### digits-ec-off",
        "#### digits-ec-on",
    ]
    assert any("answered in" in caption.value for caption in app.caption)


def test_a_class_is_found_by_typing_part_of_its_name():
    app = open_retrieval({"query_source": "browse"})
    assert_clean(app)
    assert app.selectbox(key="query_class").options == ["5", "6", "7", "8", "9"]
    app.text_input(key="query_class_search").set_value("7").run()
    assert_clean(app)
    assert app.selectbox(key="query_class").options == ["7"]
    assert image_captions(app)[0] == ["query: class 7"]
    assert all(len(grid) == 8 for grid in neighbour_captions(app))
    app.slider(key="neighbours_k").set_value(3).run()
    assert all(len(grid) == 3 for grid in neighbour_captions(app))
    app.text_input(key="query_class_search").set_value("3").run()  # a seen digit: not offered
    assert not app.exception and not neighbour_captions(app)
    assert any("No unseen class name contains" in caption.value for caption in app.caption)


def test_with_many_classes_only_the_first_matches_are_listed(glyph_runs):
    app = open_retrieval({"query_source": "browse"})
    assert_clean(app)
    split = load_split("glyphs")
    unseen = split.classes("unseen")
    assert len(unseen) > page.MAX_CLASS_OPTIONS
    assert len(app.selectbox(key="query_class").options) == page.MAX_CLASS_OPTIONS
    assert any(f"{len(unseen)} classes match" in caption.value for caption in app.caption)
    wanted = split.dataset.class_names[unseen[-1]]
    app.text_input(key="query_class_search").set_value(wanted).run()
    options = app.selectbox(key="query_class").options
    assert wanted in options and all(wanted.lower() in option.lower() for option in options)


def test_a_query_by_image_number(shipped_runs):
    app = open_retrieval({"query_source": "number"})
    assert_clean(app)
    split = load_split("digits")
    unseen = split.indices("unseen")
    box = app.number_input(key="query_image")
    chosen = int(unseen[123])
    box.set_value(chosen).run()
    assert_clean(app)
    assert image_captions(app)[0] == [f"query: class {split.dataset.class_name(chosen)}"]
    assert len(neighbour_captions(app)) == 2
    seen = int(split.indices("train")[-1])
    if seen > unseen.min():  # a seen image inside the number range: refused in one line
        app.number_input(key="query_image").set_value(seen).run()
        assert not app.exception and not neighbour_captions(app)
        assert any(f"Image {seen} is not of an unseen class" in caption.value for caption in app.caption)


def nearest_is_right(index, image: int) -> bool:
    """Whether the run's nearest neighbour of ``image`` is of its class, asked one query at a time as the page does."""
    return index.query_by_index(image, 1).neighbours[0].correct


def telling_image(indexes, candidates) -> int:
    """The first candidate one run gets right and another wrong; failing that the first both get right."""
    verdicts = {int(i): [nearest_is_right(index, int(i)) for index in indexes] for i in candidates}
    split = [i for i, v in verdicts.items() if any(v) and not all(v)]
    right = [i for i, v in verdicts.items() if all(v)]
    return (split or right)[0]


def shipped_indexes(shipped_runs, cache) -> list:
    return [build_index(load_run(shipped_runs / name), "unseen", cache) for name in ("digits-ec-off", "digits-ec-on")]


def shown_query(app) -> int:
    caption = next(c.value for c in app.caption if c.value.startswith("Dataset image "))
    return int(caption.split()[2].rstrip("."))


def test_find_a_class_opens_on_an_image_that_tells_the_runs_apart(shipped_runs, session_cache):
    indexes = shipped_indexes(shipped_runs, session_cache)
    split = load_split("digits")
    app = open_retrieval({"query_source": "browse"})
    assert_clean(app)
    for name in ("5", "8"):
        app.text_input(key="query_class_search").set_value(name).run()
        assert_clean(app)
        label = split.dataset.class_names.index(name)
        members = indexes[0].class_members(label)
        expected = telling_image(indexes, members)
        assert shown_query(app) == expected
        assert app.number_input(key=f"query_number_{label}").value == list(members).index(expected) + 1
        assert any(nearest_is_right(index, expected) for index in indexes)


def test_by_image_number_opens_on_an_image_that_tells_the_runs_apart(shipped_runs, session_cache):
    indexes = shipped_indexes(shipped_runs, session_cache)
    app = open_retrieval({"query_source": "number"})
    assert_clean(app)
    expected = telling_image(indexes, load_split("digits").indices("unseen"))
    assert app.number_input(key="query_image").value == expected == shown_query(app)
    assert any(nearest_is_right(index, expected) for index in indexes)  # not an image every run gets wrong


def test_the_image_number_box_keeps_what_was_typed_and_says_why_it_is_no_query():
    split = load_split("digits")
    seen = int(split.indices("train").min())
    assert seen < int(split.indices("unseen").min())  # below the first unseen number: the box used to snap up to it
    app = open_retrieval({"query_source": "number"})
    box = app.number_input(key="query_image")
    # No upper bound in the browser: past one, a typed number stayed in the box and never reached the page.
    assert box.proto.has_min and box.proto.min == 0 and not box.proto.has_max
    box.set_value(seen).run()
    assert not app.exception and not neighbour_captions(app)
    assert app.number_input(key="query_image").value == seen
    why = [c.value for c in app.caption if c.value.startswith(f"Image {seen} is not of an unseen class")]
    assert len(why) == 1 and f"class {split.dataset.class_name(seen)}" in why[0] and "\n" not in why[0]
    app.number_input(key="query_image").set_value(999_999).run()
    assert not app.exception and not neighbour_captions(app)
    assert app.number_input(key="query_image").value == 999_999
    highest = len(split.dataset) - 1
    assert [c.value for c in app.caption if "999,999" in c.value] == [
        f"There is no image 999,999: this data set's images are numbered 0 to {highest:,}."]


def test_random_queries():
    app = open_retrieval({"query_source": "random"})
    assert_clean(app)
    assert app.button(key="random_again")
    assert len(neighbour_captions(app)) == 2


def test_with_one_run_there_is_no_disagreement_to_open_on(shipped_runs):
    app = open_retrieval()
    app.multiselect(key="runs_retrieval").set_value([run_key(shipped_runs, "digits-ec-on")]).run()
    assert_clean(app)
    assert "disagree" not in [option for option in app.radio(key="query_source").options]
    assert len(neighbour_captions(app)) == 1


def test_an_uploaded_image_is_searched_without_marks():
    app = open_retrieval({"query_source": "upload"})
    app.file_uploader(key="query_upload").set_value(("grey.png", png_bytes(), "image/png")).run()
    assert_clean(app)
    grids = neighbour_captions(app)
    assert len(grids) == 2 and all(len(grid) == 8 for grid in grids)
    assert not any(caption[0] in "✓✗" for grid in grids for caption in grid)


def test_a_non_image_upload_is_one_error_and_the_page_keeps_working():
    app = open_retrieval({"query_source": "upload"})
    app.file_uploader(key="query_upload").set_value(("notes.png", b"this is not a picture", "image/png")).run()
    assert not app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith("Could not read this upload")
    assert "\n" not in app.error[0].value
    app.radio(key="query_source").set_value("browse").run()
    assert_clean(app)
    assert len(neighbour_captions(app)) == 2


def test_similarities_get_the_decimals_that_tell_them_apart():
    from types import SimpleNamespace

    def neighbours(*similarities):
        return [SimpleNamespace(correct=i % 2 == 0, class_name="Bag", similarity=s) for i, s in enumerate(similarities)]

    assert page.neighbour_captions(neighbours(0.93, 0.71)) == ["✓ Bag · 0.93", "✗ Bag · 0.71"]
    tight = page.neighbour_captions(neighbours(0.99991, 0.99962, 0.99917))  # all "1.00" at two decimals
    assert tight == ["✓ Bag · 0.9999", "✗ Bag · 0.9996", "✓ Bag · 0.9992"]
