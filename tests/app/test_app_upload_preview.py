"""The upload preview on the Retrieval page: the model's view beside the upload, framed as the data set's images
are; the inverted-polarity warning, and each upload's own invert choice."""

from __future__ import annotations

import io
from pathlib import Path

from apptest_support import assert_clean, image_captions, open_page
from map_support import open_ready
from PIL import Image, ImageDraw

from app import run_catalog, upload_preview

REPO_ROOT = Path(__file__).resolve().parents[2]


def as_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_digit(ink: str, paper: str) -> bytes:
    """A zero drawn with a thick pen, as a lecturer would draw one in a paint program."""
    image = Image.new("RGB", (200, 200), paper)
    ImageDraw.Draw(image).ellipse((50, 30, 150, 170), outline=ink, width=18)
    return as_png(image)


def drawn_seven() -> bytes:
    """A seven drawn white on black, small and off-centre on a large canvas, as on a whiteboard app."""
    image = Image.new("RGB", (600, 400), "black")
    pen = ImageDraw.Draw(image)
    pen.line((60, 60, 190, 60), fill="white", width=16)
    pen.line((190, 60, 110, 250), fill="white", width=16)
    return as_png(image)


def upload(app, data: bytes, name: str = "zero.png") -> None:
    app.file_uploader(key="query_upload").set_value((name, data, "image/png")).run()


def test_a_dark_on_light_drawing_is_shown_as_the_model_sees_it_and_called_inverted():
    app = open_ready(open_page, "retrieval", {"query_source": "upload"})  # the runs' indexes built
    data = drawn_digit("black", "white")
    upload(app, data)
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 8×8"]
    (warning,) = [w.value for w in app.warning if "inverted" in w.value]
    assert "light strokes on a dark background" in warning and "dark on light" in warning
    app.toggle(key=upload_preview.invert_key(data)).set_value(True).run()
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 8×8, inverted"]
    assert len(image_captions(app)) == 3  # the preview, then one neighbour grid per run
    # Inverted, it looks like the training images: the warning is gone (it stayed up: issue 22 item 4).
    assert not [w.value for w in app.warning if "inverted" in w.value]
    assert app.toggle(key=upload_preview.invert_key(data)).value


def test_inverting_one_upload_leaves_the_next_as_it_is():
    app = open_ready(open_page, "retrieval", {"query_source": "upload"})  # the runs' indexes built
    upload(app, drawn_digit("black", "white"))
    app.toggle(key=upload_preview.invert_key(drawn_digit("black", "white"))).set_value(True).run()
    upload(app, drawn_digit("white", "black"), name="another.png")
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 8×8"]  # not silently inverted
    assert not app.warning and not app.get("toggle")


def test_a_light_on_dark_drawing_fits_and_offers_no_inversion():
    app = open_ready(open_page, "retrieval", {"query_source": "upload"})  # the runs' indexes built
    upload(app, drawn_digit("white", "black"))
    assert_clean(app)
    assert not app.warning
    assert not app.get("toggle")
    assert any("looks like the training images" in caption.value for caption in app.caption)


def test_a_drawn_seven_retrieves_sevens_with_the_shipped_featured_runs(monkeypatch):
    monkeypatch.setenv("ECAML_CHECKPOINTS_DIR", str(REPO_ROOT / "checkpoints"))
    monkeypatch.setattr(run_catalog, "photos_available", lambda: False)  # the digits pair, as without Fashion-MNIST
    app = open_ready(open_page, "retrieval", {"query_source": "upload"})  # the runs' indexes built
    upload(app, drawn_seven(), name="seven.png")
    assert_clean(app)
    grids = image_captions(app)[1:]
    assert len(grids) == 2 and all(len(grid) == 8 for grid in grids)
    sevens = [sum(caption.startswith("7 ·") for caption in grid) for grid in grids]
    assert all(count >= 4 for count in sevens), (sevens, grids)  # none or 2 of 8 before framing (issue 22 item 4)
