"""Class splits (a run's images and class names), loaded once per process and dataset."""

from __future__ import annotations

import streamlit as st

from ecaml.data import load_split
from ecaml.runs import Run


@st.cache_resource(max_entries=8, show_spinner=False)
def _split(dataset: str, data_root: str | None, val_classes: float, split_seed: int):
    return load_split(dataset, data_root, val_classes, split_seed)


def split_of(run: Run):
    """The run's class split (its images and class names), loaded once per dataset."""
    config = run.config
    return _split(config.dataset, config.data_root, config.val_classes, config.split_seed)
