"""ecaml: Energy Confused Adversarial Metric Learning (Chen and Deng, AAAI 2019).

Train embedding networks on seen classes, evaluate retrieval and clustering on
unseen ones, with any base metric loss and, optionally, the Energy Confusion
regulariser. The library never imports Streamlit; the app in ``app/`` only reads
what this package writes.
"""

__version__ = "0.1.0"

# Bumped whenever the layout of a run directory changes incompatibly; runs from a
# newer format are refused rather than misread.
RUN_FORMAT_VERSION = 1
