"""Entry point of the app (``streamlit run app/main.py``): page settings, navigation, and the last-resort error net.

Each page lives in ``app/views/``; what they share lives in modules of ``app/`` named for what they hold
(``run_catalog``, ``run_picker``, ``training_job``, ``projection_jobs``, ``errors``, ``locations``, ...).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import streamlit as st

# A fresh clone has no installed package: make `ecaml` and `app` importable from the repository.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app import deployment, projection_jobs, training_job

st.set_page_config(page_title="ECAML explorer", page_icon="⚡", layout="wide")

PAGES = [
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", default=True),
    st.Page("views/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("views/retrieval.py", title="Retrieval", icon=":material/image_search:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/imports.py", title="Import", icon=":material/upload_file:"),
    st.Page("views/about.py", title="About", icon=":material/info:"),
]

page = st.navigation(PAGES)
if not deployment.read_only():
    training_job.session_owner()  # keeps this session's owner token in the address, so a reload keeps its jobs
st.sidebar.caption(
    "Energy Confused Adversarial Metric Learning (Chen & Deng, AAAI 2019): "
    "see what the Energy Confusion term does to an embedding."
)
if page.title != "Train":  # the Train page shows the job in full
    training_job.show_training_in_sidebar()

try:
    page.run()
except Exception as error:  # st.rerun and st.stop are BaseExceptions and pass through
    # Library errors are caught where they happen; this is the net for bugs: log the traceback, show one sentence.
    logging.getLogger("ecaml.app").exception("page %s failed", page.title)
    st.error(f"This page hit an unexpected error ({error.__class__.__name__}). The server log has the details.")

# Once per server process, after the first page has drawn: compute the default pair's aligned UMAP in a background
# thread, so Embeddings usually finds it cached (ECAML_WARM_CACHE=0 turns this off).
projection_jobs.start_projection_warmup()
