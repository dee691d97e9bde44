"""The upload preview on the Retrieval page: the model's view beside the upload, and the inverted-polarity warning."""

from __future__ import annotations

import io

from apptest_support import assert_clean, image_captions, open_page
from PIL import Image, ImageDraw


def drawn_digit(ink: str, paper: str) -> bytes:
    """A zero drawn with a thick pen, as a lecturer would draw one in a paint program."""
    image = Image.new("RGB", (200, 200), paper)
    ImageDraw.Draw(image).ellipse((50, 30, 150, 170), outline=ink, width=18)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(app, data: bytes) -> None:
    app.file_uploader(key="query_upload").set_value(("zero.png", data, "image/png")).run()


def test_a_dark_on_light_drawing_is_shown_as_the_model_sees_it_and_called_inverted():
    app = open_page("retrieval", {"query_source": "upload"})
    upload(app, drawn_digit("black", "white"))
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 8×8"]
    (warning,) = [w.value for w in app.warning if "inverted" in w.value]
    assert "light strokes on a dark background" in warning and "dark on light" in warning
    app.toggle(key="upload_inverted").set_value(True).run()
    assert_clean(app)
    assert image_captions(app)[0] == ["your upload", "what the model sees: 8×8, inverted"]
    assert len(image_captions(app)) == 3  # the preview, then one neighbour grid per run


def test_a_light_on_dark_drawing_fits_and_offers_no_inversion():
    app = open_page("retrieval", {"query_source": "upload"})
    upload(app, drawn_digit("white", "black"))
    assert_clean(app)
    assert not app.warning
    assert not app.get("toggle")
    assert any("looks like the training images" in caption.value for caption in app.caption)
