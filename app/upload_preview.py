"""An uploaded query as the model sees it: the original next to the converted input (framed as the data set's
images are), enlarged, and a warning (with an offer to invert that upload) when it looks unlike the data set. The
measuring and framing are ``ecaml.serve.inputs``; this module only shows.
"""

from __future__ import annotations

import hashlib

import streamlit as st
from PIL import Image

from app import errors, pictures
from ecaml.eval.evaluate import split_settings

PREVIEW_PIXELS = 160
INVERT_KEY = "upload_inverted"  # + the upload's content hash


@st.cache_resource(max_entries=8, show_spinner=False)
def _data_statistics(data_identity: tuple, _split, _config):
    """How the data set looks to the model (a seeded sample of its unseen images), once per data set and input size."""
    from ecaml.serve.inputs import input_statistics

    return input_statistics(_split.dataset, _split.indices("unseen"), _config)


def data_identity(config) -> tuple:
    return (split_settings(config), config.image_size, config.backbone)


def invert_key(content: bytes) -> str:
    """The session key of one upload's "invert" choice: each upload (by content) keeps its own."""
    return f"{INVERT_KEY}_{hashlib.sha256(content).hexdigest()[:16]}"


def prepared_upload(image: Image.Image, content: bytes, run, split) -> Image.Image:
    """Show ``image`` beside the model's view of it (inverted if the user chose so for this upload, then framed as
    the data set's images are), warn when that view looks unlike the data; the image to query with."""
    from ecaml.serve.inputs import as_data_set_image, check_input, converted_upload, inverted, model_view

    config = run.config
    statistics = errors.attempt(
        "measure how the training images look", _data_statistics, data_identity(config), split, config
    )
    key = invert_key(content)
    chosen = inverted(image) if st.session_state.get(key) else image
    query = converted_upload(chosen, config)  # made like the data set's pictures where it has a rule (Fashion-MNIST)
    photo_converted = query is not chosen
    if not photo_converted and statistics is not None:  # else framed as the data set's images are (crop, centre, pad)
        query = as_data_set_image(chosen, statistics)
    view = model_view(query, config)
    # One image element holding both pictures, side by side.
    st.image(
        [pictures.enlarged(picture.convert("RGB"), PREVIEW_PIXELS) for picture in (image, view)],
        caption=[
            "your upload",
            f"what the model sees: {view.size[0]}×{view.size[1]}" + (", inverted" if chosen is not image else "")
            + (", converted" if photo_converted else ""),
        ],
    )
    findings = check_input(view, statistics) if statistics is not None else []
    for finding in findings:
        st.warning(finding.message, icon=":material/warning:")
    if any(finding.invert_helps for finding in findings) or st.session_state.get(key):
        st.toggle(
            "Invert the image (light strokes on dark, as in the training images)",
            key=key,
            help="Queries with the negative of this upload (only this one: another upload starts as it is).",
        )
    if not findings:
        st.caption(
            "It looks like the training images after conversion: cropped to the drawing, centred and scaled as the "
            "data set's images are."
        )
    return query
