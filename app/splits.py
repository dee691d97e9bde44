"""Class splits (a run's images and class names), loaded once per process for each distinct split."""

from __future__ import annotations

import streamlit as st

from ecaml.eval.evaluate import split_for, split_settings
from ecaml.runs import Run


@st.cache_resource(max_entries=8, show_spinner=False)
def _split(settings: tuple, _run: Run):
    # Keyed by what decides the split (dataset, folder, validation classes, held-out images), not by the run:
    # every run of one split shares one copy of its image list.
    return split_for(_run.config)


def split_of(run: Run):
    """The run's class split, exactly as it was trained with (ecaml.eval.evaluate.split_for)."""
    return _split(split_settings(run.config), run)
