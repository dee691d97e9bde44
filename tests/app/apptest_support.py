"""Helpers the app tests share: opening a page in AppTest and reading what it shows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

MAIN_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "main.py"


def open_page(page: str, state: dict | None = None) -> AppTest:
    """The app opened on ``page`` (a file name under app/views), with ``state`` preset in Session State."""
    app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=120)
    for key, value in (state or {}).items():
        app.session_state[key] = value
    app.run()
    if page != "compare":
        app.switch_page(f"views/{page}.py").run()
    return app


def assert_clean(app: AppTest) -> None:
    """No exception and no error message on the page."""
    assert not app.exception, [element.value for element in app.exception]
    assert not app.error, [element.value for element in app.error]


def plotly_specs(app: AppTest) -> list[str]:
    return [element.proto.spec for element in app.get("plotly_chart")]


def plotly_figures(app: AppTest) -> list[dict]:
    """Every Plotly chart on the page as a figure dict, its data arrays decoded to lists."""
    figures = []
    for spec in plotly_specs(app):
        figure = json.loads(spec)
        for trace in figure.get("data", []):
            for name, value in trace.items():
                if isinstance(value, dict) and "bdata" in value or name in ("x", "y", "customdata"):
                    trace[name] = plotly_array(value).tolist()
        figures.append(figure)
    return figures


def figure_title(figure: dict) -> str | None:
    title = figure.get("layout", {}).get("title")
    return title.get("text") if isinstance(title, dict) else title


def named_lines(figure: dict) -> dict[str, dict]:
    """The traces a legend names (one per run or quantity), by name; bands and faint raw copies are left out."""
    return {trace["name"]: trace for trace in figure["data"] if trace.get("showlegend", True) and "name" in trace}


def image_captions(app: AppTest) -> list[list[str]]:
    return [element.captions for element in app.get("image")]


def run_key(root: Path, name: str) -> str:
    return str(root / name)


def plotly_array(value) -> np.ndarray:
    """A data array of a Plotly spec, plain or in Plotly's typed-array form ({dtype, bdata, shape})."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(part) for part in shape.split(",")]
        return array.reshape(shape) if shape else array
    return np.asarray(value)
