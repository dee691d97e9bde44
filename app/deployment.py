"""How this server is deployed: a full workstation app, or a read-only viewer for a class.

``ECAML_READ_ONLY=1`` (the ``Procfile`` sets it) turns the app into a viewer: no
training job can start, nothing is written under the runs folder, and uploads
stay in memory under a smaller size limit. A public deploy must not let any
visitor start jobs or fill the disk.
"""

from __future__ import annotations

import os

READ_ONLY_ENV = "ECAML_READ_ONLY"
# A query image is a photo at most; anything larger is refused before it is decoded.
UPLOAD_LIMIT_BYTES = {False: 20 * 1024 * 1024, True: 5 * 1024 * 1024}

READ_ONLY_TRAINING_MESSAGE = (
    "Training is off on this server: it is a read-only demo, so every visitor sees the same runs and nothing is "
    "written here."
)


def local_training_hint(dataset: str, loss: str, ec_weight: float) -> str:
    """How to train at home; the example command trains the setting the app features (its data set, loss and λ),
    so that what a visitor trains compares with what the demo shows."""
    return (
        "To train your own runs, run the app on your machine (`python3 -m venv .venv && .venv/bin/pip install -r "
        "requirements.txt && .venv/bin/streamlit run app/main.py`) or use the command line, e.g. "
        f"`python -m ecaml train --dataset {dataset} --loss {loss} --ec-weight {ec_weight:g} "
        f"--out runs/{dataset}-ec`."
    )


def read_only() -> bool:
    """True when ``ECAML_READ_ONLY`` is set to anything but an empty string, 0, false, no or off."""
    return os.environ.get(READ_ONLY_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def upload_limit_bytes() -> int:
    return UPLOAD_LIMIT_BYTES[read_only()]


def upload_refusal(size_bytes: int) -> str | None:
    """One sentence refusing an upload of ``size_bytes``, or None when it is within the limit."""
    limit = upload_limit_bytes()
    if size_bytes <= limit:
        return None
    return (f"This file is {size_bytes / 2**20:.1f} MB; this server takes query images of at most "
            f"{limit / 2**20:.0f} MB.")
