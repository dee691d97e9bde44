"""An uploaded query as the model sees it: the original next to the converted input, enlarged, and a warning (with
an offer to invert it) when it looks unlike the data set. The measuring is ``ecaml.inputs``; this module only shows.
"""

from __future__ import annotations

import streamlit as st
from PIL import Image

from app import errors, pictures
from ecaml.evaluate import split_settings

PREVIEW_PIXELS = 160
INVERT_KEY = "upload_inverted"


@st.cache_resource(max_entries=8, show_spinner=False)
def _data_statistics(data_identity: tuple, _split, _config):
    """How the data set looks to the model (a seeded sample of its unseen images), once per data set and input size."""
    from ecaml.inputs import input_statistics

    return input_statistics(_split.dataset, _split.indices("unseen"), _config)


def data_identity(config) -> tuple:
    return (split_settings(config), config.image_size, config.backbone)


def prepared_upload(image: Image.Image, run, split) -> Image.Image:
    """Show ``image`` beside the model's view of it, warn when it looks unlike the data; the image to query with
    (its negative when the user chose to invert it)."""
    from ecaml.inputs import check_input, converted_upload, inverted, model_view

    config = run.config
    statistics = errors.attempt(
        "measure how the training images look", _data_statistics, data_identity(config), split, config
    )
    query = inverted(image) if st.session_state.get(INVERT_KEY) else image
    query = converted_upload(query, config)  # made like the data set's pictures, where it has a rule (Fashion-MNIST)
    view = model_view(query, config)
    # One image element holding both pictures, side by side.
    st.image(
        [pictures.enlarged(picture.convert("RGB"), PREVIEW_PIXELS) for picture in (image, view)],
        caption=[
            "your upload",
            f"what the model sees: {view.size[0]}×{view.size[1]}" + (", inverted" if st.session_state.get(INVERT_KEY)
                                                                     else ", converted" if query is not image else ""),
        ],
    )
    findings = check_input(model_view(converted_upload(image, config), config), statistics) if statistics is not None \
        else []
    for finding in findings:
        st.warning(finding.message, icon=":material/warning:")
    if any(finding.invert_helps for finding in findings) or st.session_state.get(INVERT_KEY):
        st.toggle(
            "Invert the image (light strokes on dark, as in the training images)",
            key=INVERT_KEY,
            help="Queries with the negative of your upload.",
        )
    if not findings:
        st.caption("It looks like the training images after conversion.")
    return query
