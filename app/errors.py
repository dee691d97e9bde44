"""How a page reports a failure the user can cause: one sentence, and the page keeps running."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from ecaml.data import ImageError
from ecaml.serve.job_command import JobError
from ecaml.store.run_files import RunError


# Errors the library raises with a one-line, user-facing message.
USER_ERRORS = (RunError, ImageError, JobError, ValueError, OSError)


LOG = logging.getLogger("ecaml.app")


T = TypeVar("T")


def one_sentence(error: BaseException) -> str:
    """The first line of an error's message, ending with a full stop."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else error.__class__.__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def attempt(action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``function(*args, **kwargs)``, or ``None`` after one ``st.error`` sentence saying what could not be done."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        LOG.info("could not %s: %s", action, error)
        st.error(f"Could not {action}: {one_sentence(error)}")
        return None
